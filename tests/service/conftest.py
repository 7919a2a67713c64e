"""Service-tier fixtures. Receiver fixtures are named ``receiver_*``: a receiver app in process on
the tiny model with its store under tmp_path, and signed frame batches built with the real
codec and wire format (``tiny_codec.encode`` + ``shared.wire.pack_frames``)."""

from __future__ import annotations

import os
import struct
import time
import uuid
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 package for its TestClient and warns once, at import, when
    # only httpx is installed; the client works the same with httpx (pyproject makes warnings errors).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from tests.conftest import TINY_MODEL

RECEIVER_SECRET = "receiver-tests-5f1c0d9e7a2b4c68"


def receiver_rgb(width: int = 40, height: int = 30, seed: int = 0) -> np.ndarray:
    """A small smooth test image (gradients plus a little noise), (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1),
                     np.full_like(xx, 60 + 40 * seed % 150)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ReceiverFrames:
    """Builds signed request bodies from pre-encoded streams."""

    codec: object
    encoded: tuple  # shared.codec.Encoded, 40x30 at a few qualities

    def body(self, ids: list[str] | None = None, n: int = 1, secret: str = RECEIVER_SECRET,
             encoded=None) -> tuple[bytes, list[str]]:
        from shared.wire import Frame, pack_frames

        ids = ids or [uuid.uuid4().hex for _ in range(n)]
        frames = [Frame(id=i, sent_at=time.time(), stream=(encoded or self.encoded[k % len(self.encoded)]).stream)
                  for k, i in enumerate(ids)]
        return pack_frames(frames, secret.encode()), ids


@pytest.fixture(scope="session")
def receiver_frames(tiny_codec) -> ReceiverFrames:
    encoded = tuple(tiny_codec.encode(receiver_rgb(seed=s), quality=q) for s, q in ((0, 0.3), (1, 0.8)))
    return ReceiverFrames(codec=tiny_codec, encoded=encoded)


@pytest.fixture
def receiver_env(monkeypatch):
    """No LATENTWIRE_* variable of the developer's shell leaks into the settings under test."""
    for key in list(os.environ):
        if key.startswith("LATENTWIRE_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def receiver_settings_factory(receiver_env, tmp_path, tiny_models_dir):
    from receiver.settings import Settings

    def make(**overrides):
        values = dict(secret=RECEIVER_SECRET, store_dir=tmp_path / "store", model=TINY_MODEL,
                      models_dir=tiny_models_dir, device="cpu", sse_heartbeat_s=0.2)
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def receiver_settings(receiver_settings_factory):
    return receiver_settings_factory()


@pytest.fixture
def receiver_client(receiver_settings):
    from receiver.app import create_app

    with TestClient(create_app(receiver_settings)) as client:
        yield client


def receiver_post(client: TestClient, body: bytes):
    return client.post("/v1/frames", content=body, headers={"Content-Type": "application/msgpack"})


# ---- sender helpers (shared by test_sender_api.py and test_sender_delivery.py) ----
SENDER_SECRET = "sender-tests-secret-5f2a9c41d07e"


def sender_settings(data_dir: Path, models_dir: Path, **overrides):
    """Sender test settings; no LATENTWIRE_* variable of the developer's shell leaks in."""
    from sender.settings import Settings as SenderSettings

    values = dict(receiver_url="http://receiver.test", secret=SENDER_SECRET, data_dir=data_dir, model=TINY_MODEL,
                  models_dir=models_dir, device="cpu", retry_base_s=0.01, retry_max_s=0.05, request_timeout_s=2)
    values.update(overrides)
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("LATENTWIRE_")]:
            mp.delenv(key)
        return SenderSettings(**values)


def wait_status(client: TestClient, image_id: str, status: str, timeout_s: float = 10.0) -> dict:
    """Poll the sender until an image reaches ``status`` (AssertionError after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v1/images/{image_id}").json()
        if body["status"] == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{image_id} still {body['status']} after {timeout_s} s: {body}")
        time.sleep(0.02)


def forward_to(receiver: TestClient) -> httpx.MockTransport:
    """A transport for the sender's receiver client that hands each request to a receiver app in
    process (its own ``TestClient``, so its lifespan runs); status, body, Content-Type and
    Retry-After come back as the real receiver sent them."""

    def forward(request: httpx.Request) -> httpx.Response:
        r = receiver.post(request.url.path, content=request.content,
                          headers={"Content-Type": request.headers["content-type"]})
        keep = {k: v for k, v in r.headers.items() if k in ("content-type", "retry-after")}
        return httpx.Response(r.status_code, headers=keep, content=r.content)

    return httpx.MockTransport(forward)


def png_bomb(width: int = 40_000, height: int = 40_000, rows: int = 64) -> bytes:
    """A decompression bomb by its header: a PNG declaring ``width`` x ``height`` 8-bit RGB pixels
    (4.8 GB decoded at 40 000 x 40 000) whose data holds only its first ``rows`` rows of zeros, a
    few KB on disk. A loader that decoded before checking the declared size would allocate it all."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, no interlace
    idat = zlib.compress(bytes(rows * (1 + 3 * width)), 9)  # filter byte 0 + a zero row, per row
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def storing_receiver() -> httpx.MockTransport:
    """A stand-in receiver for sender tests: checks the signature, answers "stored" for each frame."""
    from shared.wire import unpack_frames

    def answer(request: httpx.Request) -> httpx.Response:
        frames = unpack_frames(request.content, SENDER_SECRET.encode())
        return httpx.Response(200, json={"results": [{"id": f.id, "status": "stored"} for f in frames]})

    return httpx.MockTransport(answer)
