"""Crash faults with real processes: kill -9 the receiver mid-burst, kill -9 the sender after its
202s; afterwards every accepted image is stored exactly once with the right pixels."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.codec import Codec
from shared.images import load_image
from tests.conftest import TINY_MODEL
from tests.e2e.conftest import png_bytes, receiver_ids, started, tiny_pair, wait_until

N_IMAGES = 300
QUALITY = 0.3


@pytest.fixture
def services(tmp_path, tiny_models_dir):
    """The pair, its sender's retry delay capped at 2 s: each kill makes the sender back off, and
    the default cap (60 s) would spend the test waiting. What is asserted does not depend on it."""
    env = {"LATENTWIRE_SENDER_RETRY_MAX_S": "2"}
    with started(tiny_pair(tmp_path / "services", tiny_models_dir, env)) as pair:
        yield pair


def _upload_all(sender_url: str, uploads: list[bytes]) -> list[str]:
    def one(data: bytes) -> str:
        with httpx.Client(base_url=sender_url, timeout=120) as c:
            r = c.post("/v1/images", params={"quality": QUALITY}, content=data,
                       headers={"content-type": "image/png"})
            assert r.status_code == 202, r.text
            return r.json()["images"][0]["id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, uploads))


def _expected_digests(uploads: list[bytes], ids: list[str], models_dir) -> dict[str, str]:
    codec = Codec.load(TINY_MODEL, models_dir)
    return {i: hashlib.sha256(codec.decode(codec.encode(load_image(u).rgb, quality=QUALITY).data).tobytes()).hexdigest()
            for i, u in zip(ids, uploads)}


def _stored_digests(receiver_url: str, ids: list[str]) -> dict[str, str]:
    out = {}
    with httpx.Client(base_url=receiver_url, timeout=60) as c:
        for i in ids:
            png = c.get(f"/v1/images/{i}.png")
            assert png.status_code == 200, (i, png.status_code)
            out[i] = hashlib.sha256(np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")).tobytes()).hexdigest()
    return out


def test_receiver_kill9_during_burst_loses_and_duplicates_nothing(services, tiny_models_dir):
    uploads = [png_bytes(24 + i % 9, 16 + i % 7, seed=i) for i in range(N_IMAGES)]
    with ThreadPoolExecutor(1) as bg:
        future = bg.submit(_upload_all, services.sender.url, uploads)
        with httpx.Client(base_url=services.receiver.url, timeout=30) as rc:
            seen = 0
            for _ in range(3):
                # Kill as soon as more frames have landed, then restart on the same store.
                seen = wait_until(lambda: (n := len(receiver_ids(rc))) > seen and n, 60, 0.05,
                                  "more frames to be stored")
                services.receiver.kill()
                services.receiver.start()
        ids = future.result()
    assert len(set(ids)) == N_IMAGES
    with httpx.Client(base_url=services.receiver.url, timeout=30) as rc:
        wait_until(lambda: len(receiver_ids(rc)) >= N_IMAGES, 180, 0.5, "all frames to be stored")
        stored = receiver_ids(rc)
    assert len(stored) == N_IMAGES and set(stored) == set(ids)  # exactly once each
    assert _stored_digests(services.receiver.url, ids) == _expected_digests(uploads, ids, tiny_models_dir)


def test_sender_kill9_after_202_delivers_after_restart(services, tiny_models_dir):
    services.receiver.kill()  # nothing can be delivered while the sender accepts
    uploads = [png_bytes(32, 20, seed=1000 + i) for i in range(40)]
    ids = _upload_all(services.sender.url, uploads)
    services.sender.kill()
    services.receiver.start()
    services.sender.start()
    with httpx.Client(base_url=services.receiver.url, timeout=30) as rc:
        wait_until(lambda: set(ids) <= set(receiver_ids(rc)), 120, 0.5, "the outbox to drain after restart")
        stored = receiver_ids(rc)
    assert sorted(stored) == sorted(ids)
    assert _stored_digests(services.receiver.url, ids) == _expected_digests(uploads, ids, tiny_models_dir)
    with httpx.Client(base_url=services.sender.url, timeout=30) as sc:
        assert all(sc.get(f"/v1/images/{i}").json()["status"] == "delivered" for i in ids)
