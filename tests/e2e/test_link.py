"""quality=auto through a thin link: sender and receiver as real processes, the sender's POSTs to the
receiver through shared/link_emulator.py. A rate step down is followed by smaller budgets, the
step back up by larger ones, and every frame is stored.

Tiny model, 192x160 pictures: 169 bytes at quality 0, 562 at quality 1. After each step a few
quality=1 uploads cross the link at the new rate, then one quality=auto upload is budgeted."""

from __future__ import annotations

import secrets

import httpx

from shared.launcher import ServicePair
from shared.link_emulator import LinkEmulator
from tests.conftest import TINY_MODEL
from tests.e2e.conftest import png_bytes, started, wait_until

FAST_KBPS, SLOW_KBPS = 64, 6
TARGET_S = 0.15


def _upload(sender: httpx.Client, seed: int, **params) -> dict:
    r = sender.post("/v1/images", params=params, files={"file": (f"{seed}.png", png_bytes(192, 160, seed))})
    assert r.status_code == 202, r.text
    image = r.json()["images"][0]
    wait_until(lambda: sender.get(f"/v1/images/{image['id']}").json()["status"] == "delivered", 30,
               interval_s=0.05, what=f"image {seed} to be delivered")
    return image


def test_auto_budgets_follow_rate_steps_through_the_emulator(tmp_path, tiny_models_dir):
    pair = ServicePair(work_dir=tmp_path / "services", secret=secrets.token_hex(32), model=TINY_MODEL,
                       models_dir=tiny_models_dir,
                       extra_env={"LATENTWIRE_SENDER_LATENCY_TARGET_S": str(TARGET_S),
                                  "LATENTWIRE_SENDER_RETRY_BASE_S": "0.1", "LATENTWIRE_SENDER_RETRY_MAX_S": "0.5"})
    link = LinkEmulator("127.0.0.1", pair.receiver.port, kbps=FAST_KBPS, delay_s=0.01)
    with link.running():  # binds its port: the sender's receiver URL is the emulator's
        args = pair.sender.args
        args[args.index("--receiver-url") + 1] = link.url
        with started(pair), httpx.Client(base_url=pair.sender.url, timeout=60) as sender:
            budgets = []
            # A slow POST weighs by its time in the estimate (sender/link.py), so one shows a
            # step down; the step back up takes a few fast ones.
            for seed, kbps, measuring in ((10, FAST_KBPS, 1), (20, SLOW_KBPS, 1), (30, FAST_KBPS, 3)):
                link.kbps = kbps
                for k in range(measuring):
                    _upload(sender, seed + k, quality=1)  # POSTs at this rate
                budgets.append(_upload(sender, seed + 9, quality="auto")["budget"])
            counts = sender.get("/v1/images").json()["counts"]
    fast, slow, fast_again = budgets
    assert all(b["link_source"] == "measured" for b in budgets), budgets
    assert slow["link_kbps"] < fast["link_kbps"] / 2 and fast_again["link_kbps"] > slow["link_kbps"] * 1.5, budgets
    assert slow["bytes"] < fast["bytes"] / 2 and fast_again["bytes"] > slow["bytes"] * 1.5, budgets
    assert counts == {"queued": 0, "delivered": 8, "failed": 0, "superseded": 0}
    assert link.bytes_up > 8 * 169
