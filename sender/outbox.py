"""The outbox: every accepted image's bitstream and status, durable before the upload is answered.

One SQLite file, ``<data_dir>/outbox.sqlite3``, in WAL mode with ``synchronous=FULL``, so a
commit is fsync'd before ``add`` returns: a sender killed with SIGKILL right after its 202 still
holds the frame and delivers it when it starts again. A frame's life::

    add() ─> queued ──POST 200 stored/duplicate──> delivered  (stream dropped, numbers kept)
               │  ▲
               │  └── transient failure: attempts+1, next_attempt_at = now + backoff
               ├───── permanent 4xx ───────────────> failed     (receiver's error kept)
               └───── a newer upload with the same ─> superseded (stream dropped, numbers kept,
                      supersede key, while this one              superseded_by = the newer frame)
                      is not in flight

Superseding (``supersede=<key>`` on an upload, for live feeds): in the transaction that queues the
new frames, every older queued frame with the same key that may not have reached the receiver
yet becomes ``superseded``: it is in no batch the delivery worker is sending now (``due``
marks a batch in flight until the worker calls ``release`` with its ids), and either no POST has carried it
yet or the receiver answered its last one with an error status (so it did not store it). A frame
whose last POST timed out or lost its connection may be stored at the receiver: it is kept and
sent again. Frames of the same upload never supersede each other.

Schema 2 added ``noise`` and ``cleaned`` (clean first) and ``coded_height`` / ``coded_width``
(shared/resolution.py). Schema 3 added ``budget``: how ``quality=auto`` chose the
frame's byte budget (sender/link.py). Schema 4 added the status ``superseded`` (a CHECK
constraint, so the table is rebuilt: SQLite cannot alter one), ``stream_key`` and
``superseded_by`` (superseding) and ``max_bytes`` (the byte budget the frame was encoded with,
from the upload or from quality=auto). An older outbox is migrated in place, step by step, when
the sender opens it (``shared/service/migrations.py``): its frames get NULL, 0, NULL and NULL
(nothing was estimated; coded at their own size; no auto budget), then NULL for the three new
columns (no key, not superseded, no budget recorded). Schema 5 added ``source``: a quality=auto
frame's uploaded file, kept while it is queued so that a rate drop can have it coded again at a
smaller budget (``replace_stream``, sender/replan.py); dropped with the stream, and on failure.
Older frames get NULL: they are sent as they are.

All database work runs on one dedicated thread (sqlite3 calls block, and a commit waits for the
disk): the event loop only awaits it. One thread also means one connection and no lock contention
inside this process; a second sender on the same data_dir is refused by ``sender.lock``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sender.errors import OutboxError, OutboxFull
from shared.service.migrations import migrate

SCHEMA_VERSION = 5
STATUSES = ("queued", "delivered", "failed", "superseded")

_SOURCE_COLUMN = """\
    source          BLOB,                       -- quality=auto: the uploaded file while queued (re-plans); else NULL
"""
_TABLE = """
CREATE TABLE IF NOT EXISTS frames (
    id              TEXT PRIMARY KEY,           -- 32 lowercase hex, the wire frame id
    created_at      REAL NOT NULL,              -- UNIX s when queued; the wire's sent_at
    status          TEXT NOT NULL CHECK (status IN ('queued', 'delivered', 'failed', 'superseded')),
    stream          BLOB,                       -- the .lw container; NULL once delivered or superseded
    filename        TEXT NOT NULL,
    mode            TEXT NOT NULL,
    width           INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    original_bytes  INTEGER NOT NULL,           -- size of the uploaded file
    bytes           INTEGER NOT NULL,           -- size of the stream on the wire
    bpp             REAL NOT NULL,
    psnr            REAL,                       -- NULL when lossless (infinite)
    quality         REAL NOT NULL,
    jpeg            TEXT,                       -- JSON {"bytes","psnr","quality","fits"}; NULL: preview=false
    noise           REAL,                       -- clean first: the upload's noise estimate (rms grey levels)
    cleaned         INTEGER NOT NULL DEFAULT 0, -- 1: the stream codes the denoiser's reconstruction
    coded_height    INTEGER,                    -- the reduced size it was coded at; NULL: height x width
    coded_width     INTEGER,
    budget          TEXT,                       -- JSON sender.link.Budget; NULL: not quality=auto
    max_bytes       INTEGER,                    -- the byte budget it was encoded with; NULL: a quality upload
    source          BLOB,                       -- quality=auto: the uploaded file while queued (re-plans); else NULL
    stream_key      TEXT,                       -- supersede=<key> of its upload; NULL: none
    superseded_by   TEXT,                       -- the newer frame that superseded it
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,                       -- JSON {"error","message",("http_status")}
    delivered_at    REAL,
    receiver_status TEXT                        -- "stored" | "duplicate"; cluster mode "published" | "duplicate"
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS frames_due ON frames (next_attempt_at) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS frames_created ON frames (created_at);
CREATE INDEX IF NOT EXISTS frames_stream_key ON frames (stream_key) WHERE status = 'queued';
"""
_SCHEMA = _TABLE + _INDEXES
_TABLE_V4 = _TABLE.replace(_SOURCE_COLUMN, "")  # what migration 3 built: schema 5 adds the column after it
# No POST has carried the frame, or the receiver answered its last one with an error status: the
# receiver did not store it, so it may be superseded or coded again (a timed-out POST may have stored it).
_NOT_STORED = "(attempts = 0 OR json_extract(last_error, '$.http_status') IS NOT NULL)"
_V3_COLUMNS = ("id, created_at, status, stream, filename, mode, width, height, original_bytes, bytes, bpp, psnr, "
               "quality, jpeg, noise, cleaned, coded_height, coded_width, budget, attempts, next_attempt_at, "
               "last_error, delivered_at, receiver_status")
# schema version -> the statements that take an outbox of that version to the next one.
_MIGRATIONS = {
    1: ("ALTER TABLE frames ADD COLUMN noise REAL",
        "ALTER TABLE frames ADD COLUMN cleaned INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE frames ADD COLUMN coded_height INTEGER",
        "ALTER TABLE frames ADD COLUMN coded_width INTEGER"),
    2: ("ALTER TABLE frames ADD COLUMN budget TEXT",),
    # SQLite's way to change a CHECK constraint: a new table, the rows copied, the old one dropped.
    3: (_TABLE_V4.replace("EXISTS frames (", "EXISTS frames_v4 ("),
        f"INSERT INTO frames_v4 ({_V3_COLUMNS}) SELECT {_V3_COLUMNS} FROM frames",
        "DROP TABLE frames",
        "ALTER TABLE frames_v4 RENAME TO frames",
        *filter(None, (line.strip() for line in _INDEXES.splitlines()))),
    4: ("ALTER TABLE frames ADD COLUMN source BLOB",),
}


@dataclass(frozen=True)
class NewFrame:
    """An encoded image ready to be queued."""

    id: str
    created_at: float
    stream: bytes
    filename: str
    mode: str
    width: int
    height: int
    original_bytes: int
    nbytes: int
    bpp: float
    psnr: float | None
    quality: float
    jpeg: dict | None
    noise: float | None  # clean first (shared/clean_first.py): the noise estimate; None for other models
    cleaned: bool  # the stream codes the denoiser's own reconstruction rather than the upload
    coded_size: tuple[int, int] | None  # (height, width) it was coded at when smaller than its own
    budget: dict | None = None  # quality=auto: sender.link.Budget.to_dict(); None otherwise
    max_bytes: int | None = None  # the byte budget it was encoded with (max_bytes or quality=auto)
    stream_key: str | None = None  # supersede=<key>: older queued frames with this key are superseded
    source: bytes | None = None  # quality=auto: the uploaded file, for a re-plan (module docstring)


@dataclass(frozen=True)
class NewStream:
    """A queued frame coded again (sender/replan.py): what ``replace_stream`` writes."""

    stream: bytes
    nbytes: int
    bpp: float
    psnr: float | None
    quality: float
    jpeg: dict | None
    noise: float | None
    cleaned: bool
    coded_size: tuple[int, int] | None
    budget: dict
    max_bytes: int


@dataclass(frozen=True)
class PendingFrame:
    """What the delivery worker needs to send one frame."""

    id: str
    created_at: float
    stream: bytes
    attempts: int


@dataclass(frozen=True)
class FrameRecord:
    """A frame's row, as GET /v1/images/{id} shows it."""

    id: str
    created_at: float
    status: str
    filename: str
    mode: str
    width: int
    height: int
    original_bytes: int
    nbytes: int
    bpp: float
    psnr: float | None
    quality: float
    jpeg: dict | None
    noise: float | None
    cleaned: bool
    coded_size: tuple[int, int] | None
    budget: dict | None
    attempts: int
    next_attempt_at: float | None
    last_error: dict | None
    delivered_at: float | None
    receiver_status: str | None
    max_bytes: int | None = None
    stream_key: str | None = None
    superseded_by: str | None = None


_RECORD_COLUMNS = ("id, created_at, status, filename, mode, width, height, original_bytes, bytes, bpp, psnr, "
                   "quality, jpeg, noise, cleaned, coded_height, coded_width, budget, attempts, next_attempt_at, "
                   "last_error, delivered_at, receiver_status, max_bytes, stream_key, superseded_by")


def _record(row: tuple) -> FrameRecord:
    (id_, created_at, status, filename, mode, width, height, original_bytes, nbytes, bpp, psnr, quality, jpeg,
     noise, cleaned, coded_height, coded_width, budget, attempts, next_attempt_at, last_error, delivered_at,
     receiver_status, max_bytes, stream_key, superseded_by) = row
    return FrameRecord(
        id=id_, created_at=created_at, status=status, filename=filename, mode=mode, width=width, height=height,
        original_bytes=original_bytes, nbytes=nbytes, bpp=bpp, psnr=psnr, quality=quality,
        jpeg=json.loads(jpeg) if jpeg else None, noise=noise, cleaned=bool(cleaned),
        coded_size=None if coded_height is None else (coded_height, coded_width),
        budget=json.loads(budget) if budget else None, attempts=attempts,
        next_attempt_at=next_attempt_at if status == "queued" else None,
        last_error=json.loads(last_error) if last_error else None, delivered_at=delivered_at,
        receiver_status=receiver_status, max_bytes=max_bytes, stream_key=stream_key, superseded_by=superseded_by,
    )


class Outbox:
    """The frames table behind async methods; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentwire-outbox")
        # Ids of the batches the delivery worker is sending: added by due() on the outbox thread,
        # read by _add() there, removed by release() from the event loop, hence the lock.
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, fn, args)

    def _guarded(self, fn: Callable[..., Any], args: tuple) -> Any:
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise OutboxError(
                f"the outbox database {self.path} cannot be used ({exc}); check the disk space "
                "and permissions of the sender's data_dir"
            ) from exc

    # ---- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every transaction is explicit.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # WAL + FULL: each COMMIT is fsync'd
        conn.execute("PRAGMA busy_timeout=5000")
        try:
            migrate(conn, _SCHEMA, _MIGRATIONS, SCHEMA_VERSION, self._too_new)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _too_new(self, version: int) -> OutboxError:
        return OutboxError(f"{self.path} has outbox schema {version}; this sender reads schemas 1 to {SCHEMA_VERSION}: "
                           "deliver or move the newer outbox with the sender version that wrote it")

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError("the outbox is not open")
        return self._conn

    # ---- writes -------------------------------------------------------------------------
    async def add(self, frames: list[NewFrame], max_pending: int, retry_after_s: int) -> list[str]:
        """Queue all ``frames`` in one fsync'd transaction, or none (``OutboxFull``), superseding
        older frames with their ``stream_key`` first (so they make room). Returns the ids of the
        frames superseded."""
        return await self._run(self._add, frames, max_pending, retry_after_s)

    def _add(self, frames: list[NewFrame], max_pending: int, retry_after_s: int) -> list[str]:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            superseded = []
            for key in dict.fromkeys(f.stream_key for f in frames if f.stream_key):
                newest = [f.id for f in frames if f.stream_key == key][-1]
                superseded += self._supersede(key, newest)
            pending = c.execute("SELECT count(*) FROM frames WHERE status = 'queued'").fetchone()[0]
            if pending + len(frames) > max_pending:
                raise OutboxFull(
                    f"{pending} images are waiting for the receiver (limit {max_pending}); "
                    f"retry in {retry_after_s} s, once the receiver has caught up",
                    retry_after_s=retry_after_s,
                )
            c.executemany(
                "INSERT INTO frames (id, created_at, status, stream, filename, mode, width, height, original_bytes, "
                "bytes, bpp, psnr, quality, jpeg, noise, cleaned, coded_height, coded_width, budget, max_bytes, "
                "stream_key, source, next_attempt_at) VALUES (?, ?, 'queued', "
                f"{', '.join('?' * 20)})",
                [(f.id, f.created_at, f.stream, f.filename, f.mode, f.width, f.height, f.original_bytes, f.nbytes,
                  f.bpp, f.psnr, f.quality, json.dumps(f.jpeg) if f.jpeg else None, f.noise, int(f.cleaned),
                  *(f.coded_size or (None, None)), json.dumps(f.budget) if f.budget else None, f.max_bytes,
                  f.stream_key, f.source, f.created_at)
                 for f in frames],
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return superseded

    def _supersede(self, key: str, by: str) -> list[str]:
        """Inside _add's transaction: mark the supersedable frames with ``key`` (module docstring)."""
        rows = self.conn.execute(
            f"SELECT id FROM frames WHERE status = 'queued' AND stream_key = ? AND {_NOT_STORED}", (key,)).fetchall()
        with self._in_flight_lock:
            ids = [r[0] for r in rows if r[0] not in self._in_flight]
        self.conn.executemany("UPDATE frames SET status = 'superseded', stream = NULL, source = NULL, "
                              "superseded_by = ? WHERE id = ?", [(by, id_) for id_ in ids])
        return ids

    async def mark_delivered(self, results: dict[str, str], now: float) -> None:
        """``results``: frame id -> the receiver's "stored" or "duplicate"."""
        await self._run(self._write_many,
                        "UPDATE frames SET status = 'delivered', stream = NULL, source = NULL, attempts = attempts + 1, "
                        "delivered_at = ?, receiver_status = ?, last_error = NULL WHERE id = ? AND status = 'queued'",
                        [(now, result, id_) for id_, result in results.items()])

    async def mark_failed(self, ids: list[str], error: dict) -> None:
        """Permanent failure: the stream is kept (a later version may offer a resend)."""
        await self._run(self._write_many,
                        "UPDATE frames SET status = 'failed', source = NULL, attempts = attempts + 1, last_error = ? "
                        "WHERE id = ? AND status = 'queued'",
                        [(json.dumps(error), id_) for id_ in ids])

    async def schedule_retry(self, ids: list[str], error: dict, next_attempt_at: float) -> None:
        await self._run(self._write_many,
                        "UPDATE frames SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                        "WHERE id = ? AND status = 'queued'",
                        [(json.dumps(error), next_attempt_at, id_) for id_ in ids])

    async def retry_now(self, now: float) -> None:
        """Make every queued frame due (at startup: a restart often follows a fix, so try at once)."""
        await self._run(self._write_many,
                        "UPDATE frames SET next_attempt_at = ? WHERE status = 'queued' AND next_attempt_at > ?",
                        [(now, now)])

    async def replace_stream(self, id_: str, frame: NewStream) -> bool:
        """A re-plan (sender/replan.py): frame ``id_``'s stream and numbers become ``frame``'s, in
        one fsync'd transaction, if it is still queued, on no POST's way and not possibly stored
        at the receiver. False when it no longer is (then nothing changed)."""
        return await self._run(self._replace_stream, id_, frame)

    def _replace_stream(self, id_: str, f: NewStream) -> bool:
        c = self.conn
        with self._in_flight_lock:
            if id_ in self._in_flight:
                return False
        c.execute("BEGIN IMMEDIATE")
        try:
            n = c.execute(
                "UPDATE frames SET stream = ?, bytes = ?, bpp = ?, psnr = ?, quality = ?, jpeg = ?, noise = ?, "
                "cleaned = ?, coded_height = ?, coded_width = ?, budget = ?, max_bytes = ? "
                f"WHERE id = ? AND status = 'queued' AND source IS NOT NULL AND {_NOT_STORED}",
                (f.stream, f.nbytes, f.bpp, f.psnr, f.quality, json.dumps(f.jpeg) if f.jpeg else None, f.noise,
                 int(f.cleaned), *(f.coded_size or (None, None)), json.dumps(f.budget) if f.budget else None,
                 f.max_bytes, id_)).rowcount
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return n == 1

    async def forget_source(self, id_: str) -> None:
        """Drop a frame's kept upload: it goes as it is (a re-plan could not code it again)."""
        await self._run(self._write_many, "UPDATE frames SET source = NULL WHERE id = ?", [(id_,)])

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany(sql, rows)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # ---- reads ----------------------------------------------------------------------------
    async def due(self, now: float, limit: int, max_bytes: int) -> list[PendingFrame]:
        """Queued frames whose time has come and that no POST carries now, oldest first: at most
        ``limit`` frames and, past the first, at most ``max_bytes`` of streams. They are in flight
        (never superseded, not due again) until ``release`` of their ids."""
        return await self._run(self._due, now, limit, max_bytes)

    def _flying(self) -> list[str]:
        with self._in_flight_lock:
            return list(self._in_flight)

    def _due(self, now: float, limit: int, max_bytes: int) -> list[PendingFrame]:
        flying = self._flying()
        rows = self.conn.execute(
            "SELECT id, length(stream) FROM frames WHERE status = 'queued' AND next_attempt_at <= ? "
            f"AND id NOT IN ({','.join('?' * len(flying))}) "
            "ORDER BY next_attempt_at, created_at LIMIT ?", (now, *flying, limit)).fetchall()
        chosen, total = [], 0
        for id_, size in rows:
            if chosen and total + size > max_bytes:
                break
            chosen.append(id_)
            total += size
        out = []
        for id_ in chosen:
            row = self.conn.execute("SELECT id, created_at, stream, attempts FROM frames WHERE id = ?",
                                    (id_,)).fetchone()
            out.append(PendingFrame(id=row[0], created_at=row[1], stream=bytes(row[2]), attempts=row[3]))
        with self._in_flight_lock:
            self._in_flight.update(f.id for f in out)
        return out

    def release(self, ids: list[str]) -> None:
        """The batch of these ids from ``due`` is settled (or its POST abandoned)."""
        with self._in_flight_lock:
            self._in_flight.difference_update(ids)

    async def queue_order(self) -> list[tuple]:
        """The queued frames that no POST carries, in the order they will go: (id, created_at,
        bytes, pixels, budget's target_s or None, resizable), where resizable means a re-plan may
        code it again (its upload is kept and the receiver cannot have stored it)."""
        def query() -> list[tuple]:
            flying = set(self._flying())
            rows = self.conn.execute(
                "SELECT id, created_at, bytes, width * height, json_extract(budget, '$.target_s'), "
                f"source IS NOT NULL AND {_NOT_STORED} FROM frames WHERE status = 'queued' "
                "ORDER BY next_attempt_at, created_at").fetchall()
            return [(*r[:5], bool(r[5])) for r in rows if r[0] not in flying]

        return await self._run(query)

    async def source(self, id_: str) -> tuple[bytes, str, bool] | None:
        """A queued frame's kept upload, its mode and whether it has a preview (None: none kept)."""
        row = await self._run(lambda: self.conn.execute(
            "SELECT source, mode, jpeg IS NOT NULL FROM frames WHERE id = ? AND status = 'queued' "
            "AND source IS NOT NULL", (id_,)).fetchone())
        return None if row is None else (bytes(row[0]), row[1], bool(row[2]))

    async def next_due_at(self) -> float | None:
        """When the next queued frame that no POST carries becomes due (None: there is none)."""
        def query() -> float | None:
            flying = self._flying()
            return self.conn.execute(
                "SELECT min(next_attempt_at) FROM frames WHERE status = 'queued' "
                f"AND id NOT IN ({','.join('?' * len(flying))})", flying).fetchone()[0]

        return await self._run(query)

    async def get(self, id_: str) -> FrameRecord | None:
        row = await self._run(lambda: self.conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM frames WHERE id = ?", (id_,)).fetchone())
        return _record(row) if row else None

    async def list(self, status: str | None, limit: int) -> list[FrameRecord]:
        """Newest first."""
        def query() -> list[tuple]:
            if status is None:
                return self.conn.execute(f"SELECT {_RECORD_COLUMNS} FROM frames ORDER BY created_at DESC LIMIT ?",
                                         (limit,)).fetchall()
            return self.conn.execute(f"SELECT {_RECORD_COLUMNS} FROM frames WHERE status = ? "
                                     "ORDER BY created_at DESC LIMIT ?", (status, limit)).fetchall()
        return [_record(r) for r in await self._run(query)]

    async def counts(self) -> dict[str, int]:
        rows = await self._run(lambda: self.conn.execute(
            "SELECT status, count(*) FROM frames GROUP BY status").fetchall())
        out = dict.fromkeys(STATUSES, 0)
        out.update(dict(rows))
        return out

    async def queued_bytes(self) -> int:
        """Stream bytes of the queued frames: what the link must carry before a new frame."""
        return await self._run(lambda: self.conn.execute(
            "SELECT coalesce(sum(bytes), 0) FROM frames WHERE status = 'queued'").fetchone()[0])

    async def pending(self) -> int:
        return await self._run(lambda: self.conn.execute(
            "SELECT count(*) FROM frames WHERE status = 'queued'").fetchone()[0])

    async def check_writable(self) -> None:
        """Take the write lock and let go (readiness): proves the file is open, the tables exist
        and nothing (read-only mount, another writer) blocks a write."""
        def probe() -> None:
            c = self.conn
            c.execute("SELECT 1 FROM frames LIMIT 1").fetchall()
            c.execute("BEGIN IMMEDIATE")
            c.execute("ROLLBACK")
        await self._run(probe)

