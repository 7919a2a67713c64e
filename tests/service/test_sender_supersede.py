"""supersede=<key> on uploads (sender/outbox.py) and budget_binding for byte budgets that limit
nothing. The receiver is an ``httpx.MockTransport``: one that refuses with 503 and a long
Retry-After keeps frames queued (the receiver said it stored nothing), one that blocks holds a
batch in flight, one that cannot be reached leaves frames that may or may not have arrived."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from shared.wire import unpack_frames
from tests.service.conftest import SENDER_SECRET, wait_status
from tests.service.test_sender_link import client_for, down, smooth_png, upload


def busy() -> httpx.MockTransport:
    """Answers 503 with Retry-After: 60: the deliverer pauses after its first POST."""
    return httpx.MockTransport(lambda request: httpx.Response(
        503, json={"error": "StoreError", "message": "store busy"}, headers={"Retry-After": "60"}))


def post(client, key: str | None, seed: int = 3, **params) -> dict:
    if key is not None:
        params["supersede"] = key
    r = client.post("/v1/images", params=params, files={"file": (f"{seed}.png", smooth_png(seed=seed))})
    assert r.status_code == 202, r.text
    return r.json()


def wait_attempts(client, image_id: str, attempts: int, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = client.get(f"/v1/images/{image_id}").json()
        if record["attempts"] >= attempts:
            return record
        time.sleep(0.02)
    raise AssertionError(f"{image_id} never reached {attempts} attempt(s)")


def metric(text: str, name: str) -> float:
    (value,) = [float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return value


def test_a_newer_upload_supersedes_the_queued_frames_of_its_key(tmp_path, tiny_models_dir):
    with client_for(tmp_path, tiny_models_dir, busy()) as client:
        first = post(client, "cam-1", seed=3)["images"][0]
        wait_attempts(client, first["id"], 1)  # refused by the receiver: not stored there, still queued
        other = post(client, "cam-2", seed=4)["images"][0]
        plain = post(client, None, seed=5)["images"][0]
        second = post(client, "cam-1", seed=6)
        third = post(client, "cam-1", seed=7)
        records = {i: client.get(f"/v1/images/{i}").json() for i in (first["id"], second["images"][0]["id"])}
        listing = client.get("/v1/images", params={"status": "superseded"}).json()
        queued_bytes = client.get("/v1/link").json()["queued_bytes"]
        metrics = client.get("/metrics").text
    new, newest = second["images"][0], third["images"][0]
    assert second["superseded"] == [first["id"]] and third["superseded"] == [new["id"]]
    assert (new["stream_key"], new["status"], new["superseded_by"]) == ("cam-1", "queued", None)
    old = records[first["id"]]
    assert (old["status"], old["superseded_by"], old["next_attempt_at"]) == ("superseded", new["id"], None)
    assert old["last_error"]["http_status"] == 503  # the record keeps its history
    assert records[new["id"]]["superseded_by"] == newest["id"]
    assert [i["id"] for i in listing["images"]] == [new["id"], first["id"]]
    assert listing["counts"] == {"queued": 3, "delivered": 0, "failed": 0, "superseded": 2}
    assert queued_bytes == other["bytes"] + plain["bytes"] + newest["bytes"]  # superseded bytes wait no more
    assert metric(metrics, "latentwire_sender_superseded_total") == 2
    assert metric(metrics, "latentwire_sender_outbox_depth") == 3


def test_superseding_makes_room_in_a_full_outbox(tmp_path, tiny_models_dir):
    with client_for(tmp_path, tiny_models_dir, busy(), outbox_max_pending=1) as client:
        first = post(client, "cam-1")["images"][0]
        wait_attempts(client, first["id"], 1)
        full = client.post("/v1/images", files={"file": ("x.png", smooth_png(seed=4))})
        assert full.status_code == 503 and full.json()["error"] == "OutboxFull"
        elsewhere = client.post("/v1/images", params={"supersede": "cam-2"},
                                files={"file": ("x.png", smooth_png(seed=4))})
        assert elsewhere.status_code == 503  # another key frees nothing: the refusal undoes nothing
        assert client.get(f"/v1/images/{first['id']}").json()["status"] == "queued"
        assert post(client, "cam-1", seed=5)["superseded"] == [first["id"]]


def test_a_frame_in_flight_is_never_superseded(tmp_path, tiny_models_dir):
    gate, arrived, stored = threading.Event(), threading.Event(), []

    async def slow_receiver(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await asyncio.to_thread(gate.wait, 20)
        frames = unpack_frames(request.content, SENDER_SECRET.encode())
        stored.extend(f.id for f in frames)
        return httpx.Response(200, json={"results": [{"id": f.id, "status": "stored"} for f in frames]})

    with client_for(tmp_path, tiny_models_dir, httpx.MockTransport(slow_receiver)) as client:
        first = post(client, "cam-1")["images"][0]
        assert arrived.wait(10)  # its POST is on the way
        second = post(client, "cam-1", seed=4)
        gate.set()
        done = [wait_status(client, i, "delivered") for i in (first["id"], second["images"][0]["id"])]
    assert second["superseded"] == []
    assert [d["superseded_by"] for d in done] == [None, None]
    assert sorted(stored) == sorted([first["id"], second["images"][0]["id"]])  # each once


def test_a_frame_that_may_have_arrived_is_not_superseded(tmp_path, tiny_models_dir):
    """A POST that failed in transport may have been stored before the connection broke: that
    frame is sent again, never marked superseded."""
    with client_for(tmp_path, tiny_models_dir, down(), retry_base_s=60, retry_max_s=60) as client:
        first = post(client, "cam-1")["images"][0]
        assert wait_attempts(client, first["id"], 1)["last_error"]["error"] == "connect"
        second = post(client, "cam-1", seed=4)
        third = post(client, "cam-1", seed=5)  # the second was never sent: that one goes
        statuses = [client.get(f"/v1/images/{i}").json()["status"]
                    for i in (first["id"], second["images"][0]["id"])]
    assert second["superseded"] == [] and third["superseded"] == [second["images"][0]["id"]]
    assert statuses == ["queued", "superseded"]


def test_the_frames_of_one_upload_do_not_supersede_each_other(tmp_path, tiny_models_dir):
    with client_for(tmp_path, tiny_models_dir, busy()) as client:
        images = upload(client, smooth_png(seed=3), smooth_png(seed=4), supersede="cam-1")
        later = post(client, "cam-1", seed=5)
    assert [i["status"] for i in images] == ["queued", "queued"]
    assert sorted(later["superseded"]) == sorted(i["id"] for i in images)


@pytest.mark.parametrize("key", ["", "a" * 65, "cam 1", "../etc", "-cam", "kamera-ü", "cam\n1"])
def test_a_malformed_stream_key_is_a_422_that_says_what_a_key_is(tmp_path, tiny_models_dir, key):
    with client_for(tmp_path, tiny_models_dir, down()) as client:
        r = client.post("/v1/images", params={"supersede": key}, files={"file": ("a.png", smooth_png())})
        counts = client.get("/v1/images").json()["counts"]
    assert r.status_code == 422
    assert r.json()["error"] == "InvalidRequest"
    assert "1 to 64 characters of letters, digits and . _ : / -" in r.json()["message"]
    assert counts["queued"] == 0  # nothing was queued


def test_stream_keys_of_every_allowed_form_are_accepted(tmp_path, tiny_models_dir):
    with client_for(tmp_path, tiny_models_dir, busy()) as client:
        for key in ("a", "Cam_3.front:left/hd", "9" * 64):
            assert post(client, key)["images"][0]["stream_key"] == key


# ---- budget_binding -----------------------------------------------------------------------------
def test_a_byte_budget_that_limits_nothing_says_so(tmp_path, tiny_models_dir):
    """The tiny model's stream of the 96x80 picture is 163 bytes at quality 1, 111 at quality 0."""
    with client_for(tmp_path, tiny_models_dir, down(), link_kbps=8, latency_target_s=5) as client:
        (huge,) = upload(client, smooth_png(), max_bytes=10**12)
        (tight,) = upload(client, smooth_png(seed=4), max_bytes=140)
        (fixed,) = upload(client, smooth_png(seed=5), quality=0.5)
        (auto,) = upload(client, smooth_png(seed=6), quality="auto")  # 5000 bytes of link: quality 1 fits
        record = client.get(f"/v1/images/{huge['id']}").json()
        too_big = client.post("/v1/images", params={"max_bytes": 10**30}, files={"file": ("a.png", smooth_png())})
    assert (huge["max_bytes"], huge["budget_binding"], huge["quality"], huge["bytes"]) == (10**12, False, 1.0, 163)
    assert (record["max_bytes"], record["budget_binding"]) == (10**12, False)
    assert (tight["max_bytes"], tight["budget_binding"]) == (140, True) and tight["bytes"] <= 140
    assert (fixed["max_bytes"], fixed["budget_binding"]) == (None, None)
    assert auto["budget"]["reason"] == "ceiling"
    assert (auto["max_bytes"], auto["budget_binding"]) == (auto["budget"]["bytes"], False)
    assert too_big.status_code == 422 and too_big.json()["error"] == "QualityOutOfRange"
