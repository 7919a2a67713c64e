"""End-to-end fixtures: receiver and sender as real processes on loopback ports (tiny model)."""

from __future__ import annotations

import contextlib
import io
import secrets
import shutil
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from shared.tools.launcher import ServicePair
from tests.conftest import TINY_DENOISE_MODEL, TINY_MODEL


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def started(pair: ServicePair):
    """``pair`` started (a failed start raises with both logs' tails), stopped afterwards."""
    try:
        pair.start()
    except Exception:
        pair.stop()
        raise RuntimeError(f"services did not start:\nreceiver:\n{pair.receiver.log_tail()}\n"
                           f"sender:\n{pair.sender.log_tail()}")
    try:
        yield pair
    finally:
        pair.stop()


DENOISE_ENV = {"LATENTWIRE_SENDER_DENOISE_MODEL": TINY_DENOISE_MODEL,
               "LATENTWIRE_RECEIVER_DENOISE_MODEL": TINY_DENOISE_MODEL}


def tiny_pair(work_dir, models_dir, env: dict[str, str] | None = None) -> ServicePair:
    """Receiver and sender on the tiny model (``env``: more settings), not started yet."""
    return ServicePair(work_dir=work_dir, secret=secrets.token_hex(32), model=TINY_MODEL, models_dir=models_dir,
                       extra_env=env or {})


@pytest.fixture(scope="module")
def module_services(tmp_path_factory, tiny_models_dir):
    """One pair for all of a module's tests, with the tiny denoising model beside the tiny one
    (mode=denoise on), for tests that need neither an empty store nor fresh processes: each
    start costs seconds."""
    with started(tiny_pair(tmp_path_factory.mktemp("services"), tiny_models_dir, DENOISE_ENV)) as pair:
        yield pair


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium (Playwright's own browser download is not used)."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def png_bytes(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus a little texture: compressible, but not constant.
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 / max(1, width - 1)), (yy * 255 / max(1, height - 1)),
                     np.full_like(xx, seed * 37 % 256)], axis=2)
    arr = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def receiver_ids(client: httpx.Client) -> list[str]:
    """Every stored id, following the receiver's pagination."""
    ids, cursor = [], None
    while True:
        params = {"limit": 200}
        if cursor is not None:
            params["before"] = cursor
        page = client.get("/v1/images", params=params).json()
        ids += [item["id"] for item in page["items"]]
        cursor = page.get("next")
        if not cursor:
            return ids
