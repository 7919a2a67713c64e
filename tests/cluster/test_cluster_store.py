"""ClusterStore on a real PostgreSQL and SeaweedFS: the same answers as the embedded Store (the
contract tests run against both), one row per id when replicas race, and outages that name the
dependency that is down and leave nothing half-written."""

from __future__ import annotations

import secrets
import socket
import threading
import time

import psycopg
import pytest

from receiver.cluster_store import ClusterStore
from receiver.errors import InvalidImageId
from receiver.store import COLUMNS, Store, as_json
from shared.errors import StoreError
from tests.cluster.conftest import down, image_meta, object_keys


@pytest.fixture(params=["embedded", "cluster"])
def any_store(request, tmp_path):
    """Store and ClusterStore, for what both must answer alike."""
    if request.param == "embedded":
        store = Store(tmp_path / "store").open()
        yield store
        store.close()
    else:
        yield request.getfixturevalue("cluster_store")


# ---- the contract both stores keep -----------------------------------------------------------------
def test_put_then_read_back(any_store):
    meta = image_meta()
    before = time.time()
    row = any_store.put(meta, b"\x89PNG one", code=b"LW code")
    assert before - 1 <= row["received_at"] <= time.time() + 1  # the database's clock may differ a little
    assert {k: row[k] for k in meta} == meta
    assert any_store.get(meta["id"]) == row
    assert any_store.contains(meta["id"])
    assert any_store.read_png(meta["id"]) == b"\x89PNG one"
    api = as_json(row)
    assert api["png_url"] == f"/v1/images/{meta['id']}.png"
    assert (api["coded_width"], api["coded_height"]) == (97, 71)
    assert api["latency_ms"] == pytest.approx((row["received_at"] - meta["sent_at"]) * 1000, abs=0.001)


def test_unknown_ids_are_absent_and_bad_ids_refused(any_store):
    unknown = secrets.token_hex(16)
    assert any_store.get(unknown) is None
    assert not any_store.contains(unknown)
    assert any_store.read_png(unknown) is None
    for bad in ("../../etc/passwd", "ABCDEF" * 6, ""):
        with pytest.raises(InvalidImageId):
            any_store.get(bad)
        with pytest.raises(InvalidImageId):
            any_store.read_png(bad)
        with pytest.raises(InvalidImageId):
            any_store.put(image_meta(bad), b"png")


def test_a_second_put_of_an_id_returns_none_and_changes_nothing(any_store):
    meta = image_meta()
    first = any_store.put(meta, b"first")
    assert any_store.put({**meta, "decode_ms": 99.0}, b"second", code=b"code") is None
    assert any_store.get(meta["id"]) == first
    assert any_store.read_png(meta["id"]) == b"first"


def test_pages_walk_every_image_newest_first(any_store):
    ids = [any_store.put(image_meta(), b"png")["id"] for _ in range(7)]
    pages, before = [], None
    while True:
        items, before = any_store.page(3, before)
        pages.append([item["id"] for item in items])
        if before is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == ids[::-1]
    everything, end = any_store.page(50)
    assert [item["id"] for item in everything] == ids[::-1] and end is None
    assert set(everything[0]) >= set(COLUMNS)


# ---- cluster only ------------------------------------------------------------------------------------
def test_rows_carry_seq_as_the_cursor(cluster_store):
    rows = [cluster_store.put(image_meta(), b"png") for _ in range(5)]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    items, after = cluster_store.page(2)
    assert [i["seq"] for i in items] == [5, 4] and after == 4
    items, after = cluster_store.page(2, before=after)
    assert [i["seq"] for i in items] == [3, 2] and after == 2
    items, after = cluster_store.page(2, before=2.0)  # the API's cursor is a float
    assert [i["seq"] for i in items] == [1] and after is None
    assert cluster_store.page(2, before=1)[0] == []
    assert [i["seq"] for i in cluster_store.page(10, before=float("inf"))[0]] == [5, 4, 3, 2, 1]
    assert cluster_store.page(10, before=float("nan")) == ([], None)


def test_objects_land_under_the_prefix(make_store, s3_client, bucket):
    store = make_store(f"s3://{bucket}/site-a/")
    meta = image_meta()
    store.put(meta, b"png", code=b"code")
    store.put(image_meta(), b"png")  # no code: no code object
    image_id = meta["id"]
    keys = object_keys(s3_client, bucket)
    assert f"site-a/images/{image_id}.png" in keys and f"site-a/codes/{image_id}.lw" in keys
    assert len(keys) == 3 and all(k.startswith("site-a/") for k in keys)
    assert s3_client.get_object(Bucket=bucket, Key=f"site-a/codes/{image_id}.lw")["Body"].read() == b"code"


def test_replicas_see_each_others_images(make_store):
    a, b = make_store(), make_store()
    from_a = a.put(image_meta(), b"from a")
    from_b = b.put(image_meta(), b"from b")
    assert b.get(from_a["id"]) == from_a and a.get(from_b["id"]) == from_b
    assert a.read_png(from_b["id"]) == b"from b" and b.read_png(from_a["id"]) == b"from a"
    assert [i["id"] for i in a.page(10)[0]] == [i["id"] for i in b.page(10)[0]] == [from_b["id"], from_a["id"]]


def test_replicas_racing_on_one_id_store_it_once(make_store, database_url, s3_client, bucket):
    replicas = [make_store(), make_store()]
    for _ in range(5):
        meta = image_meta()
        barrier = threading.Barrier(2)
        results: list = [None, None]

        def put(k: int) -> None:
            barrier.wait()
            results[k] = replicas[k].put({**meta, "decode_ms": float(k)}, b"png", code=b"code")

        threads = [threading.Thread(target=put, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stored = [r for r in results if r is not None]
        assert len(stored) == 1 and results.count(None) == 1, results
        with psycopg.connect(database_url) as db:
            assert db.execute("SELECT count(*) FROM images WHERE id = %s", (meta["id"],)).fetchone() == (1,)
        assert replicas[0].get(meta["id"]) == stored[0]  # the winner's row, whichever it was
    assert len(object_keys(s3_client, bucket)) == 10  # one PNG and one code per id, nothing else


def test_replicas_opening_at_once_create_one_table_and_bucket(make_store, database_url):
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            make_store()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(database_url) as db:
        assert db.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'images'").fetchone() == (1,)


def test_blob_urls_are_checked(database_url):
    for bad in ("bucket", "http://bucket/x", "s3:///prefix", "s3://b?x=1"):
        with pytest.raises(ValueError, match="s3://bucket"):
            ClusterStore(database_url, bad)


# ---- outages -----------------------------------------------------------------------------------------
def test_postgres_down_is_named_and_recovers(cluster_store, postgres_server, s3_client, bucket):
    cluster_store.probe()
    kept = cluster_store.put(image_meta(), b"kept")
    with down(postgres_server):
        t0 = time.monotonic()
        with pytest.raises(StoreError) as info:
            cluster_store.probe()
        assert time.monotonic() - t0 < 5
        message = str(info.value)
        assert f"PostgreSQL at 127.0.0.1:{postgres_server.port} is unreachable" in message
        assert "S3" not in message
        with pytest.raises(StoreError, match="PostgreSQL"):
            cluster_store.put(image_meta(), b"lost")
        with pytest.raises(StoreError, match="PostgreSQL"):
            cluster_store.page(10)
    assert object_keys(s3_client, bucket) == {f"images/{kept['id']}.png"}  # the failed put wrote nothing
    cluster_store.probe()  # a fresh connection replaces the one the restart cut
    # Numbered after the kept one (PostgreSQL may skip sequence values across a restart: it logs them ahead).
    assert cluster_store.put(image_meta(), b"again")["seq"] > kept["seq"]
    assert cluster_store.read_png(kept["id"]) == b"kept"


def test_s3_down_is_named_and_recovers(cluster_store, s3_server, bucket):
    kept = cluster_store.put(image_meta(), b"kept")
    with down(s3_server):
        with pytest.raises(StoreError) as info:
            cluster_store.probe()
        message = str(info.value)
        assert f"the S3 bucket '{bucket}' at {s3_server.endpoint} is unreachable" in message
        assert "PostgreSQL" not in message
        lost = image_meta()
        with pytest.raises(StoreError, match="S3 bucket"):
            cluster_store.put(lost, b"lost")
        assert not cluster_store.contains(lost["id"])  # no row without its object
        with pytest.raises(StoreError, match="S3 bucket"):
            cluster_store.read_png(kept["id"])
        assert [i["id"] for i in cluster_store.page(10)[0]] == [kept["id"]]  # the index still answers
    cluster_store.probe()
    assert cluster_store.put(lost, b"stored now") is not None
    assert cluster_store.read_png(lost["id"]) == b"stored now"


def test_both_down_names_both(cluster_store, postgres_server, s3_server):
    with down(postgres_server), down(s3_server, kill=True):
        with pytest.raises(StoreError) as info:
            cluster_store.probe()
    assert "PostgreSQL at" in str(info.value) and "S3 bucket" in str(info.value)
    cluster_store.probe()


def test_a_row_the_database_refuses_leaves_no_object(cluster_store, s3_client, bucket):
    meta = image_meta(mode=None)  # NOT NULL: PostgreSQL answers with an error, so no row can exist
    with pytest.raises(StoreError, match=r"PostgreSQL at .* failed to store an image's row .*23502"):
        cluster_store.put(meta, b"png", code=b"code")
    assert not cluster_store.contains(meta["id"])
    assert object_keys(s3_client, bucket) == set()


def test_postgres_lost_after_the_upload_leaves_no_row_and_the_retry_stores_once(
        cluster_store, postgres_server, s3_client, bucket):
    """PostgreSQL goes away between the upload and the insert: no row; the objects stay (nobody can
    tell whether a row names them) but nothing lists or serves them, and the frame's retry
    stores it exactly once over the same keys."""
    meta = image_meta()
    events = cluster_store._s3.meta.events  # boto3's own hook: runs right after each real upload
    handler = lambda **_: postgres_server.stop()  # noqa: E731
    events.register_first("after-call.s3.PutObject", handler)
    try:
        with pytest.raises(StoreError, match="PostgreSQL at .* is unreachable"):
            cluster_store.put(meta, b"png", code=b"code")
    finally:
        events.unregister("after-call.s3.PutObject", handler)
        postgres_server.start()
    assert not cluster_store.contains(meta["id"]) and cluster_store.read_png(meta["id"]) is None
    assert cluster_store.page(10) == ([], None)
    row = cluster_store.put(meta, b"png", code=b"code")  # the broker redelivers the frame
    assert row is not None and cluster_store.read_png(meta["id"]) == b"png"
    assert object_keys(s3_client, bucket) == {f"images/{meta['id']}.png", f"codes/{meta['id']}.lw"}


def test_messages_never_show_the_database_password(bucket, s3_server):
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    store = ClusterStore(f"postgresql://latentwire:hunter2-secret@127.0.0.1:{dead}/x", f"s3://{bucket}",
                         endpoint_url=s3_server.endpoint, access_key=s3_server.access_key,
                         secret_key=s3_server.secret_key)
    with pytest.raises(StoreError) as info:
        store.open()
    assert f"PostgreSQL at 127.0.0.1:{dead}" in str(info.value)
    assert "hunter2" not in str(info.value) and "latentwire:" not in str(info.value)


def test_wrong_s3_credentials_are_named(make_store, s3_server):
    with pytest.raises(StoreError, match="refused the receiver's credentials"):
        make_store(secret_key="wrong-" + s3_server.secret_key)


def test_a_closed_store_refuses(cluster_store):
    cluster_store.close()
    with pytest.raises(StoreError, match="closed"):
        cluster_store.contains(secrets.token_hex(16))
