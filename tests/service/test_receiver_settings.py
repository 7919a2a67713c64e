"""Receiver settings and CLI: env names, the secret policy, insecure demo mode."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from pydantic import ValidationError

from receiver.app import create_app
from receiver.settings import Settings
from shared.wire import INSECURE_DEMO_SECRET
from shared.wire import Frame, pack_frames
from tests.service.conftest import RECEIVER_SECRET, TestClient, receiver_post


@pytest.mark.parametrize("secret", ["", "short", "change-me", "changeme", "secret", "CHANGE_ME_PLEASE_NOW",
                                    "change-me-change-me", "replace-me-with-something", "aaaaaaaaaaaaaaaaaaaa",
                                    "<placeholder-secret-value>"])
def test_weak_secret_is_refused_unless_insecure_demo(receiver_env, secret):
    with pytest.raises(ValidationError) as info:
        Settings(secret=secret)
    assert "LATENTWIRE_SECRET" in str(info.value)
    if len(secret) >= 9:
        assert secret not in str(info.value)  # the refused secret is not echoed
    assert Settings(secret=secret, insecure_demo=True).insecure_demo


def test_env_names(receiver_env, tmp_path):
    receiver_env.setenv("LATENTWIRE_SECRET", RECEIVER_SECRET)
    receiver_env.setenv("LATENTWIRE_RECEIVER_PORT", "9123")
    receiver_env.setenv("LATENTWIRE_RECEIVER_STORE_DIR", str(tmp_path / "s"))
    receiver_env.setenv("LATENTWIRE_RECEIVER_DEVICE", "cpu")
    receiver_env.setenv("LATENTWIRE_RECEIVER_MAX_FRAME_BYTES", "4096")
    receiver_env.setenv("SECRET", "a generic variable that must not be read")
    s = Settings()
    assert (s.port, s.store_dir, s.device, s.max_frame_bytes) == (9123, tmp_path / "s", "cpu", 4096)
    assert s.secret_bytes() == RECEIVER_SECRET.encode()
    assert RECEIVER_SECRET not in repr(s) and RECEIVER_SECRET not in str(s.model_dump())
    assert Settings(port=9000).port == 9000  # explicit values (CLI flags) beat the environment

    receiver_env.setenv("LATENTWIRE_SECRET", "change-me")
    with pytest.raises(ValidationError):
        Settings()
    receiver_env.setenv("LATENTWIRE_INSECURE_DEMO", "1")
    assert Settings().insecure_demo


def test_insecure_demo_warns_and_accepts_the_public_demo_key(receiver_settings_factory, receiver_frames, caplog):
    settings = receiver_settings_factory(secret="", insecure_demo=True)
    with caplog.at_level(logging.WARNING, logger="latentwire.receiver"):
        with TestClient(create_app(settings)) as client:
            assert any(r.levelno == logging.WARNING and "INSECURE DEMO" in r.getMessage() for r in caplog.records)
            assert client.get("/readyz").json()["insecure_demo"] is True
            assert client.get("/v1/models").json()["insecure_demo"] is True
            assert "Insecure demo mode" in client.get("/").text
            frame = Frame(uuid.uuid4().hex, time.time(), receiver_frames.encoded[0].stream)
            body = pack_frames([frame], INSECURE_DEMO_SECRET.encode())
            assert receiver_post(client, body).json()["results"][0]["status"] == "stored"


def test_cli_registers_receiver_and_refuses_a_placeholder(receiver_env, capsys):
    from shared.tools.cli import build_parser, main

    args = build_parser().parse_args(["receiver", "--port", "9001", "--store-dir", "x", "--device", "cpu",
                                      "--insecure-demo"])
    assert (args.port, str(args.store_dir), args.device, args.insecure_demo) == (9001, "x", "cpu", True)
    assert build_parser().parse_args(["receiver"]).insecure_demo is None  # unset: the env decides

    receiver_env.setenv("LATENTWIRE_SECRET", "change-me-before-deploying")
    assert main(["receiver", "--port", "9001"]) == 2
    err = capsys.readouterr().err
    assert "placeholder" in err and "--insecure-demo" in err and "change-me" not in err


def test_cluster_settings_come_in_working_sets(receiver_env):
    """DATABASE_URL and BLOB_URL only together; each URL's scheme checked; passwords never echoed."""
    s = Settings(secret=RECEIVER_SECRET, broker_url="nats://127.0.0.1:4222")
    assert s.broker_url == "nats://127.0.0.1:4222" and not s.cluster_store  # broker alone: embedded store
    s = Settings(secret=RECEIVER_SECRET, database_url="postgresql://u@db/x", blob_url="s3://bucket/pre")
    assert s.cluster_store and s.broker_url is None
    with pytest.raises(ValidationError, match="DATABASE_URL and LATENTWIRE_RECEIVER_BLOB_URL together"):
        Settings(secret=RECEIVER_SECRET, database_url="postgresql://u@db/x")
    for field, bad, scheme in (("broker_url", "http://u:hunter2@h:4222", "nats://"),
                               ("database_url", "mysql://u:hunter2@h/x", "postgresql://"),
                               ("blob_url", "gs://bucket", "s3://"),
                               ("blob_endpoint_url", "ftp://h", "http://")):
        with pytest.raises(ValidationError, match=scheme) as info:
            Settings(secret=RECEIVER_SECRET, **{field: bad})
        assert "hunter2" not in str(info.value)
    assert Settings(secret=RECEIVER_SECRET, broker_url="  ").broker_url is None  # blank = unset
