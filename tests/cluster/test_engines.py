"""The local servers of shared/tools/engines.py: each answers its real client, keeps its data through a
restart (clean or after SIGKILL), fails clearly when killed, and dies with the process that
started it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import botocore.exceptions
import nats
import psycopg
import pytest

from shared.tools.engines import EngineError, NatsServer
from tests.cluster.conftest import down

REPO = Path(__file__).resolve().parents[2]


def refuses(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# ---- NATS ---------------------------------------------------------------------------------------
async def publish(url: str, stream: str, payload: bytes) -> int:
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        ack = await js.publish(f"{stream}.one", payload)
        return ack.seq
    finally:
        await nc.close()


async def stored_message(url: str, stream: str, seq: int) -> bytes:
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        return (await nc.jetstream().get_msg(stream, seq)).data
    finally:
        await nc.close()


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-start"])
def test_nats_jetstream_message_survives(nats_server, kill):
    stream = f"T{int(kill)}{time.monotonic_ns()}"
    seq = asyncio.run(publish(nats_server.url, stream, b"frame-1"))
    assert seq == 1
    port = nats_server.port
    with down(nats_server, kill=kill):
        assert refuses(port)  # (nats-py's first connect retries for minutes, so no client is asked)
    assert nats_server.port == port and nats_server.url == f"nats://127.0.0.1:{port}"
    assert asyncio.run(stored_message(nats_server.url, stream, 1)) == b"frame-1"


# ---- PostgreSQL -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-start"])
def test_postgres_row_survives(postgres_server, database_url, kill):
    with psycopg.connect(database_url, autocommit=True) as db:
        assert db.execute("SELECT 1").fetchone() == (1,)
        db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
        db.execute("INSERT INTO t VALUES ('kept')")
    with down(postgres_server, kill=kill):
        with pytest.raises(psycopg.OperationalError, match="Connection refused"):
            psycopg.connect(database_url, connect_timeout=2)
    with psycopg.connect(database_url) as db:
        assert db.execute("SELECT k FROM t").fetchall() == [("kept",)]


def test_postgres_url_names_its_user_and_database(postgres_server):
    assert postgres_server.url == f"postgresql://latentwire@127.0.0.1:{postgres_server.port}/latentwire"
    with psycopg.connect(postgres_server.url) as db:
        assert db.execute("SELECT current_user, current_database()").fetchone() == ("latentwire", "latentwire")


# ---- S3 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-start"])
def test_s3_object_survives(s3_server, s3_client, bucket, kill):
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_object(Bucket=bucket, Key="images/a.png", Body=b"\x89PNG kept")
    assert s3_client.get_object(Bucket=bucket, Key="images/a.png")["Body"].read() == b"\x89PNG kept"
    with down(s3_server, kill=kill):
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            s3_client.head_bucket(Bucket=bucket)
    assert s3_client.get_object(Bucket=bucket, Key="images/a.png")["Body"].read() == b"\x89PNG kept"


def test_s3_refuses_a_wrong_secret(s3_server, s3_client):
    stranger = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                            aws_secret_access_key="not-" + s3_server.secret_key, region_name="us-east-1")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        stranger.list_buckets()
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    s3_client.list_buckets()  # the configured identity still gets in


# ---- lifecycle --------------------------------------------------------------------------------------
def test_a_server_that_cannot_start_says_why(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path / "nats", port=taken.getsockname()[1])
        with pytest.raises(EngineError) as info:
            server.start()
    message = str(info.value)
    assert f"port {server.port}" in message and str(server.log_path) in message
    assert "address already in use" in message  # the log's own words, not just "failed"
    assert not server.running


def test_context_manager_stops_the_server(tmp_path):
    with NatsServer(tmp_path / "nats") as server:
        assert server.running and not refuses(server.port)
    assert not server.running and refuses(server.port)
    server.stop()  # twice is harmless


def test_servers_die_with_the_process_that_started_them(tmp_path):
    """SIGKILL the Python process that started a server: the server goes too (parent-death signal)."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from shared.tools.engines import NatsServer
        server = NatsServer(Path({str(tmp_path / 'nats')!r})).start()
        print(server.port, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        port = int(parent.stdout.readline())
        assert not refuses(port)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 5
    while not refuses(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refuses(port), "nats-server outlived the process that started it"
