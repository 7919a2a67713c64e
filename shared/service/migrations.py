"""Versioned SQLite files (the sender's outbox, the receiver's store): the schema version lives in
``PRAGMA user_version``, and ``migrate`` creates a new file or brings an older one up to date, one
committed step per version, so a crash mid-migration leaves a file of some whole version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence


def migrate(db: sqlite3.Connection, schema: str, steps: Mapping[int, Sequence[str]], version: int,
            too_new: Callable[[int], Exception], *, unstamped: int = 0) -> None:
    """Create ``schema`` in a new file, or run ``steps[v]`` (the statements that take schema v to
    v + 1) from the file's version up to ``version``. ``too_new(found)``: the error for a schema this
    build does not read. ``unstamped``: the schema of a file with tables but no version stamp (one
    written before the stamp existed); 0 when there are none. ``db`` must be in autocommit mode
    (``isolation_level=None``): each step runs in its own BEGIN IMMEDIATE ... COMMIT."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found == 0 and unstamped and db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
        found = unstamped
    if found not in (0, version, *steps):
        raise too_new(found)
    if found == 0:  # a new file
        db.executescript(schema)
    for old in range(found, version) if found else ():
        try:  # each step commits with its version stamp, or not at all
            db.execute("BEGIN IMMEDIATE")
            for statement in steps[old]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={old + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    db.execute(f"PRAGMA user_version={version}")
