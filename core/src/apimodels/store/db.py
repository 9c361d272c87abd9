"""The database: one SQLite file through sqlite-utils, in WAL mode (the embedded default), or
a PostgreSQL database named by a ``postgresql://`` URL (several processes and hosts, see
``postgres``); migrated on open.

Every SQL statement of the project lives in the modules that own a table (accounts, ...),
each taking a ``sqlite_utils.Database`` or its PostgreSQL counterpart, which offers the same
interface (``postgres.PgDatabase``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from .migrations import migrate

T = TypeVar("T")

# The errors modules catch, whatever the backend: psycopg's join them once a PostgreSQL
# database is opened (importing psycopg costs 25 MB and half a second: SQLite never pays it).
# Read them as attributes of this module (``db.INTEGRITY_ERRORS``), at the ``except``.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
#: The database is busy or unreachable (every write of a batch would fail the same way).
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
#: PostgreSQL rolled the transaction back to break a deadlock: worth trying again.
RETRY_ERRORS: tuple[type[Exception], ...] = ()


def _postgres_errors() -> None:
    global INTEGRITY_ERRORS, UNAVAILABLE_ERRORS, RETRY_ERRORS
    import psycopg

    INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)
    RETRY_ERRORS = (psycopg.errors.TransactionRollback,)
    UNAVAILABLE_ERRORS = (sqlite3.OperationalError, psycopg.OperationalError)


def is_url(target: object) -> bool:
    """Whether a ``--db`` value names a PostgreSQL database rather than a SQLite file."""
    return str(target).startswith(("postgresql://", "postgres://"))


def is_postgres(db: Any) -> bool:
    """Whether ``db`` (a database or the connection of a transaction) is PostgreSQL's."""
    return getattr(db, "dialect", "sqlite") == "postgresql"


async def off_loop(db: Any, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, a few statements on ``db``: on PostgreSQL on a worker thread (its
    round trips would stop the event loop meanwhile; the pool binds a transaction to its
    thread), on SQLite in place (a local read costs microseconds, and its connection is the
    event loop's)."""
    if is_postgres(db):
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def commit_off_loop(db: Any, fn: Callable[[], T], outcome: Callable[[bool], None]) -> T:
    """``fn()``, a transaction, as :func:`off_loop` runs it; ``outcome`` is told whether it
    committed, also when the caller stops waiting for it (a cancelled request): a worker
    thread commits all the same, and what the transaction did must be counted."""
    if not is_postgres(db):
        try:
            result = fn()
        except BaseException:
            outcome(False)
            raise
        outcome(True)
        return result
    work = asyncio.ensure_future(asyncio.to_thread(fn))
    work.add_done_callback(lambda done: outcome(not done.cancelled() and not done.exception()))
    return await asyncio.shield(work)


async def read_off_loop(db: Any, fn: Callable[[Any], T]) -> T:
    """``fn(reader)``, reads that may scan many rows (the admin overview, a ledger check:
    seconds at a million usage rows), never on the event loop, which serves every call of
    the process meanwhile. ``reader`` reads the same database: on PostgreSQL ``db`` itself;
    on SQLite the worker thread's own read-only connection to the file (WAL: it reads while
    the loop's connection writes, and sqlite3 lets go of the GIL while SQLite works); an
    in-memory database, which only its own connection sees, in place."""
    if is_postgres(db):
        return await asyncio.to_thread(fn, db)
    path = database_path(db)
    if not path:
        return fn(db)
    return await asyncio.to_thread(lambda: fn(_reader(path)))


_readers = threading.local()  # each worker thread's read-only connections, by file


def _reader(path: str) -> sqlite_utils.Database:
    """This thread's read-only connection to the SQLite file at ``path`` (a few kept)."""
    opened: dict[str, sqlite_utils.Database] = _readers.__dict__.setdefault("opened", {})
    reader = opened.get(path)
    if reader is None:
        if len(opened) >= 4:  # another server's file (the tests run many): close the oldest
            opened.pop(next(iter(opened))).conn.close()
        conn = sqlite3.connect(Path(path).as_uri() + "?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        reader = opened[path] = sqlite_utils.Database(conn)
    return reader


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the database at ``path``, a file or a
    ``postgresql://`` URL."""
    if is_url(path):
        from .postgres import PgDatabase  # needs apimodels[postgresql]

        _postgres_errors()
        pg = PgDatabase(str(path))
        migrate(pg)  # type: ignore[arg-type]
        return pg  # type: ignore[return-value]
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # autocommit mode: each module opens its own transactions with ``with db.conn:``
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    db = sqlite_utils.Database(conn)
    if str(path) != ":memory:":
        _enable_wal(db)
        # NORMAL in WAL: a power cut can lose the last transactions, never corrupt the file.
        conn.execute("PRAGMA synchronous = NORMAL")
    migrate(db)
    return db


def _enable_wal(db: sqlite_utils.Database, seconds: float = 10.0) -> None:
    """WAL mode, also when several processes open a new file at once: switching takes an
    exclusive lock, and SQLite answers "locked" at once rather than wait (its busy timeout)
    when two connections holding a shared lock both want it; so try again a moment later."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            db.enable_wal()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


_stamp: tuple[int, str] = (-1, "")  # a second and its text, swapped whole (threads)


def utcnow() -> str:
    """The current time as ISO-8601 UTC text, as stored in every table: what
    ``datetime.now(UTC).isoformat(timespec="microseconds")`` gives, formatted once a second
    (a request stamps several rows; the datetime round trip cost microseconds each)."""
    global _stamp
    second, fraction = divmod(time.time_ns() // 1000, 1_000_000)
    stamped, prefix = _stamp
    if second != stamped:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _stamp = (second, prefix)
    return f"{prefix}{fraction:06d}+00:00"


def database_path(db: sqlite_utils.Database) -> str:
    """The file behind a database connection ('' for an in-memory one), or the URL of a
    PostgreSQL database."""
    if is_postgres(db):
        return db.url  # type: ignore[attr-defined]
    return db.conn.execute("PRAGMA database_list").fetchone()[2]


def backup(source: str | Path, destination: str | Path) -> int:
    """Copy a SQLite database file, consistent as of one moment, while other processes keep
    writing to it (SQLite's online backup, a few pages at a time); the pages copied."""
    if not Path(source).exists():
        raise FileNotFoundError(f"no database at {source}")
    src = sqlite3.connect(f"file:{Path(source).resolve()}?mode=ro", uri=True)
    dest = sqlite3.connect(str(destination))
    try:
        src.execute("PRAGMA busy_timeout = 5000")
        src.backup(dest, pages=1024)
        return dest.execute("PRAGMA page_count").fetchone()[0]
    finally:
        dest.close()
        src.close()


class Checkpointer:
    """Copies WAL pages into the database file from a worker thread, off the event loop.

    The server's own connection turns automatic checkpoints off (they fsync the file and
    would stall a request now and then); this keeps the WAL short instead, once a second.
    """

    def __init__(self, path: str) -> None:
        self.conn: sqlite3.Connection | None = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None
        )
        self.conn.execute("PRAGMA busy_timeout = 5000")
        # Shutdown cancels the task awaiting a checkpoint, not the thread running it: closing
        # the connection under that thread crashed the process (a segfault in sqlite3).
        self._lock = threading.Lock()

    def checkpoint(self) -> None:
        with self._lock:
            if self.conn is not None:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def close(self) -> None:
        with self._lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
