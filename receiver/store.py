"""The receiver's store: reconstructions as PNG files plus one SQLite index beside them.

    STORE/images/<id>.png     written atomically: tmp file in the same folder, fsync, os.replace
    STORE/codes/<id>.lw       the received bitstream, when ``put`` is given one; written the same way
    STORE/index.sqlite3       WAL mode, synchronous=FULL; table ``images``, one row per image

A row is inserted only after its files are durable, and the files are removed again when the
insert fails, so every listed image can be served and a failed write leaves nothing behind. Ids are
checked (``shared.wire.check_image_id``: 32 lowercase hex digits) before they become a path, so no id
can leave ``images/``.

``received_at`` (UNIX seconds when the image was stored) is strictly increasing within a store,
which makes it an exact pagination cursor: ``page(before=item["received_at"])``.

Schema 2 added ``mode`` and ``coded_height`` / ``coded_width`` and dropped the always-NULL
``psnr``; ``open()`` migrates an older index in place (``_MIGRATIONS``, run by
``shared/service/migrations.py``), one committed step per version. Rows stored under schema 1 get
their mode from the model name and read as coded at their own size (the stream that would say
otherwise was not kept).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

from shared.errors import StoreError, StoreFull
from shared.service.migrations import migrate
from shared.wire import check_image_id

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id            TEXT PRIMARY KEY,      -- 32 lowercase hex digits, the sender's frame id
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    stream_bytes  INTEGER NOT NULL,      -- size of the .lw bitstream container
    bpp           REAL NOT NULL,         -- stream_bytes * 8 / (width * height)
    quality       REAL NOT NULL,         -- the rate the stream was coded at, 0..1
    model         TEXT NOT NULL,
    weights       TEXT NOT NULL,
    sent_at       REAL NOT NULL,         -- sender's UNIX time when it queued the frame
    received_at   REAL NOT NULL,         -- receiver's UNIX time when the image was stored
    decode_ms     REAL NOT NULL,         -- bitstream -> pixels on this receiver
    mode          TEXT NOT NULL DEFAULT 'standard',  -- the sender's mode: standard | denoise
    coded_height  INTEGER,               -- the reduced size it was coded at; NULL: height x width
    coded_width   INTEGER
);
CREATE INDEX IF NOT EXISTS images_received_at ON images (received_at);
"""
# version -> the statements that bring an index of that version to the next one
_MIGRATIONS = {
    1: ("ALTER TABLE images ADD COLUMN mode TEXT NOT NULL DEFAULT 'standard'",
        # schema 1 did not record the mode; the shipped denoising model is the only one it could be
        "UPDATE images SET mode = 'denoise' WHERE model = 'lw-vr-denoise'",
        "ALTER TABLE images ADD COLUMN coded_height INTEGER",
        "ALTER TABLE images ADD COLUMN coded_width INTEGER",
        "ALTER TABLE images DROP COLUMN psnr"),
}
COLUMNS = ("id", "width", "height", "stream_bytes", "bpp", "quality", "model", "weights",
           "sent_at", "received_at", "decode_ms", "mode", "coded_height", "coded_width")
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def as_json(row: dict) -> dict:
    """A stored row as the API returns it: the columns (coded size filled in when it is the image's
    own, bpp rounded) plus derived latency and the PNG's URL."""
    out = {k: v for k, v in row.items() if k not in ("coded_height", "coded_width")}
    out["bpp"] = round(row["bpp"], 4)  # the stored value stays exact; 4 decimals tell any two rates apart
    out["coded_width"] = row["coded_width"] or row["width"]
    out["coded_height"] = row["coded_height"] or row["height"]
    out["latency_ms"] = round((row["received_at"] - row["sent_at"]) * 1000.0, 3)
    out["png_url"] = f"/v1/images/{row['id']}.png"
    return out


def _translate(exc: BaseException, action: str) -> StoreError:
    """OSError / sqlite3.Error -> StoreFull (disk full) or StoreError, without paths or internals."""
    full = (isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS) or (
        isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)
    if full:
        return StoreFull(f"the receiver's disk is full while trying to {action}: the operator must free "
                         "space in the store; the sender should keep the frame and retry later")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    if isinstance(exc, sqlite3.Error):
        reason = str(exc)
    return StoreError(f"the receiver cannot {action} ({reason}): the operator must make the store "
                      "directory writable; the sender should keep the frame and retry later")


class Store:
    """Thread-safe: one lock serialises the SQLite connection and the write path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.codes_dir = self.root / "codes"
        self.db_path = self.root / "index.sqlite3"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._last_received_at = 0.0

    # ---- lifecycle -----------------------------------------------------------------------
    def open(self) -> "Store":
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.images_dir, self.codes_dir):
                for stale in folder.glob(".*.tmp"):  # left by a crash mid-write
                    stale.unlink(missing_ok=True)
            db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=10)
        except (OSError, sqlite3.Error) as exc:
            raise _translate(exc, "open its store") from exc
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a 200 "stored" answer means the row survives power loss, like the fsynced PNG.
            db.execute("PRAGMA synchronous=FULL")
            # unstamped=1: schema 1 was written before the index carried its version
            migrate(db, SCHEMA, _MIGRATIONS, SCHEMA_VERSION, _too_new, unstamped=1)
            last = db.execute("SELECT MAX(received_at) FROM images").fetchone()[0]
        except (OSError, sqlite3.Error, StoreError) as exc:
            db.close()
            if isinstance(exc, StoreError):
                raise
            raise _translate(exc, "open its store") from exc
        self._db = db
        self._last_received_at = float(last or 0.0)
        return self

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ---- reads ---------------------------------------------------------------------------
    def png_path(self, image_id: str) -> Path:
        return self.images_dir / f"{check_image_id(image_id)}.png"

    def code_path(self, image_id: str) -> Path:
        return self.codes_dir / f"{check_image_id(image_id)}.lw"

    def read_png(self, image_id: str) -> bytes | None:
        """The stored reconstruction's bytes, or None if there is none."""
        path = self.png_path(image_id)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _translate(exc, "read an image from its store") from exc

    def contains(self, image_id: str) -> bool:
        with self._lock:
            return self._contains(check_image_id(image_id))

    def get(self, image_id: str) -> dict | None:
        check_image_id(image_id)
        with self._lock:
            row = self._query(f"SELECT {', '.join(COLUMNS)} FROM images WHERE id = ?", (image_id,))
        return dict(row[0]) if row else None

    def page(self, limit: int, before: float | None = None) -> tuple[list[dict], float | None]:
        """Newest first; ``next`` is the cursor for the following page, or None at the end."""
        where, args = ("WHERE received_at < ? ", [before]) if before is not None else ("", [])
        sql = f"SELECT {', '.join(COLUMNS)} FROM images {where}ORDER BY received_at DESC LIMIT ?"
        with self._lock:
            rows = [dict(r) for r in self._query(sql, (*args, limit + 1))]
        items = rows[:limit]
        return items, (items[-1]["received_at"] if len(rows) > limit else None)

    # ---- writes --------------------------------------------------------------------------
    def put(self, meta: dict, png: bytes, code: bytes | None = None) -> dict | None:
        """Store one image (and its received bitstream ``code``, if given); returns its row
        (received_at set), or None if the id is already stored."""
        image_id = check_image_id(meta["id"])
        final = self.png_path(image_id)
        code_final = self.code_path(image_id) if code is not None else None
        with self._lock:
            if self._contains(image_id):
                return None
            written = []
            try:
                if code_final is not None:
                    self._write_file(code_final, code)
                    written.append(code_final)
                self._write_file(final, png)
                written.append(final)
            except StoreError:
                _unlink_all(written)
                raise
            received_at = max(time.time(), self._last_received_at + 1e-6)
            row = {**{c: meta.get(c) for c in COLUMNS}, "received_at": received_at}
            try:
                self._connection().execute(
                    f"INSERT INTO images ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                    tuple(row[c] for c in COLUMNS))
            except (sqlite3.Error, StoreError) as exc:
                _unlink_all(written)
                if isinstance(exc, StoreError):
                    raise
                raise _translate(exc, "index an image in its store") from exc
            self._last_received_at = received_at
            return row

    def probe(self) -> None:
        """Raise StoreError unless a file can be written and deleted and the index can be locked."""
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.images_dir, prefix=".probe.", suffix=".tmp")
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError as exc:
            raise _translate(exc, "write to its image folder") from exc
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only index
                db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise _translate(exc, "write to its index") from exc

    # ---- internals (caller holds the lock) -------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed: the receiver is shutting down; retry shortly")
        return self._db

    def _query(self, sql: str, args: tuple) -> list[sqlite3.Row]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, "read its index") from exc

    def _contains(self, image_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM images WHERE id = ?", (image_id,)))

    def _write_file(self, final: Path, data: bytes) -> None:
        tmp: str | None = None
        replaced = False
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            replaced, tmp = True, None
            _fsync_dir(final.parent)  # makes the rename itself durable
        except OSError as exc:
            if replaced:
                with suppress(OSError):
                    final.unlink(missing_ok=True)
            raise _translate(exc, "write an image to its store") from exc
        finally:
            if tmp is not None:
                with suppress(OSError):
                    os.unlink(tmp)


def _too_new(version: int) -> StoreError:
    return StoreError(f"the store's index has schema {version}; this receiver reads schemas 1 to {SCHEMA_VERSION}: "
                      "run the receiver version that wrote it, or start with an empty store directory")


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with suppress(OSError):
            path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
