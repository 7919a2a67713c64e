"""Sender delivery in process: retries, permanent refusals, restarts, a full outbox. The receiver is
an ``httpx.MockTransport`` whose answers each test scripts; it dedupes by id like the real one."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sender.app import create_app
from sender.errors import OutboxError
from shared.wire import Frame, unpack_frames
from tests.conftest import TINY_MODEL
from tests.service.conftest import SENDER_SECRET as SECRET
from tests.service.conftest import forward_to
from tests.service.conftest import sender_settings as make_settings
from tests.service.conftest import wait_status

def png(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


class Receiver:
    """Verifies signatures, dedupes by id. ``script`` answers the next requests in order (an
    ``httpx.Response``, an exception to raise, or a function of the frames returning a response
    or None for the normal answer); afterwards it stores and answers 200."""

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.stored: Counter[str] = Counter()  # id -> times stored (must never exceed 1)
        self.received: Counter[str] = Counter()  # id -> times received
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        frames = unpack_frames(request.content, SECRET.encode())
        for f in frames:
            self.received[f.id] += 1
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            response = step(frames) if callable(step) else step
            if response is not None:
                return response
        return httpx.Response(200, json={"results": [self.store(f) for f in frames]})

    def store(self, f: Frame) -> dict:
        if f.id in self.stored:
            return {"id": f.id, "status": "duplicate"}
        self.stored[f.id] += 1
        return {"id": f.id, "status": "stored"}


def upload(client: TestClient, *files: bytes) -> list[str]:
    r = client.post("/v1/images", files=[("file", (f"f{i}.png", data)) for i, data in enumerate(files)])
    assert r.status_code == 202, r.text
    return [image["id"] for image in r.json()["images"]]


def app_with(tmp_path: Path, models_dir: Path, receiver: Receiver | httpx.MockTransport, **overrides):
    transport = receiver if isinstance(receiver, httpx.MockTransport) else httpx.MockTransport(receiver)
    return TestClient(create_app(make_settings(tmp_path, models_dir, **overrides), transport=transport))


def test_503_then_200_is_retried_and_delivered(tmp_path, tiny_models_dir):
    receiver = Receiver(httpx.Response(503, json={"error": "StoreError", "message": "busy"}),
                        httpx.ConnectError("refused"), httpx.ReadTimeout("slow"))
    with app_with(tmp_path, tiny_models_dir, receiver) as client:
        (image_id,) = upload(client, png(seed=1))
        done = wait_status(client, image_id, "delivered")
        assert done["attempts"] == 4 and done["receiver_status"] == "stored" and done["last_error"] is None
        metrics = client.get("/metrics").text
    assert receiver.stored[image_id] == 1 and receiver.received[image_id] == 4
    for kind in ("http_503", "connect", "timeout"):
        assert f'latentwire_sender_delivery_errors_total{{kind="{kind}"}} 1.0' in metrics


def test_retry_after_is_honoured(tmp_path, tiny_models_dir):
    receiver = Receiver(httpx.Response(429, headers={"Retry-After": "30"},
                                       json={"error": "TooMany", "message": "slow down"}))
    with app_with(tmp_path, tiny_models_dir, receiver) as client:
        (image_id,) = upload(client, png(seed=2))
        deadline = time.monotonic() + 5
        while (body := client.get(f"/v1/images/{image_id}").json())["attempts"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert body["status"] == "queued" and body["last_error"]["http_status"] == 429
        assert body["last_error"]["message"] == "slow down"
        assert body["next_attempt_at"] - time.time() > 25  # not the 0.01 s backoff
        time.sleep(0.2)
        assert receiver.requests == 1  # paused, new uploads do not cut the pause short
        upload(client, png(seed=3))
        time.sleep(0.2)
        assert receiver.requests == 1


def test_409_fails_the_frame_and_keeps_the_receivers_message(tmp_path, tiny_models_dir):
    refusal = {"error": "ModelMismatch", "message": "stream made by model lw-tiny@abc, this decoder serves X@Y"}
    receiver = Receiver(httpx.Response(409, json=refusal))
    with app_with(tmp_path, tiny_models_dir, receiver) as client:
        (image_id,) = upload(client, png(seed=4))
        failed = wait_status(client, image_id, "failed")
        assert failed["last_error"] == {**refusal, "http_status": 409}
        assert failed["attempts"] == 1 and failed["delivered_at"] is None
        time.sleep(0.1)
        assert receiver.requests == 1  # permanent: never retried
        listed = client.get("/v1/images", params={"status": "failed"}).json()
        assert [i["id"] for i in listed["images"]] == [image_id]


def test_a_refused_batch_is_split_so_only_the_bad_frame_fails(tmp_path, tiny_models_dir):
    def refuse_narrow(frames: list[Frame]):
        if any(f.stream.width == 33 for f in frames):
            return httpx.Response(400, json={"error": "NotABitstream", "message": "bad frame"})
        return None

    receiver = Receiver(*[refuse_narrow] * 3)
    with app_with(tmp_path, tiny_models_dir, receiver) as client:
        good, bad = upload(client, png(48, 40, seed=5), png(33, 40, seed=6))
        assert wait_status(client, good, "delivered")["attempts"] == 2
        assert wait_status(client, bad, "failed")["last_error"]["error"] == "NotABitstream"
    assert receiver.stored == Counter({good: 1})


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_at_most_delivery_concurrency_posts_are_on_their_way_and_no_frame_twice(tmp_path, tiny_models_dir,
                                                                                 concurrency):
    """A receiver that holds every POST until released: the sender keeps ``delivery_concurrency``
    POSTs open at once, each with other frames, and sends the rest as slots free up."""
    open_now, most, bodies = 0, 0, []
    gate = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal open_now, most
        frames = unpack_frames(request.content, SECRET.encode())
        bodies.append([f.id for f in frames])
        open_now += 1
        most = max(most, open_now)
        await gate.wait()
        open_now -= 1
        return httpx.Response(200, json={"results": [{"id": f.id, "status": "stored"} for f in frames]})

    with app_with(tmp_path, tiny_models_dir, httpx.MockTransport(slow), delivery_concurrency=concurrency,
                  delivery_batch_max=1) as client:
        ids = [upload(client, png(seed=20 + i))[0] for i in range(4)]
        deadline = time.monotonic() + 10
        while len(bodies) < concurrency:
            assert time.monotonic() < deadline, bodies
            time.sleep(0.02)
        time.sleep(0.3)  # no further POST while every slot is taken
        assert len(bodies) == concurrency
        client.portal.call(gate.set)
        done = [wait_status(client, i, "delivered") for i in ids]
        link = client.get("/v1/link").json()
    assert most == concurrency
    assert sorted(i for body in bodies for i in body) == sorted(ids)  # each frame in exactly one POST
    assert all(d["attempts"] == 1 for d in done)
    assert link["samples"] == 4


def test_posts_that_fail_together_count_once_and_one_probe_goes_before_the_rest(tmp_path, tiny_models_dir):
    """Two POSTs on their way when the receiver goes down fail together: the backoff counts one
    failure (a first failure's pause is at most retry_base_s; counted twice it would be 1-2x that),
    and after the pause a single POST probes the receiver; the second slot opens once it delivers."""
    base = 2.5
    gate = asyncio.Event()
    posts: list[dict] = []  # each POST: start, end, whether another was on its way at its start

    async def receiver(request: httpx.Request) -> httpx.Response:
        frames = unpack_frames(request.content, SECRET.encode())
        post = {"start": time.monotonic(), "beside": sum(1 for p in posts if "end" not in p)}
        posts.append(post)
        try:
            if len(posts) <= 2:  # the receiver dies under the first two
                await gate.wait()
                raise httpx.ConnectError("connection reset")
            await asyncio.sleep(0.3)
            return httpx.Response(200, json={"results": [{"id": f.id, "status": "stored"} for f in frames]})
        finally:
            post["end"] = time.monotonic()

    with app_with(tmp_path, tiny_models_dir, httpx.MockTransport(receiver), delivery_concurrency=2,
                  delivery_batch_max=1, retry_base_s=base, retry_max_s=60) as client:
        ids = [upload(client, png(seed=40 + i))[0] for i in range(4)]
        deadline = time.monotonic() + 10
        while len(posts) < 2:
            assert time.monotonic() < deadline, posts
            time.sleep(0.02)
        client.portal.call(gate.set)
        done = [wait_status(client, i, "delivered", timeout_s=20) for i in ids]
        metrics = client.get("/metrics").text
    failed_at = max(posts[0]["end"], posts[1]["end"])
    probe, after = posts[2], posts[3:]
    assert posts[1]["beside"] == 1  # both slots were in use when the receiver died
    assert probe["start"] - failed_at <= base + 0.25  # one failure's pause, not two failures'
    assert probe["beside"] == 0 and all(p["start"] >= probe["end"] for p in after)  # the probe went alone
    assert any(p["beside"] == 1 for p in after)  # then both slots again
    assert sorted(d["attempts"] for d in done) == [1, 1, 2, 2]
    assert 'latentwire_sender_delivery_errors_total{kind="connect"} 2.0' in metrics


def test_restart_delivers_everything_exactly_once(tmp_path, tiny_models_dir):
    down = httpx.MockTransport(lambda request: (_ for _ in ()).throw(httpx.ConnectError("receiver down")))
    with app_with(tmp_path, tiny_models_dir, down) as client:
        ids = upload(client, png(seed=7), png(seed=8)) + upload(client, png(seed=9))
        for image_id in ids:
            deadline = time.monotonic() + 5
            while client.get(f"/v1/images/{image_id}").json()["attempts"] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    # Second life on the same data_dir: still down twice, then a reply gets lost (the receiver
    # stores the frames but the sender sees a 503), then all is well.
    receiver = Receiver(httpx.ConnectError("still down"), httpx.ConnectError("still down"),
                        lambda frames: ([receiver.store(f) for f in frames], httpx.Response(503))[1])
    with app_with(tmp_path, tiny_models_dir, receiver) as client:
        done = [wait_status(client, image_id, "delivered") for image_id in ids]
        assert client.get("/v1/images").json()["counts"] == {"queued": 0, "delivered": 3, "failed": 0, "superseded": 0}
    assert receiver.stored == Counter(dict.fromkeys(ids, 1))  # exactly once in the receiver's store
    assert {d["receiver_status"] for d in done} == {"duplicate"}
    assert all(d["attempts"] >= 4 for d in done)


def test_full_outbox_answers_503_with_retry_after(tmp_path, tiny_models_dir):
    down = httpx.MockTransport(lambda request: httpx.Response(503, headers={"Retry-After": "30"}))
    with app_with(tmp_path, tiny_models_dir, down, outbox_max_pending=2) as client:
        upload(client, png(seed=10), png(seed=11))
        r = client.post("/v1/images", files={"file": ("more.png", png(seed=12))})
        assert r.status_code == 503 and r.json()["error"] == "OutboxFull"
        assert int(r.headers["Retry-After"]) >= 1
        assert client.get("/v1/images").json()["counts"]["queued"] == 2
        metrics = client.get("/metrics").text.splitlines()
        assert [ln for ln in metrics if ln.startswith("latentwire_sender_outbox_depth")] == [
            "latentwire_sender_outbox_depth 2.0"]


def test_full_encoder_queue_answers_503(tmp_path, tiny_models_dir):
    with app_with(tmp_path, tiny_models_dir, Receiver(), encode_queue_size=1) as client:
        r = client.post("/v1/images", files=[("file", ("a.png", png(seed=13))), ("file", ("b.png", png(seed=14)))])
        assert r.status_code == 503 and r.json()["error"] == "EncoderBusy" and r.headers["Retry-After"] == "1"
        assert client.post("/v1/images", files={"file": ("a.png", png(seed=13))}).status_code == 202


def test_second_sender_on_the_same_data_dir_is_refused(tmp_path, tiny_models_dir):
    with app_with(tmp_path, tiny_models_dir, Receiver()):
        with pytest.raises(OutboxError, match="another sender"):
            with app_with(tmp_path, tiny_models_dir, Receiver()):
                pass


def test_the_real_receiver_app_stores_what_the_sender_sends(tmp_path, tiny_models_dir, monkeypatch):
    """Contract check against receiver.app in process (its own TestClient, so its lifespan runs);
    the sender's transport forwards each POST to it (``forward_to``)."""
    receiver_app = pytest.importorskip("receiver.app")
    from receiver.settings import Settings as ReceiverSettings

    for key in [k for k in os.environ if k.startswith("LATENTWIRE_")]:
        monkeypatch.delenv(key)
    settings = ReceiverSettings(secret=SECRET, store_dir=tmp_path / "store", model=TINY_MODEL,
                                models_dir=tiny_models_dir, device="cpu")
    with TestClient(receiver_app.create_app(settings)) as rc:
        with app_with(tmp_path / "sender", tiny_models_dir, forward_to(rc)) as client:
            ids = upload(client, png(48, 40, seed=20), png(33, 20, seed=21))
            done = [wait_status(client, image_id, "delivered") for image_id in ids]
        assert [d["receiver_status"] for d in done] == ["stored", "stored"]
        for d in done:
            meta = rc.get(f"/v1/images/{d['id']}")
            assert meta.status_code == 200, meta.text
            assert (meta.json()["width"], meta.json()["height"]) == (d["width"], d["height"])


# The frames table as outbox schema 1 created it (before noise and cleaned), to test the migration.
SCHEMA_1 = """
CREATE TABLE frames (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'delivered', 'failed')), stream BLOB,
    filename TEXT NOT NULL, mode TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    original_bytes INTEGER NOT NULL, bytes INTEGER NOT NULL, bpp REAL NOT NULL, psnr REAL,
    quality REAL NOT NULL, jpeg TEXT, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    last_error TEXT, delivered_at REAL, receiver_status TEXT
);
CREATE INDEX frames_due ON frames (next_attempt_at) WHERE status = 'queued';
CREATE INDEX frames_created ON frames (created_at);
PRAGMA user_version=1;
"""


def test_a_schema_1_outbox_is_migrated_and_its_frames_delivered(tmp_path, tiny_models_dir):
    import sqlite3

    from shared.codec import Codec

    enc = Codec.load(TINY_MODEL, tiny_models_dir).encode(np.zeros((40, 48, 3), np.uint8), quality=0.5)
    frame_id = "ab" * 16
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    db.executescript(SCHEMA_1)
    db.execute("INSERT INTO frames (id, created_at, status, stream, filename, mode, width, height, original_bytes, "
               "bytes, bpp, psnr, quality, next_attempt_at) VALUES (?, ?, 'queued', ?, 'old.png', 'standard', 48, "
               "40, 999, ?, ?, NULL, 0.5, 0)", (frame_id, time.time(), enc.data, enc.nbytes, enc.bpp))
    db.commit()
    db.close()

    receiver = Receiver()
    with app_with(tmp_path, tiny_models_dir, receiver) as client:
        done = wait_status(client, frame_id, "delivered")
        assert (done["noise"], done["cleaned"], done["bytes"]) == (None, False, enc.nbytes)
        assert (done["coded_width"], done["coded_height"]) == (48, 40)  # coded at its own size
        new_id, = upload(client, png(seed=4))  # new frames go into the migrated table
        assert wait_status(client, new_id, "delivered")["cleaned"] is False
    assert receiver.stored == Counter({frame_id: 1, new_id: 1})
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 5
    assert db.execute("SELECT noise, cleaned, coded_height, coded_width, budget, max_bytes, stream_key, "
                      "superseded_by, source FROM frames WHERE id = ?", (frame_id,)).fetchone() == (
        None, 0, None, None, None, None, None, None, None)
    # Schema 4 rebuilt the table for its CHECK: the new status is allowed, the indexes are back.
    db.execute("UPDATE frames SET status = 'superseded' WHERE id = ?", (frame_id,))
    indexes = {row[1] for row in db.execute("PRAGMA index_list(frames)")}
    assert {"frames_due", "frames_created", "frames_stream_key"} <= indexes
    db.close()


def test_an_outbox_of_a_newer_schema_is_refused_untouched(tmp_path, tiny_models_dir):
    import sqlite3

    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    db.executescript(SCHEMA_1.replace("user_version=1", "user_version=6"))
    db.close()
    with pytest.raises(OutboxError, match=r"outbox schema 6; this sender reads schemas 1 to 5"):
        with app_with(tmp_path, tiny_models_dir, Receiver()):
            pass
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 6
    assert "noise" not in [row[1] for row in db.execute("PRAGMA table_info(frames)")]
    db.close()


def test_the_broker_names_a_version_6_frames_subject_by_its_model(tmp_path, tiny_models_dir, sample_rgb):
    """Version 6 streams leave the model's name out: the broker's subject takes it from the codecs
    this sender serves (by weights), or the weights for a frame of a model it no longer serves."""
    import dataclasses

    from sender.broker import BrokerDeliverer
    from sender.metrics import Metrics
    from sender.outbox import Outbox, PendingFrame
    from shared.codec import Codec
    from tests.conftest import TINY_CONTEXT_MODEL

    context = Codec.load(TINY_CONTEXT_MODEL, tiny_models_dir)
    stream = context.encode(sample_rgb, quality=0.5).stream
    old = dataclasses.replace(stream, weights="0123456789abcdef")
    plain = Codec.load(TINY_MODEL, tiny_models_dir).encode(sample_rgb, quality=0.5).stream
    settings = make_settings(tmp_path / "data", tiny_models_dir)
    deliverer = BrokerDeliverer(Outbox(tmp_path / "outbox.sqlite"), None, settings, Metrics(),
                                names={context.weights: context.name})
    frames = [PendingFrame(id=f"{k:032x}", created_at=1.0, stream=s.to_bytes(), attempts=0)
              for k, s in enumerate((stream, old, plain))]

    packed = deliverer._pack_each(frames)

    assert [model for _, model, _ in packed] == [TINY_CONTEXT_MODEL, "0123456789abcdef", TINY_MODEL]
    assert [unpack_frames(body, SECRET.encode())[0].stream for _, _, body in packed] == [stream, old, plain]
