"""quality=auto through a thin link: sender and receiver as real processes, the sender's POSTs to the
receiver through shared/tools/link_emulator.py. A rate step down is followed by smaller budgets, the
step back up by larger ones, and every frame is stored; a 20 s outage loses nothing.

Tiny model, 192x160 pictures: 169 bytes at quality 0, 562 at quality 1. After each step a few
quality=1 uploads cross the link at the new rate, then one quality=auto upload is budgeted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from shared.tools.launcher import ServicePair
from shared.tools.link_emulator import LinkEmulator
from tests.e2e.conftest import png_bytes, receiver_ids, started, tiny_pair, wait_until

FAST_KBPS, SLOW_KBPS = 64, 6
TARGET_S = 0.15


@contextmanager
def _through_link(tmp_path, models_dir, **env) -> Iterator[tuple[httpx.Client, LinkEmulator, ServicePair]]:
    """Sender and receiver as processes, the sender's POSTs through a link emulator (FAST_KBPS, 10 ms
    each way); ``env``: sender settings (latency_target_s=2 -> LATENTWIRE_SENDER_LATENCY_TARGET_S).
    Yields a client of the sender, the emulator and the pair."""
    pair = tiny_pair(tmp_path / "services", models_dir,
                     {f"LATENTWIRE_SENDER_{k.upper()}": str(v) for k, v in env.items()})
    link = LinkEmulator("127.0.0.1", pair.receiver.port, kbps=FAST_KBPS, delay_s=0.01)
    with link.running():  # binds its port: the sender's receiver URL is the emulator's
        args = pair.sender.args
        args[args.index("--receiver-url") + 1] = link.url
        with started(pair), httpx.Client(base_url=pair.sender.url, timeout=60) as sender:
            yield sender, link, pair


def _upload(sender: httpx.Client, seed: int, **params) -> dict:
    r = sender.post("/v1/images", params=params, files={"file": (f"{seed}.png", png_bytes(192, 160, seed))})
    assert r.status_code == 202, r.text
    image = r.json()["images"][0]
    wait_until(lambda: sender.get(f"/v1/images/{image['id']}").json()["status"] == "delivered", 30,
               interval_s=0.05, what=f"image {seed} to be delivered")
    return image


def test_auto_budgets_follow_rate_steps_through_the_emulator(tmp_path, tiny_models_dir):
    with _through_link(tmp_path, tiny_models_dir, latency_target_s=TARGET_S, retry_base_s=0.1,
                       retry_max_s=0.5) as (sender, link, _):
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


def test_a_20_s_outage_loses_nothing_and_the_backlog_drains(tmp_path, tiny_models_dir):
    """quality=auto uploads every 0.5 s for 30 s, the link down (a stall: POSTs time out) from 5 s to
    25 s. Half the uploads are a live feed (supersede=cam): of those, stale ones may be superseded,
    the rest delivered; every other upload is delivered, each once, and all of it soon after."""
    with _through_link(tmp_path, tiny_models_dir, latency_target_s=2, request_timeout_s=2, retry_base_s=0.2,
                       retry_max_s=2) as (sender, link, pair):
        t0 = time.monotonic()
        outage = link.outage(20, start_in_s=5, kind="stall")
        plain, feed = [], []
        for k in range(60):
            time.sleep(max(0.0, t0 + 0.5 * k - time.monotonic()))
            live = k % 2 == 1
            r = sender.post("/v1/images", params={"quality": "auto", **({"supersede": "cam"} if live else {})},
                            files={"file": (f"{k}.png", png_bytes(96, 80, k))})
            assert r.status_code == 202, r.text
            (feed if live else plain).append(r.json()["images"][0]["id"])
        assert time.monotonic() > outage.end  # the uploads span the whole outage
        status = lambda i: sender.get(f"/v1/images/{i}").json()["status"]  # noqa: E731
        wait_until(lambda: all(status(i) == "delivered" for i in plain) and status(feed[-1]) == "delivered",
                   30, interval_s=0.2, what="the backlog to drain")
        drained_s = time.monotonic() - outage.end
        counts = sender.get("/v1/images").json()["counts"]
        receiver = httpx.Client(base_url=pair.receiver.url, timeout=30)
        stored = set(receiver_ids(receiver))
    superseded = counts["superseded"]
    assert counts["failed"] == 0 and counts["queued"] == 0, counts
    assert counts["delivered"] + superseded == 60, counts
    assert set(plain) <= stored and feed[-1] in stored  # nothing accepted is lost; the newest feed frame arrived
    assert len(stored) == counts["delivered"]  # each delivered frame stored once, nothing else
    assert 0 < superseded < len(feed), counts  # the outage made stale feed frames, and only those were dropped
    assert drained_s < 30


def test_frames_queued_before_a_drop_are_coded_again_and_arrive_near_the_target(tmp_path, tiny_models_dir):
    """Measured at 64 kbit/s, the link drops to 1.6 kbit/s (200 B/s). Two quality=1 frames of
    256x160 then hold both POST slots (about 6 s of link), and four quality=auto uploads of that size
    with a 6 s target, planned on the old rate, queue behind them at quality 1 (about 600 bytes
    each: 12 s more).
    As the slow POSTs go on, the re-planner (sender/replan.py) codes the four again, smaller, so
    that they fit what is left of their target; the receiver stores the small streams, far sooner
    than their first sizes could have arrived."""
    with _through_link(tmp_path, tiny_models_dir, latency_target_s=6, request_timeout_s=60, retry_base_s=0.1,
                       retry_max_s=0.5) as (sender, link, pair):
        for seed in (1, 2):
            _upload(sender, seed, quality=1)  # POSTs at 64 kbit/s: the measured rate
        link.kbps = 1.6
        ahead = 0  # stream bytes of the two slow POSTs
        for seed in (3, 4):  # one POST each, both slots taken for seconds
            r = sender.post("/v1/images", params={"quality": 1},
                            files={"file": (f"{seed}.png", png_bytes(256, 160, seed))})
            assert r.status_code == 202, r.text
            ahead += r.json()["images"][0]["bytes"]
            time.sleep(0.2)
        t0 = time.time()
        r = sender.post("/v1/images", params={"quality": "auto"},
                        files=[("file", (f"{s}.png", png_bytes(256, 160, s))) for s in (5, 6, 7, 8)])
        assert r.status_code == 202, r.text
        planned = r.json()["images"]
        ids = [image["id"] for image in planned]
        wait_until(lambda: all(sender.get(f"/v1/images/{i}").json()["status"] == "delivered" for i in ids), 40,
                   interval_s=0.2, what="the re-planned frames to be delivered")
        records = [sender.get(f"/v1/images/{i}").json() for i in ids]
        receiver = httpx.Client(base_url=pair.receiver.url, timeout=30)
        stored = {item["id"]: item for item in receiver.get("/v1/images", params={"limit": 50}).json()["items"]}
        metrics = sender.get("/metrics").text
    assert [(p["quality"], p["budget"]["reason"]) for p in planned] == [(1.0, "ceiling")] * 4, planned
    assert all(p["budget"]["link_kbps"] > 8 for p in planned), [p["budget"] for p in planned]  # the old rate
    first = {p["id"]: p["bytes"] for p in planned}
    replanned = [r for r in records if r["budget"]["reason"] == "replan"]
    assert len(replanned) >= 3, records
    for r in replanned:
        assert r["bytes"] < 0.8 * r["budget"]["replanned_from"] <= 0.8 * first[r["id"]]  # once, or twice
        assert r["budget"]["link_kbps"] < 8
    for r in records:  # what crossed the link is what the sender's record says
        assert stored[r["id"]]["stream_bytes"] == r["bytes"], (r, stored[r["id"]])
    last_stored = max(stored[i]["received_at"] for i in ids) - t0
    # At their first sizes the link needed (ahead + theirs) / 200 B/s: over 17 s, HTTP's own bytes aside.
    assert (ahead + sum(first.values())) / 200 > 17, (ahead, first)
    assert last_stored < (ahead + sum(first.values())) / 200 - 3, (last_stored, ahead, first)
    assert sum(r["bytes"] for r in records) < 0.4 * sum(first.values()), records
    assert float(metrics.split("\nlatentwire_sender_replans_total ")[1].split()[0]) >= len(replanned)
