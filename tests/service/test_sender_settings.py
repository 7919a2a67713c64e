"""Sender settings, secret policy, CLI refusal, and the encoder worker's batching."""

from __future__ import annotations

import asyncio
import logging
import os

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from sender.app import create_app
from sender.encoder import Encoder
from sender.errors import EncoderBusy
from sender.settings import Settings
from shared.codec import DEFAULT_MODEL
from shared.tools.cli import main
from shared.wire import INSECURE_DEMO_SECRET
from tests.conftest import TINY_MODEL

GOOD = "sender-tests-secret-5f2a9c41d07e"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No LATENTWIRE_* variable of the developer's shell leaks into the settings under test."""
    for name in [k for k in os.environ if k.startswith("LATENTWIRE_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("secret", ["", "short-but-real", "change-me", "changeme", "secret", "CHANGE_ME_PLEASE_1234",
                                    "your-secret-here", "aaaaaaaaaaaaaaaaaaaaaaaa"])
def test_weak_secrets_are_refused_without_echoing_them(secret):
    with pytest.raises(ValidationError) as info:
        Settings(receiver_url="http://r:8001", secret=secret)
    text = str(info.value)
    assert "LATENTWIRE_SECRET" in text and "--insecure-demo" in text
    if len(secret) >= 8:  # ("secret" itself is a word of the message)
        assert secret not in text


def test_insecure_demo_accepts_a_weak_secret_and_warns(tmp_path, tiny_models_dir, caplog):
    s = Settings(receiver_url="http://r:8001", secret="", insecure_demo=True, data_dir=tmp_path,
                 model=TINY_MODEL, models_dir=tiny_models_dir, device="cpu")
    assert s.secret_bytes() == INSECURE_DEMO_SECRET.encode()
    with caplog.at_level(logging.WARNING, logger="latentwire.sender"):
        with TestClient(create_app(s, transport=httpx.MockTransport(lambda r: httpx.Response(200)))):
            pass
    assert any("INSECURE DEMO MODE" in r.getMessage() for r in caplog.records)


def test_env_names(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTWIRE_SECRET", GOOD)
    monkeypatch.setenv("LATENTWIRE_SENDER_RECEIVER_URL", "http://127.0.0.1:8001/")
    monkeypatch.setenv("LATENTWIRE_SENDER_PORT", "9123")
    s = Settings()
    assert (s.receiver_url, s.port, s.frames_url) == ("http://127.0.0.1:8001", 9123, "http://127.0.0.1:8001/v1/frames")
    assert s.model == DEFAULT_MODEL and s.default_quality == 0.5 and s.max_upload_bytes == 50 << 20
    assert GOOD not in repr(s) and GOOD not in str(s.model_dump())
    monkeypatch.setenv("LATENTWIRE_SECRET", "change-me")
    monkeypatch.setenv("LATENTWIRE_INSECURE_DEMO", "1")
    assert Settings().insecure_demo is True
    monkeypatch.delenv("LATENTWIRE_SENDER_RECEIVER_URL")
    with pytest.raises(ValidationError, match="LATENTWIRE_SENDER_RECEIVER_URL.*LATENTWIRE_SENDER_BROKER_URL"):
        Settings()  # frames must go somewhere
    monkeypatch.setenv("LATENTWIRE_SENDER_BROKER_URL", "nats://user:pw@127.0.0.1:4222")
    s = Settings()  # cluster mode needs no receiver URL; logs and pages never show the password
    assert s.receiver_url is None and s.destination == "NATS JetStream at nats://127.0.0.1:4222"
    with pytest.raises(ValidationError, match="nats://") as err:
        Settings(broker_url="http://user:pw@127.0.0.1:4222", secret=GOOD)
    assert "pw" not in str(err.value)
    monkeypatch.delenv("LATENTWIRE_SENDER_BROKER_URL")
    with pytest.raises(ValidationError, match="http"):
        Settings(receiver_url="ftp://x", secret=GOOD)


def test_cli_refuses_a_placeholder_secret(monkeypatch, capsys):
    monkeypatch.setenv("LATENTWIRE_SECRET", "change-me-before-deploying")
    assert main(["sender", "--receiver-url", "http://127.0.0.1:8001"]) == 2
    err = capsys.readouterr().err
    assert "LATENTWIRE_SECRET is a placeholder" in err and "change-me" not in err
    monkeypatch.delenv("LATENTWIRE_SECRET")
    assert main(["sender"]) == 2
    assert "--receiver-url" in capsys.readouterr().err


def _images(n: int, side: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def test_encoder_batches_jobs_of_the_same_codec_and_quality(tiny_codec, tiny_models_dir):
    from shared.codec import Codec
    from tests.conftest import TINY_DENOISE_MODEL

    denoiser = Codec.load(TINY_DENOISE_MODEL, tiny_models_dir)

    async def run() -> tuple[list, int]:
        enc = Encoder(queue_size=8, batch_max=4, batch_wait_s=0.2)
        enc.start()
        try:
            images = _images(6)
            items = ([(tiny_codec, im, 0.5, None) for im in images[:4]] + [(tiny_codec, images[4], 0.9, None)]
                     + [(denoiser, images[5], 0.5, None)])
            results = await enc.encode_many(items)
            with pytest.raises(EncoderBusy):
                await enc.encode_many([(tiny_codec, im, 0.5, None) for im in _images(9)])
            return results, enc.batches
        finally:
            await enc.stop()

    results, batches = asyncio.run(run())
    assert batches == 3  # the four at 0.5 together; 0.9 alone; the other model's 0.5 alone
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 1, 1]  # what /metrics' batch-size histogram sees
    codecs = [tiny_codec] * 5 + [denoiser]
    for res, rgb, q, codec in zip(results, _images(6), [0.5] * 4 + [0.9, 0.5], codecs):
        assert res.encoded.quality == q and res.encoded.stream.model == codec.name
        assert res.encoded.data == codec.encode(rgb, quality=q).data
        assert res.reconstruction.shape == (32, 32, 3) and np.isfinite(res.psnr)
