"""Backpressure and store faults between a sender and a real receiver app, both in process.

Each bounded queue, when full, answers 503 with a Retry-After in whole seconds instead of growing;
a receiver that cannot store answers 503/507 with Retry-After; and in every case the sender keeps
what it accepted (202) and delivers each image exactly once when the receiver frees up. Queue
sizes are set to 0 or 1 and the work is held on a gate around one service's codec object, so
"full" is a state the test sets up, not a race it hopes to win.
"""

from __future__ import annotations

import errno
import io
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from receiver.app import create_app as create_receiver
from sender.app import create_app as create_sender
from shared.errors import StoreError, StoreFull
from tests.service.conftest import (RECEIVER_SECRET, TestClient, forward_to, receiver_post, sender_settings,
                                    wait_status)


def png(seed: int, width: int = 40, height: int = 32) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def upload(client: TestClient, *seeds: int):
    return client.post("/v1/images", files=[("file", (f"{s}.png", png(s))) for s in seeds])


def accepted(response) -> list[str]:
    assert response.status_code == 202, response.text
    return [image["id"] for image in response.json()["images"]]


def stored_ids(receiver: TestClient) -> list[str]:
    return [item["id"] for item in receiver.get("/v1/images", params={"limit": 200}).json()["items"]]


def first_attempt(sender: TestClient, image_id: str, timeout_s: float = 10.0) -> dict:
    """The image's record once the sender has tried to deliver it at least once."""
    deadline = time.monotonic() + timeout_s
    while (record := sender.get(f"/v1/images/{image_id}").json())["attempts"] == 0:
        assert time.monotonic() < deadline, f"{image_id} never sent: {record}"
        time.sleep(0.02)
    return record


class Gate:
    """Holds every call of one codec object's ``method`` until ``open()``; ``entered`` is set
    once a call is waiting."""

    def __init__(self, monkeypatch, codec, method: str) -> None:
        self.entered, self._open = threading.Event(), threading.Event()
        real = getattr(codec, method)

        def held(*args, **kwargs):
            self.entered.set()
            self._open.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(codec, method, held)  # the instance: the other service's codec runs free

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def services(tmp_path, tiny_models_dir, receiver_settings_factory):
    """``make(receiver={...}, sender={...})`` -> (receiver client, sender client): a receiver app
    and a sender app whose receiver URL leads to it."""
    opened = []

    def make(receiver: dict | None = None, sender: dict | None = None) -> tuple[TestClient, TestClient]:
        rc = TestClient(create_receiver(receiver_settings_factory(**(receiver or {}))))
        opened.append(rc.__enter__())
        settings = sender_settings(tmp_path / "sender", tiny_models_dir, secret=RECEIVER_SECRET, **(sender or {}))
        sc = TestClient(create_sender(settings, transport=forward_to(rc)))
        opened.append(sc.__enter__())
        return rc, sc

    yield make
    for client in reversed(opened):  # the sender stops first: nothing is sent to a closed receiver
        client.__exit__(None, None, None)


@pytest.mark.slow
def test_full_decode_queue_is_503_and_the_sender_delivers_once_it_frees_up(services, receiver_frames,
                                                                           monkeypatch):
    rc, sc = services(receiver={"decode_queue_size": 0})
    gate = Gate(monkeypatch, rc.app.state.services.codec, "decode")
    other, (other_id,) = receiver_frames.body()  # another sender's frame holds the one decode slot
    holder = threading.Thread(target=receiver_post, args=(rc, other))
    holder.start()
    try:
        assert gate.entered.wait(10)
        r = receiver_post(rc, receiver_frames.body()[0])
        assert r.status_code == 503 and r.json()["error"] == "DecoderBusy" and r.headers["retry-after"] == "1"

        ids = accepted(upload(sc, 1, 2, 3))
        busy = first_attempt(sc, ids[0])
        assert busy["status"] == "queued"
        assert (busy["last_error"]["error"], busy["last_error"]["http_status"]) == ("DecoderBusy", 503)
        time.sleep(1.5)  # the sender waits the receiver's Retry-After: 1 s, not its 0.01 s backoff
        assert sc.get(f"/v1/images/{ids[0]}").json()["attempts"] <= busy["attempts"] + 2
    finally:
        gate.open()
        holder.join(10)
    done = [wait_status(sc, i, "delivered") for i in ids]
    assert {d["receiver_status"] for d in done} == {"stored"}
    assert sorted(stored_ids(rc)) == sorted(ids + [other_id])  # every accepted image, each once


def test_full_encode_queue_is_503_and_every_accepted_upload_is_delivered(services, monkeypatch):
    rc, sc = services(sender={"encode_queue_size": 1})
    gate = Gate(monkeypatch, sc.app.state.services.codec, "encode")
    answers: dict[int, object] = {}
    uploads = [threading.Thread(target=lambda s=s: answers.setdefault(s, upload(sc, s))) for s in (1, 2)]
    try:
        uploads[0].start()
        assert gate.entered.wait(10)  # image 1 is on the encoder thread
        uploads[1].start()  # image 2 waits in the queue of 1; probe with two files until it is there
        deadline = time.monotonic() + 10
        while "has 1 images waiting" not in (probe := upload(sc, 8, 9)).json()["message"]:
            assert probe.status_code == 503 and time.monotonic() < deadline, probe.text
            time.sleep(0.02)

        r = upload(sc, 3)
        assert r.status_code == 503 and r.json()["error"] == "EncoderBusy", r.text
        assert r.headers["retry-after"] == "1" and "limit 1" in r.json()["message"]
    finally:
        gate.open()
        for thread in uploads:
            thread.join(30)
    ids = accepted(answers[1]) + accepted(answers[2]) + accepted(upload(sc, 3))  # the retry is taken
    for image_id in ids:
        wait_status(sc, image_id, "delivered")
    assert sorted(stored_ids(rc)) == sorted(ids)
    assert sc.get("/v1/images").json()["counts"] == {"queued": 0, "delivered": 3, "failed": 0, "superseded": 0}


def unwritable_store(rc: TestClient, monkeypatch):
    """A file where the image folder was (chmod does not stop root, whom tests may run as);
    returns the repair."""
    images = rc.app.state.settings.store_dir / "images"
    away = images.with_suffix(".away")
    images.rename(away)
    images.write_bytes(b"not a folder")

    def repair() -> None:
        images.unlink()
        away.rename(images)

    return repair


def full_store(rc: TestClient, monkeypatch):
    """ENOSPC when the receiver renames a finished PNG into its store (other writes go through);
    returns the repair."""
    real_replace, store = os.replace, str(rc.app.state.settings.store_dir)

    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(store):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return lambda: monkeypatch.setattr(os, "replace", real_replace)


@pytest.mark.parametrize("fault, error", [(unwritable_store, StoreError), (full_store, StoreFull)],
                         ids=["unwritable-503", "full-507"])
def test_store_fault_keeps_frames_in_the_sender_until_the_store_recovers(services, receiver_frames, monkeypatch,
                                                                         fault, error):
    rc, sc = services(sender={"outbox_max_pending": 2})
    repair = fault(rc, monkeypatch)
    r = receiver_post(rc, receiver_frames.body()[0])
    assert (r.status_code, r.json()["error"]) == (error.status, error.__name__)
    assert r.headers["retry-after"] == str(error.retry_after_s)

    monkeypatch.setattr(error, "retry_after_s", 1)  # the sender's part of the test need not wait 60 s
    ids = accepted(upload(sc, 1, 2))
    kept = first_attempt(sc, ids[0])
    assert kept["status"] == "queued" and kept["last_error"]["http_status"] == error.status
    assert kept["last_error"]["error"] == error.__name__ and "retry later" in kept["last_error"]["message"]
    full = upload(sc, 3)  # the outbox holds 2: the sender pushes back too
    assert full.status_code == 503 and full.json()["error"] == "OutboxFull" and full.headers["retry-after"] == "1"
    assert stored_ids(rc) == []

    repair()
    for image_id in ids:
        assert wait_status(sc, image_id, "delivered")["attempts"] >= 2
    ids += accepted(upload(sc, 3))
    wait_status(sc, ids[-1], "delivered")
    assert sorted(stored_ids(rc)) == sorted(ids)  # nothing dropped, nothing twice
