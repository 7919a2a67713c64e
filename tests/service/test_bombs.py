"""Decompression bombs and absurd declared sizes over HTTP: refused from the header, before any
pixel or tensor is allocated, quickly, and the service serves the next request.

"Nothing allocated" is measured as the growth of this process's peak RSS (``ru_maxrss``) across
the request: decoding the 40 000 x 40 000 upload would take 4.8 GB, its latent some 2.4 GB.
"""

from __future__ import annotations

import dataclasses
import resource
import time
import uuid

import pytest

from sender.app import create_app as create_sender
from shared.wire import Frame, pack_frames
from tests.service.conftest import (RECEIVER_SECRET, TestClient, png_bomb, receiver_post, receiver_rgb,
                                    sender_settings, storing_receiver)

MAX_RSS_GROWTH_MB = 100
MAX_ANSWER_S = 5.0  # generous for a loaded 2-core CI machine; the refusal itself takes milliseconds


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@pytest.fixture(scope="module")
def sender(tmp_path_factory, tiny_models_dir):
    settings = sender_settings(tmp_path_factory.mktemp("sender"), tiny_models_dir)
    with TestClient(create_sender(settings, transport=storing_receiver())) as client:
        yield client


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_a_40000_by_40000_png_of_a_few_kb_is_refused_from_its_header(sender, how):
    bomb = png_bomb(40_000, 40_000)
    assert len(bomb) < 50_000
    queued_before = sender.get("/v1/images").json()["counts"]["queued"]
    rss_before, t0 = peak_rss_mb(), time.perf_counter()
    if how == "multipart":
        r = sender.post("/v1/images", files={"file": ("bomb.png", bomb, "image/png")})
    else:
        r = sender.post("/v1/images", content=bomb, headers={"Content-Type": "image/png"})
    elapsed_s = time.perf_counter() - t0
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "ImageTooLarge"
    assert "40000x40000" in body["message"] and "at most 4096x4096" in body["message"]
    assert "downscale" in body["message"]  # says what to do
    assert elapsed_s < MAX_ANSWER_S
    assert peak_rss_mb() - rss_before < MAX_RSS_GROWTH_MB
    assert sender.get("/v1/images").json()["counts"]["queued"] == queued_before  # nothing queued
    ok = sender.post("/v1/images", files={"file": ("ok.png", png_bomb(48, 40, rows=40), "image/png")})
    assert ok.status_code == 202, ok.text


def _signed(stream, secret: str = RECEIVER_SECRET) -> tuple[bytes, str]:
    image_id = uuid.uuid4().hex
    return pack_frames([Frame(image_id, time.time(), stream)], secret.encode()), image_id


def _declaring(stream, height: int, width: int):
    """``stream`` re-labelled as a ``height`` x ``width`` image with matching latent shapes."""
    pad_h, pad_w = -(-height // 64) * 64, -(-width // 64) * 64
    return dataclasses.replace(stream, height=height, width=width,
                               y_shape=(stream.y_shape[0], pad_h // 16, pad_w // 16),
                               z_shape=(stream.z_shape[0], pad_h // 64, pad_w // 64))


@pytest.mark.parametrize("declare, status, error", [
    (lambda s: _declaring(s, 40_000, 40_000), 413, "DimensionsTooLarge"),  # consistent, over max_side
    (lambda s: _declaring(s, 2**31, 2**31), 400, "NotABitstream"),  # out of any int range we read
    (lambda s: dataclasses.replace(s, y_shape=(s.y_shape[0], 2**40, 2**40)), 400, "NotABitstream"),
    (lambda s: dataclasses.replace(s, y_shape=(2**20, *s.y_shape[1:])), 400, "NotABitstream"),  # channels
], ids=["40000x40000", "2^31 sides", "y_shape 2^40", "2^20 channels"])
def test_absurd_declared_sizes_are_refused_and_nothing_is_stored(receiver_client, receiver_frames, declare,
                                                                  status, error):
    stream = receiver_frames.codec.encode(receiver_rgb(), quality=0.5).stream
    body, image_id = _signed(declare(stream))
    rss_before, t0 = peak_rss_mb(), time.perf_counter()
    r = receiver_post(receiver_client, body)
    elapsed_s = time.perf_counter() - t0
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and r.json()["message"]
    assert elapsed_s < MAX_ANSWER_S
    assert peak_rss_mb() - rss_before < MAX_RSS_GROWTH_MB
    assert receiver_client.get(f"/v1/images/{image_id}").status_code == 404
    assert receiver_client.get("/v1/images").json()["items"] == []
    good, _ = receiver_frames.body()
    assert receiver_post(receiver_client, good).json()["results"][0]["status"] == "stored"
