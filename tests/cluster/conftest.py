"""Cluster-tier fixtures: NATS (JetStream), PostgreSQL and SeaweedFS's S3 gateway as real processes
on loopback (shared/tools/engines.py), started once per session, plus a fresh database and bucket per
test so tests never see each other's rows or objects.

A test that stops or kills a session server brings it back with ``down(server)``, so the tests
after it find every server running."""

from __future__ import annotations

import contextlib
import secrets
import time

import boto3
import botocore.config
import psycopg
import pytest

from receiver.cluster_store import ClusterStore
from shared.tools.engines import NatsServer, PostgresServer, S3Server


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@contextlib.contextmanager
def down(server, *, kill: bool = False):
    """``server`` stopped (or killed) inside the block, running again after it, whatever happens."""
    server.kill() if kill else server.stop()
    try:
        yield server
    finally:
        server.start()


@pytest.fixture
def database_url(postgres_server) -> str:
    """A new, empty database on the session's PostgreSQL."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server.url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return postgres_server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def bucket() -> str:
    """A bucket name no other test uses (ClusterStore.open creates it)."""
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture
def s3_client(s3_server):
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                          aws_secret_access_key=s3_server.secret_key, region_name="us-east-1",
                          config=botocore.config.Config(connect_timeout=2, read_timeout=5,
                                                        retries={"max_attempts": 2}))
    yield client
    client.close()


@pytest.fixture
def make_store(database_url, bucket, s3_server):
    """``make_store()``: an opened ClusterStore on this test's database and bucket (another replica
    each call); all are closed after the test."""
    stores: list[ClusterStore] = []

    def make(blob_url: str | None = None, **overrides) -> ClusterStore:
        kwargs = {"endpoint_url": s3_server.endpoint, "access_key": s3_server.access_key,
                  "secret_key": s3_server.secret_key, **overrides}
        store = ClusterStore(database_url, blob_url or f"s3://{bucket}", **kwargs)
        stores.append(store)
        return store.open()

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def cluster_store(make_store) -> ClusterStore:
    return make_store()


def object_keys(client, bucket: str) -> set[str]:
    page = client.list_objects_v2(Bucket=bucket)
    return {o["Key"] for o in page.get("Contents", [])}


def image_meta(image_id: str | None = None, **overrides) -> dict:
    """What the decoder hands Store.put for one image (received_at is the store's to set)."""
    return {"id": secrets.token_hex(16) if image_id is None else image_id, "width": 97, "height": 71,
            "stream_bytes": 812, "bpp": 812 * 8 / (97 * 71), "quality": 0.5, "model": "lw-tiny", "weights": "0123abcd",
            "sent_at": time.time() - 0.25, "decode_ms": 12.5, "mode": "standard", "coded_height": None,
            "coded_width": None, **overrides}
