"""Cluster mode end to end (issue 22): senders -> NATS JetStream -> receiver workers -> PostgreSQL + S3,
every service and engine a real process on loopback (tiny model, small pictures)."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psycopg
import pytest
from PIL import Image

from shared import bitstream as bs
from shared.codec import Codec
from shared.jetstream import DEAD_STREAM, FRAMES_STREAM, frames_subject
from shared.tools.engines import NatsServer
from shared.tools.launcher import Cluster, ServiceProcess
from shared.wire import Frame, pack_frames
from tests.cluster.conftest import down, object_keys
from tests.conftest import TINY_DENOISE_MODEL, TINY_MODEL
from tests.e2e.conftest import png_bytes


# ---- helpers ---------------------------------------------------------------------------------
def rows(database_url: str) -> list[tuple]:
    with psycopg.connect(database_url, connect_timeout=5) as c:
        return c.execute("SELECT id, stream_bytes FROM images").fetchall()


def encode(codec: Codec, k: int, quality: float = 0.5) -> bs.Bitstream:
    return codec.encode(np.array(Image.open(io.BytesIO(png_bytes(48, 40, k))).convert("RGB")), quality=quality).stream


def upload(sender: ServiceProcess, pictures: list[tuple[str, bytes]], **params) -> httpx.Response:
    files = [("file", (name, data, "image/png")) for name, data in pictures]
    return httpx.post(sender.url + "/v1/images", params={"quality": 0.5, "preview": "false", **params},
                      files=files, timeout=60)


def sender_counts(sender: ServiceProcess) -> dict:
    return httpx.get(sender.url + "/v1/images", params={"limit": 1}, timeout=10).json()["counts"]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # an engine still coming back
            last = exc
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def start_all(processes: list[ServiceProcess]) -> None:
    with ThreadPoolExecutor(len(processes)) as pool:
        list(pool.map(lambda p: p.start(), processes))


def stream_state(nats_url: str, stream: str):
    async def go():
        import nats

        nc = await nats.connect(nats_url)
        try:
            return (await nc.jetstream().stream_info(stream)).state
        finally:
            await nc.close()
    return asyncio.run(go())


def dead_letters(nats_url: str) -> list[dict]:
    async def go():
        import nats

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        out = []
        try:
            info = await js.stream_info(DEAD_STREAM)
            for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
                msg = await js.get_msg(DEAD_STREAM, seq)
                out.append({"subject": msg.subject, **(msg.headers or {})})
        finally:
            await nc.close()
        return out
    return asyncio.run(go())


@pytest.fixture
def cluster(tmp_path, tiny_models_dir, database_url, bucket, s3_server):
    nats_server = NatsServer(tmp_path / "nats").start()
    spec = Cluster(work_dir=tmp_path / "services", secret=secrets.token_hex(32), broker_url=nats_server.url,
                   database_url=database_url, blob_url=f"s3://{bucket}",
                   blob_endpoint_url=s3_server.endpoint, s3_keys=(s3_server.access_key, s3_server.secret_key),
                   model=TINY_MODEL, models_dir=tiny_models_dir,
                   extra_env={"LATENTWIRE_RECEIVER_BROKER_ACK_WAIT_S": "3", "LATENTWIRE_RECEIVER_DENOISE_MODEL": "",
                              "LATENTWIRE_SENDER_DENOISE_MODEL": "", "LATENTWIRE_SENDER_RETRY_MAX_S": "2"})
    processes: list[ServiceProcess] = []

    def track(process: ServiceProcess) -> ServiceProcess:
        processes.append(process)
        return process

    try:
        yield spec, nats_server, track
    finally:
        for p in processes:
            p.stop()
        nats_server.stop()


# ---- 1. 300 images, 2 senders, 3 workers, one of them kill -9'd twice, and a broker restart ----------
def test_300_images_stored_exactly_once_through_worker_kills_and_a_broker_restart(cluster, s3_client, bucket,
                                                                                    tiny_models_dir):
    spec, nats_server, track = cluster
    workers = [track(spec.receiver(f"r{k}")) for k in range(3)]
    senders = [track(spec.sender(f"s{k}")) for k in range(2)]
    start_all(workers + senders)

    accepted: list[str] = []
    errors: list[str] = []

    def feed(sender: ServiceProcess, offset: int) -> None:
        for batch in range(30):  # 150 pictures, 5 per request, paced so the faults land mid-run
            pics = [(f"p{offset + batch * 5 + j}.png", png_bytes(48, 40, offset + batch * 5 + j)) for j in range(5)]
            r = upload(sender, pics)
            if r.status_code != 202:
                errors.append(f"{r.status_code} {r.text[:200]}")
                return
            accepted.extend(i["id"] for i in r.json()["images"])
            time.sleep(0.3)

    feeders = [threading.Thread(target=feed, args=(s, 1000 * k)) for k, s in enumerate(senders)]
    for t in feeders:
        t.start()
    count = lambda: len(rows(spec.database_url))  # noqa: E731
    wait_for(lambda: count() >= 40, 120, "40 stored")
    workers[0].kill()  # kill -9 mid-run; its unacked frame goes to another worker after ack_wait
    workers[0].start()
    wait_for(lambda: count() >= 120, 120, "120 stored")
    workers[0].kill()  # the same worker again, after its restart
    workers[0].start()
    wait_for(lambda: count() >= 180, 120, "180 stored")
    nats_server.restart()  # publishes and fetches fail for a moment; JetStream keeps its data on disk
    for t in feeders:
        t.join()
    assert errors == []
    assert len(accepted) == 300 == len(set(accepted))

    wait_for(lambda: count() == 300, 180, "300 stored")
    wait_for(lambda: all(sender_counts(s).get("delivered") == 150 for s in senders), 60, "senders settled")
    wait_for(lambda: stream_state(nats_server.url, FRAMES_STREAM).messages == 0, 30, "the work queue empty")
    time.sleep(4)  # longer than ack_wait: a stray redelivery would show up now

    stored = rows(spec.database_url)
    assert sorted(i for i, _ in stored) == sorted(accepted)  # each accepted image once, nothing else
    keys = object_keys(s3_client, bucket)
    assert keys == {f"images/{i}.png" for i in accepted} | {f"codes/{i}.lw" for i in accepted}
    assert dead_letters(nats_server.url) == []

    codec = Codec.load(TINY_MODEL, tiny_models_dir)
    client = s3_client
    sizes = dict(stored)
    for image_id in accepted:  # every PNG is the decode of the code it was stored with
        code = client.get_object(Bucket=bucket, Key=f"codes/{image_id}.lw")["Body"].read()
        png = client.get_object(Bucket=bucket, Key=f"images/{image_id}.png")["Body"].read()
        assert len(code) == sizes[image_id]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), codec.decode(code))
    for w in workers:  # every worker lived and served
        assert httpx.get(w.url + "/readyz", timeout=10).status_code == 200


# ---- 2. live events and galleries span replicas ----------------------------------------------
def test_replica_a_streams_the_images_replica_b_stores(cluster, tiny_models_dir):
    spec, nats_server, track = cluster
    a, b = track(spec.receiver("a")), track(spec.receiver("b"))
    start_all([a, b])
    codec = Codec.load(TINY_MODEL, tiny_models_dir)
    ids = [secrets.token_hex(16) for _ in range(4)]
    frames = [Frame(id=i, sent_at=time.time(), stream=encode(codec, k)) for k, i in enumerate(ids)]

    seen: list[str] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", a.url + "/v1/events", timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith(": connected"):
                    connected.set()
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["id"])
                    if len(seen) == len(ids):
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(15)
    r = httpx.post(b.url + "/v1/frames", content=pack_frames(frames, spec.secret.encode()),
                   headers={"Content-Type": "application/msgpack"}, timeout=30)
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["stored"] * 4
    listener.join(20)
    assert sorted(seen) == sorted(ids)  # stored by B, streamed live by A
    list_a = httpx.get(a.url + "/v1/images", timeout=10).json()["items"]
    list_b = httpx.get(b.url + "/v1/images", timeout=10).json()["items"]
    assert [x["id"] for x in list_a] == [x["id"] for x in list_b] and sorted(x["id"] for x in list_a) == sorted(ids)
    png_a = httpx.get(a.url + f"/v1/images/{ids[0]}.png", timeout=10)
    assert png_a.status_code == 200 and png_a.content == httpx.get(b.url + f"/v1/images/{ids[0]}.png").content


# ---- 3. broker down: the outbox buffers up to its limit, then 503 OutboxFull --------------------
def test_broker_down_fills_the_outbox_then_everything_is_delivered(cluster):
    spec, nats_server, track = cluster
    worker = track(spec.receiver("r"))
    sender = track(spec.sender("s"))
    start_all([worker, sender])
    nats_server.stop()
    limit = 4
    sender.stop()  # again with a small outbox, while the broker is down
    sender.env["LATENTWIRE_SENDER_OUTBOX_MAX_PENDING"] = str(limit)
    sender.start()

    ids = []
    for k in range(limit):
        r = upload(sender, [(f"p{k}.png", png_bytes(48, 40, k))])
        assert r.status_code == 202, r.text
        ids.append(r.json()["images"][0]["id"])
    full = upload(sender, [("late.png", png_bytes(48, 40, 99))])
    assert full.status_code == 503 and full.json()["error"] == "OutboxFull"
    assert int(full.headers["Retry-After"]) >= 1
    assert sender_counts(sender).get("queued") == limit
    ready = httpx.get(worker.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and any("NATS" in reason for reason in ready.json()["reasons"])

    nats_server.start()
    wait_for(lambda: sender_counts(sender).get("delivered") == limit, 60, "the outbox delivered")
    wait_for(lambda: sorted(i for i, _ in rows(spec.database_url)) == sorted(ids), 60, "all stored")
    assert httpx.get(worker.url + "/readyz", timeout=10).status_code == 200


# ---- 4. PostgreSQL or S3 down: nothing acked, nothing lost, /readyz names it ---------------------
@pytest.mark.parametrize("engine, name", [("postgres", "PostgreSQL"), ("s3", "S3")])
def test_store_outage_pauses_the_workers_and_loses_nothing(cluster, postgres_server, s3_server, s3_client, bucket,
                                                           engine, name):
    spec, nats_server, track = cluster
    worker = track(spec.receiver("r"))
    sender = track(spec.sender("s"))
    start_all([worker, sender])
    first = upload(sender, [("p0.png", png_bytes(48, 40, 0))]).json()["images"][0]["id"]
    wait_for(lambda: len(rows(spec.database_url)) == 1, 60, "the first image stored")

    with down(postgres_server if engine == "postgres" else s3_server):
        ids = [i["id"] for i in upload(sender, [(f"p{k}.png", png_bytes(48, 40, k)) for k in range(1, 4)]).json()["images"]]
        wait_for(lambda: sender_counts(sender).get("delivered") == 4, 60, "frames published")
        ready = wait_for(lambda: (r := httpx.get(worker.url + "/readyz", timeout=10)).status_code == 503 and r,
                         60, f"/readyz to report {name}")
        assert any(name in reason for reason in ready.json()["reasons"]), ready.json()
        time.sleep(2)
        assert stream_state(nats_server.url, FRAMES_STREAM).messages == 3  # none acked
    wait_for(lambda: sorted(i for i, _ in rows(spec.database_url)) == sorted([first, *ids]), 90, "all four stored")
    wait_for(lambda: object_keys(s3_client, bucket) == {f"{d}/{i}.{x}" for i in [first, *ids]
                                                    for d, x in (("images", "png"), ("codes", "lw"))}, 30,
             "one PNG and one code per image, no stray object")
    wait_for(lambda: httpx.get(worker.url + "/readyz", timeout=10).status_code == 200, 30, "ready again")
    assert dead_letters(nats_server.url) == []


# ---- 5. bad frames on the stream are dead-lettered with their reason ------------------------------
def test_bad_frames_are_dead_lettered_and_the_worker_keeps_working(cluster, tiny_models_dir):
    spec, nats_server, track = cluster
    worker = track(spec.receiver("r"))
    start_all([worker])
    codec = Codec.load(TINY_MODEL, tiny_models_dir)
    other = Codec.load(TINY_DENOISE_MODEL, tiny_models_dir)  # a model this receiver does not serve
    secret = spec.secret.encode()
    good = Frame(id=secrets.token_hex(16), sent_at=time.time(), stream=encode(codec, 1))
    corrupt_stream = bytearray(encode(codec, 2).to_bytes())
    corrupt_stream[-3] ^= 0xFF  # inside the entropy-coded strings: the CRC no longer matches
    bodies = {
        "unsigned garbage": b"\x93not a frame",
        "wrong key": pack_frames([Frame(id=secrets.token_hex(16), sent_at=time.time(), stream=encode(codec, 3))],
                                 secrets.token_bytes(32)),
        "wrong model": pack_frames([Frame(id=secrets.token_hex(16), sent_at=time.time(), stream=encode(other, 4))],
                                   secret),
        "corrupt": _pack_raw(secrets.token_hex(16), bytes(corrupt_stream), secret),
        "good": pack_frames([good], secret),
    }

    async def publish():
        import nats

        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        for name, body in bodies.items():
            await js.publish(frames_subject(TINY_MODEL), body, stream=FRAMES_STREAM)
        await nc.close()

    asyncio.run(publish())
    wait_for(lambda: [i for i, _ in rows(spec.database_url)] == [good.id], 60, "the good frame stored")
    letters = wait_for(lambda: len(d := dead_letters(nats_server.url)) == 4 and d, 60, "four dead letters")
    reasons = sorted(d["Latentwire-Reason"] for d in letters)
    assert reasons == sorted(["WireError", "BadSignature", "ModelMismatch", "CorruptBitstream"]), letters
    assert all(d["subject"] == f"latentwire.dead.{d['Latentwire-Reason']}" and d["Latentwire-Message"]
               for d in letters)
    assert stream_state(nats_server.url, FRAMES_STREAM).messages == 0  # none left to retry forever
    assert httpx.get(worker.url + "/readyz", timeout=10).status_code == 200
    metrics = httpx.get(worker.url + "/metrics", timeout=10).text
    assert 'latentwire_receiver_frames_total{result="dead_letter"} 4.0' in metrics


def _pack_raw(frame_id: str, stream_bytes: bytes, secret: bytes) -> bytes:
    """A correctly signed body around stream bytes that need not parse (the wire's own layout)."""
    import msgpack

    from shared.wire import WIRE_VERSION, _body, sign

    frames = [{"id": frame_id, "sent_at": time.time(), "stream": stream_bytes}]
    return msgpack.packb({"wire": WIRE_VERSION, "frames": frames, "sig": sign(_body(frames), secret)},
                         use_bin_type=True)
