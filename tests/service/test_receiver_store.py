"""The receiver's store under faults: unwritable store (503), full disk (507), a failing index
insert, restarts. Whatever fails leaves nothing half-written, and the service keeps serving."""

from __future__ import annotations

import errno
import os
import sqlite3

import pytest

from receiver.app import create_app
from tests.service.conftest import TestClient, receiver_post


def _files(settings) -> list[str]:
    return sorted(os.listdir(settings.store_dir / "images"))


def test_unwritable_store_is_503_then_recovers(receiver_client, receiver_frames, receiver_settings):
    # Tests may run as root, where chmod does not stop writes: put a file where the folder was.
    images = receiver_settings.store_dir / "images"
    moved = receiver_settings.store_dir / "images.away"
    images.rename(moved)
    images.write_bytes(b"not a folder")
    body, (image_id,) = receiver_frames.body()
    r = receiver_post(receiver_client, body)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "StoreError"
    assert r.headers["retry-after"] == "5"  # StoreError.retry_after_s: the sender waits, then resends
    assert str(receiver_settings.store_dir) not in r.text  # no paths in answers
    ready = receiver_client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable" and ready.json()["reasons"]
    assert receiver_client.get("/v1/images").json()["items"] == []
    assert receiver_client.get(f"/v1/images/{image_id}").status_code == 404

    images.unlink()
    moved.rename(images)
    assert os.listdir(images) == []  # no tmp file left behind
    assert receiver_post(receiver_client, body).json()["results"] == [{"id": image_id, "status": "stored"}]
    assert receiver_client.get("/readyz").status_code == 200
    assert _files(receiver_settings) == [f"{image_id}.png"]


def test_disk_full_is_507_and_leaves_no_tmp_file(receiver_client, receiver_frames, receiver_settings, monkeypatch):
    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    body, (image_id,) = receiver_frames.body()
    r = receiver_post(receiver_client, body)
    assert r.status_code == 507, r.text
    assert r.json()["error"] == "StoreFull"
    assert r.headers["retry-after"] == "60"  # StoreFull.retry_after_s: freeing disk takes a person
    assert _files(receiver_settings) == []
    assert receiver_client.get("/v1/images").json()["items"] == []
    assert 'latentwire_receiver_errors_total{code="StoreFull"} 1.0' in receiver_client.get("/metrics").text

    monkeypatch.setattr(os, "replace", real_replace)
    assert receiver_post(receiver_client, body).json()["results"][0]["status"] == "stored"
    assert _files(receiver_settings) == [f"{image_id}.png"]


@pytest.mark.parametrize("code, status, error", [(sqlite3.SQLITE_FULL, 507, "StoreFull"),
                                                 (sqlite3.SQLITE_READONLY, 503, "StoreError")])
def test_failed_index_insert_removes_the_png(receiver_client, receiver_frames, receiver_settings, monkeypatch,
                                             code, status, error):
    from receiver.store import Store

    real_connection = Store._connection

    class FailingInsert:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            if sql.startswith("INSERT"):
                exc = sqlite3.OperationalError("database or disk is full" if code == sqlite3.SQLITE_FULL
                                               else "attempt to write a readonly database")
                exc.sqlite_errorcode = code
                raise exc
            return self.db.execute(sql, *args)

    monkeypatch.setattr(Store, "_connection", lambda self: FailingInsert(real_connection(self)))
    body, _ = receiver_frames.body()
    r = receiver_post(receiver_client, body)
    assert r.status_code == status and r.json()["error"] == error, r.text
    assert r.headers["retry-after"] == {507: "60", 503: "5"}[status]
    assert _files(receiver_settings) == []
    monkeypatch.setattr(Store, "_connection", real_connection)
    assert receiver_client.get("/v1/images").json()["items"] == []
    assert receiver_post(receiver_client, body).json()["results"][0]["status"] == "stored"


def test_store_survives_a_restart(receiver_settings, receiver_frames):
    body, ids = receiver_frames.body(n=2)
    with TestClient(create_app(receiver_settings)) as client:
        assert receiver_post(client, body).status_code == 200
        before = client.get("/v1/images").json()["items"]
    with TestClient(create_app(receiver_settings)) as client:  # a new app on the same store
        assert client.get("/v1/images").json()["items"] == before
        assert client.get(f"/v1/images/{ids[0]}.png").status_code == 200
        statuses = [x["status"] for x in receiver_post(client, body).json()["results"]]
        assert statuses == ["duplicate", "duplicate"]
        newer, (new_id,) = receiver_frames.body()
        receiver_post(client, newer)
        items = client.get("/v1/images").json()["items"]
        assert items[0]["id"] == new_id and items[0]["received_at"] > before[0]["received_at"]


def test_stale_tmp_files_are_removed_at_startup(receiver_settings, receiver_frames):
    images = receiver_settings.store_dir / "images"
    images.mkdir(parents=True)
    (images / ".0123.abc.tmp").write_bytes(b"half a png")  # what a crash mid-write leaves
    with TestClient(create_app(receiver_settings)) as client:
        assert client.get("/readyz").status_code == 200
    assert os.listdir(images) == []


# The index as receivers with store schema 1 wrote it (an always-NULL psnr; no mode, no coded size).
_SCHEMA_1 = """
CREATE TABLE images (id TEXT PRIMARY KEY, width INTEGER NOT NULL, height INTEGER NOT NULL,
    stream_bytes INTEGER NOT NULL, bpp REAL NOT NULL, quality REAL NOT NULL, model TEXT NOT NULL,
    weights TEXT NOT NULL, sent_at REAL NOT NULL, received_at REAL NOT NULL, decode_ms REAL NOT NULL, psnr REAL);
CREATE INDEX images_received_at ON images (received_at);
PRAGMA user_version=1;
"""


def test_a_schema_1_index_is_migrated_in_place(receiver_settings, receiver_frames):
    store = receiver_settings.store_dir
    (store / "images").mkdir(parents=True)
    old = {"a" * 32: "lw-vr-denoise", "b" * 32: "lw-vr-hyperprior"}
    with sqlite3.connect(store / "index.sqlite3") as db:
        db.executescript(_SCHEMA_1)
        for k, (image_id, model) in enumerate(old.items()):
            db.execute("INSERT INTO images VALUES (?, 40, 30, 150, 1.0, 0.5, ?, '0123456789abcdef', ?, ?, 2.5, NULL)",
                       (image_id, model, 1000.0 + k, 1001.0 + k))
            (store / "images" / f"{image_id}.png").write_bytes(b"png")
    db.close()
    with TestClient(create_app(receiver_settings)) as client:
        body, (new_id,) = receiver_frames.body()
        assert receiver_post(client, body).status_code == 200
        items = client.get("/v1/images").json()["items"]
    assert [item["id"] for item in items] == [new_id, "b" * 32, "a" * 32]
    assert [item["mode"] for item in items] == ["standard", "standard", "denoise"]  # from the model name
    assert all((item["coded_width"], item["coded_height"]) == (40, 30) and "psnr" not in item for item in items)
    with sqlite3.connect(store / "index.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        columns = [row[1] for row in db.execute("PRAGMA table_info(images)")]
    db.close()
    assert "psnr" not in columns and {"mode", "coded_height", "coded_width"} <= set(columns)


def test_an_index_of_a_newer_schema_is_refused(tmp_path):
    from receiver.store import Store
    from shared.errors import StoreError

    (tmp_path / "store").mkdir()
    with sqlite3.connect(tmp_path / "store" / "index.sqlite3") as db:
        db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="schema 99; this receiver reads schemas 1 to 2"):
        Store(tmp_path / "store").open()
