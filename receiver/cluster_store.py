"""Cluster mode's store: the image index in PostgreSQL, the objects in S3-compatible storage, shared
by every receiver replica. A drop-in for ``receiver.store.Store`` (same methods, same answers).

    s3://BUCKET/PREFIX images/<id>.png     the reconstruction
    s3://BUCKET/PREFIX codes/<id>.lw       the received bitstream, when ``put`` is given one
    PostgreSQL table images                one row per image: store.py's COLUMNS, plus seq (the
                                           list cursor) and png_key / code_key (its objects)

Write order: the objects first, then the row (``INSERT ... ON CONFLICT (id) DO NOTHING``), so a
listed image can always be served. When replicas race to store one frame id after a redelivery,
exactly one row results and the other ``put`` returns None; both wrote the same frame's objects
under the same keys. A failed ``put`` deletes its objects only when PostgreSQL confirms that no
row names them. Without PostgreSQL that cannot be known (a racing ``put``, or this one just before
its connection died, may have stored the row), so they stay: invisible without a row, and
overwritten by the frame's retry. An object without a row may exist; a row without its object not.

``seq`` (BIGINT identity) is the pagination cursor: ``received_at`` comes from the database's clock
and is not strictly increasing across replicas. ``page(before=next)`` pages by seq, newest first.

Failures: every psycopg / botocore error becomes StoreError (StoreFull for a full disk or quota)
naming the dependency that failed, where it is, and what to do. Deadlines are short, so an outage
shows within seconds: PostgreSQL connect 3 s, statements 10 s, TCP keepalive ~10 s; S3 connect 2 s,
read 5 s, one retry.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from shared.errors import StoreError, StoreFull
from shared.wire import check_image_id
from receiver.store import COLUMNS

log = logging.getLogger("latentwire.receiver")

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id            TEXT PRIMARY KEY,      -- 32 lowercase hex digits, the sender's frame id
    seq           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,  -- the list cursor, across replicas
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    stream_bytes  INTEGER NOT NULL,      -- size of the .lw bitstream container
    bpp           DOUBLE PRECISION NOT NULL,
    quality       DOUBLE PRECISION NOT NULL,
    model         TEXT NOT NULL,
    weights       TEXT NOT NULL,
    sent_at       DOUBLE PRECISION NOT NULL,  -- sender's UNIX time when it queued the frame
    received_at   DOUBLE PRECISION NOT NULL,  -- the database's UNIX time when the row was inserted
    decode_ms     DOUBLE PRECISION NOT NULL,
    mode          TEXT NOT NULL DEFAULT 'standard',
    coded_height  INTEGER,
    coded_width   INTEGER,
    png_key       TEXT NOT NULL,         -- the reconstruction's object key in the bucket
    code_key      TEXT                   -- the received bitstream's object key; NULL: not kept
)
"""
_SCHEMA_LOCK = 0x6C77_0001  # pg_advisory_xact_lock key: replicas opening at once create the table once
_FIELDS = ", ".join((*COLUMNS, "seq"))  # what every read returns
_INSERTED = [c for c in COLUMNS if c != "received_at"]
_INSERT = (f"INSERT INTO images ({', '.join(_INSERTED)}, received_at, png_key, code_key) "
           f"VALUES ({', '.join(f'%({c})s' for c in _INSERTED)}, "
           "EXTRACT(EPOCH FROM clock_timestamp())::double precision, %(png_key)s, %(code_key)s) "
           f"ON CONFLICT (id) DO NOTHING RETURNING {_FIELDS}")
_MAX_SEQ = 2**63 - 1
# PostgreSQL connection defaults (a database URL that sets one wins): notice a dead server in seconds
_PG_DEFAULTS = {"connect_timeout": "3", "keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
                "keepalives_count": "2", "tcp_user_timeout": "10000", "application_name": "latentwire-receiver"}
_STATEMENT_TIMEOUT = "10s"
_S3_FULL = {"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "StorageFull", "EntityTooLarge"}
_S3_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_RETRY = "the sender should keep the frame and retry later"
T = TypeVar("T")


class ClusterStore:
    """Thread-safe: one PostgreSQL connection behind a lock (reconnected after a failure), one boto3
    client (thread-safe itself), so S3 transfers of several threads overlap."""

    def __init__(self, database_url: str, blob_url: str, *, endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str = "us-east-1") -> None:
        self.bucket, self.prefix = _parse_blob_url(blob_url)
        try:
            params = conninfo_to_dict(database_url)
        except psycopg.Error as exc:
            raise ValueError("the database URL is not a PostgreSQL connection string "
                             "(postgresql://user[:password]@host[:port]/database)") from exc
        self._conninfo = {**_PG_DEFAULTS, **params}
        host, port = params.get("host") or "localhost", params.get("port") or "5432"
        self.database_where = f"PostgreSQL at {host}:{port}"  # no user or password: messages are shown at /readyz
        self.blob_where = f"the S3 bucket '{self.bucket}' at {endpoint_url or f'AWS S3 ({region})'}"
        self._endpoint_url, self._region = endpoint_url, region
        self._access_key, self._secret_key = access_key, secret_key
        self._lock = threading.Lock()
        self._db: psycopg.Connection | None = None
        self._s3 = None
        self._open = False
        self._probe_key = f"{self.prefix}probes/{secrets.token_hex(8)}"  # one per replica, deleted each probe

    # ---- lifecycle -----------------------------------------------------------------------
    def open(self) -> "ClusterStore":
        """Connect to both, create the table and the bucket if missing (safe with replicas opening at once)."""
        self._s3 = boto3.session.Session().client(
            "s3", endpoint_url=self._endpoint_url, region_name=self._region,
            aws_access_key_id=self._access_key, aws_secret_access_key=self._secret_key,  # None: boto3's chain
            config=botocore.config.Config(
                connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"},
                # path-style URLs and checksums only where required: what S3-compatible stores accept
                s3={"addressing_style": "path"} if self._endpoint_url else None,
                request_checksum_calculation="when_required", response_checksum_validation="when_required"))
        self._open = True
        try:
            self._with_db("create its index table", _create_schema)
            self._ensure_bucket()
        except StoreError:
            self.close()
            raise
        return self

    def close(self) -> None:
        with self._lock:
            self._open = False
            self._drop_connection()
            if self._s3 is not None:
                self._s3.close()
                self._s3 = None

    # ---- reads ---------------------------------------------------------------------------
    def contains(self, image_id: str) -> bool:
        check_image_id(image_id)
        return bool(self._with_db("read its index", lambda db: db.execute(
            "SELECT 1 FROM images WHERE id = %s", (image_id,)).fetchone()))

    def get(self, image_id: str) -> dict | None:
        check_image_id(image_id)
        return self._with_db("read its index", lambda db: db.execute(
            f"SELECT {_FIELDS} FROM images WHERE id = %s", (image_id,)).fetchone())

    def page(self, limit: int, before: float | None = None) -> tuple[list[dict], int | None]:
        """Newest first; ``next`` is the cursor (a seq) for the following page, or None at the end."""
        where, args = ("WHERE seq < %s ", [_seq_bound(before)]) if before is not None else ("", [])
        sql = f"SELECT {_FIELDS} FROM images {where}ORDER BY seq DESC LIMIT %s"
        rows = self._with_db("read its index", lambda db: db.execute(sql, (*args, limit + 1)).fetchall())
        items = rows[:limit]
        return items, (items[-1]["seq"] if len(rows) > limit else None)

    def read_png(self, image_id: str) -> bytes | None:
        """The stored reconstruction's bytes, or None if no image has that id."""
        check_image_id(image_id)
        row = self._with_db("read its index", lambda db: db.execute(
            "SELECT png_key FROM images WHERE id = %s", (image_id,)).fetchone())
        if row is None:
            return None
        try:
            return self._client().get_object(Bucket=self.bucket, Key=row["png_key"])["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if _s3_code(exc) == "NoSuchKey":
                raise StoreError(f"{self.blob_where} has no object {row['png_key']} although the index lists "
                                 f"image {image_id}: the operator must restore the object from a backup") from exc
            raise self._s3_error(exc, "read an image") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._s3_error(exc, "read an image") from exc

    # ---- writes --------------------------------------------------------------------------
    def put(self, meta: dict, png: bytes, code: bytes | None = None) -> dict | None:
        """Store one image (and its received bitstream ``code``, if given); returns its row
        (received_at and seq set), or None if the id is already stored."""
        image_id = check_image_id(meta["id"])
        if self.contains(image_id):  # the common duplicate costs no upload
            return None
        keys = {"png_key": f"{self.prefix}images/{image_id}.png",
                "code_key": f"{self.prefix}codes/{image_id}.lw" if code is not None else None}
        try:
            self._upload([(keys["png_key"], png), (keys["code_key"], code)])
        except StoreError:
            self._discard(image_id, keys.values())
            raise
        row = {**{c: meta.get(c) for c in _INSERTED}, **keys}
        try:
            # None: another put stored this id since the check above; its row names these same objects
            return self._with_db("store an image's row in its index", lambda db: db.execute(_INSERT, row).fetchone())
        except StoreError:
            self._discard(image_id, keys.values())
            raise

    def probe(self) -> None:
        """Raise StoreError unless PostgreSQL answers and an object can be written and deleted;
        the message names what is down (both, when both are)."""
        problems: list[StoreError] = []
        try:
            self._with_db("answer a readiness probe", lambda db: db.execute("SELECT 1").fetchone())
        except StoreError as exc:
            problems.append(exc)
        try:
            self._client().put_object(Bucket=self.bucket, Key=self._probe_key, Body=b"probe")
            self._client().delete_object(Bucket=self.bucket, Key=self._probe_key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            problems.append(self._s3_error(exc, "write a probe object"))
        except StoreError as exc:
            problems.append(exc)
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise StoreError("; and ".join(str(p) for p in problems))

    # ---- PostgreSQL ----------------------------------------------------------------------
    def _with_db(self, action: str, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(connection)`` under the lock. A connection that turns out dead (the server restarted
        since its last use) is replaced and ``work`` runs once more; ``work`` must allow that."""
        with self._lock:
            retried = False
            while True:
                reused = self._db is not None
                db = self._connection(action)
                try:
                    return work(db)
                except psycopg.Error as exc:
                    lost = db.closed or db.broken
                    if lost:
                        self._drop_connection()
                    if lost and reused and not retried:
                        retried = True
                        continue
                    raise self._pg_error(exc, action) from exc

    def _connection(self, action: str) -> psycopg.Connection:
        if not self._open:
            raise StoreError("the store is closed: the receiver is shutting down; retry shortly")
        if self._db is not None:
            return self._db
        try:
            db = psycopg.connect(**self._conninfo, autocommit=True, row_factory=dict_row)
            db.execute(f"SET statement_timeout = '{_STATEMENT_TIMEOUT}'")
        except psycopg.Error as exc:
            raise self._pg_error(exc, action) from exc
        self._db = db
        return db

    def _drop_connection(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except psycopg.Error:
                pass

    def _pg_error(self, exc: psycopg.Error, action: str) -> StoreError:
        state = exc.sqlstate or ""
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if state == "53100":
            return StoreFull(f"{self.database_where} is out of disk space while trying to {action}: the operator "
                             f"must free space on the database server; {_RETRY}")
        if state.startswith("28"):
            return StoreError(f"{self.database_where} refused the receiver's login ({reason}): the operator must "
                              f"fix the user or password in the receiver's database URL; {_RETRY}")
        if state == "3D000":
            return StoreError(f"{self.database_where} has no such database ({reason}): the operator must create "
                              f"it or fix the receiver's database URL; {_RETRY}")
        if (isinstance(exc, psycopg.OperationalError) and not state) or state.startswith(("08", "57P")):
            return StoreError(f"{self.database_where} is unreachable ({reason}): the operator must start it or "
                              f"fix the receiver's database URL; {_RETRY}")
        return StoreError(f"{self.database_where} failed to {action} ({state or type(exc).__name__}: {reason}): "
                          f"the operator should check the database's log; {_RETRY}")

    # ---- S3 ------------------------------------------------------------------------------
    def _client(self):
        if self._s3 is None:
            raise StoreError("the store is closed: the receiver is shutting down; retry shortly")
        return self._s3

    def _ensure_bucket(self) -> None:
        s3 = self._client()
        try:
            s3.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError as exc:
            if _s3_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._s3_error(exc, "open its bucket") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._s3_error(exc, "open its bucket") from exc
        where = {} if self._region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": self._region}}
        try:
            s3.create_bucket(Bucket=self.bucket, **where)
        except botocore.exceptions.ClientError as exc:
            if _s3_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._s3_error(exc, "create its bucket") from exc
            try:  # another replica created it a moment ago, or a stranger owns the name: can we use it?
                s3.head_bucket(Bucket=self.bucket)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as again:
                raise self._s3_error(again, "open its bucket") from again
        except botocore.exceptions.BotoCoreError as exc:
            raise self._s3_error(exc, "create its bucket") from exc

    def _upload(self, objects: list[tuple[str | None, bytes | None]]) -> None:
        """Put each (key, body) that has a key."""
        try:
            for key, body in objects:
                if key is not None:
                    self._client().put_object(Bucket=self.bucket, Key=key, Body=body)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._s3_error(exc, "write an image") from exc

    def _discard(self, image_id: str, keys) -> None:
        """After a failed put: delete its objects unless a row (or, for all we know, one) names them."""
        try:
            if self.contains(image_id):
                return
        except StoreError as exc:
            log.warning("kept the objects of image %s: cannot tell whether a row names them (%s)", image_id, exc)
            return
        self._delete(keys)

    def _delete(self, keys) -> None:
        """Best effort: an object left behind is invisible (no row names it)."""
        for key in keys:
            if key is None:
                continue
            try:
                self._client().delete_object(Bucket=self.bucket, Key=key)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, StoreError) as exc:
                log.warning("could not delete object %s from %s: %s", key, self.blob_where, exc)

    def _s3_error(self, exc: Exception, action: str) -> StoreError:
        if isinstance(exc, botocore.exceptions.ClientError):
            code = _s3_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _S3_FULL or status == 507:
                return StoreFull(f"{self.blob_where} is full while trying to {action} ({code}): the operator must "
                                 f"free space or raise its quota; {_RETRY}")
            if code in _S3_DENIED or status == 403:
                return StoreError(f"{self.blob_where} refused the receiver's credentials ({code}): the operator "
                                  f"must fix the access key and secret, or the bucket's policy; {_RETRY}")
            if code == "NoSuchBucket":
                return StoreError(f"{self.blob_where} does not exist ({code}): the operator must create it, or "
                                  f"restart a receiver, which creates it; {_RETRY}")
            return StoreError(f"{self.blob_where} failed to {action} ({code}, HTTP {status}): the operator should "
                              f"check the object store's log; {_RETRY}")
        if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
            return StoreError(f"no credentials for {self.blob_where}: the operator must give the receiver an "
                              f"access key and secret (its settings, or AWS_ACCESS_KEY_ID / "
                              f"AWS_SECRET_ACCESS_KEY); {_RETRY}")
        if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
            return StoreError(f"{self.blob_where} is unreachable ({type(exc).__name__}): the operator must start "
                              f"it or fix the receiver's S3 endpoint; {_RETRY}")
        return StoreError(f"{self.blob_where} failed to {action} ({type(exc).__name__}: {exc}): the operator "
                          f"should check the receiver's S3 settings; {_RETRY}")


def _create_schema(db: psycopg.Connection) -> None:
    with db.transaction():
        # CREATE TABLE IF NOT EXISTS alone races: two replicas can both find no table and collide
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        db.execute(SCHEMA)


def _parse_blob_url(blob_url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, "prefix/" or "")."""
    parts = urlsplit(blob_url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"the blob URL must look like s3://bucket or s3://bucket/prefix, not {blob_url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _s3_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _seq_bound(before: float) -> int:
    """``seq < before`` as a whole number (seq < ceil(before)), within BIGINT; NaN matches nothing."""
    if math.isnan(before):
        return 0
    if math.isinf(before):
        return _MAX_SEQ if before > 0 else 0
    return max(0, min(math.ceil(before), _MAX_SEQ))
