"""The PostgreSQL backend: one database shared by several gateway processes and hosts.

The modules that own tables write their SQL once, in the dialect both backends accept
(SQLite's placeholders ``?``, ``?1`` and ``:name``, ``RETURNING``, ``ON CONFLICT``, ISO-8601
text for times), and take the same small interface from either backend: the one of
``sqlite_utils.Database`` and ``sqlite3.Connection`` they use (``db.execute``, ``db.query``,
``db[table].insert``, ``with db.conn:`` for a transaction, the migrations' ``create``,
``create_index`` and ``add_column``). SQLite keeps its own objects, untouched (its hot path
pays nothing for this layer); :class:`PgDatabase` implements that interface on a psycopg 3
connection pool:

- placeholders are rewritten once per statement text (cached) into psycopg's;
- ``with db.conn:`` takes a pooled connection for the calling thread and runs a transaction
  on it (nested blocks join it); a statement outside one runs in autocommit on any
  pooled connection, so no request sets up a connection;
- ``BEGIN IMMEDIATE`` (SQLite's "take the write lock now") takes one transaction-scoped
  advisory lock: transactions that read then write serialize across every process as they
  do on SQLite. The hot paths do not take it: the ledger's writes are conditional updates
  and row locks (``billing.ledger``), and tasks and webhook deliveries are claimed with
  ``FOR UPDATE SKIP LOCKED`` (``tasks.store``); ``db.is_postgres`` tells them apart.

A synchronous driver, on purpose: the modules are synchronous around the database, and the
gateway commits its charges in groups (``billing.ledger.GroupCommit``), a few round trips
per batch of requests; an async driver would move the same round trips, not remove them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg_pool import ConnectionPool

#: The key of the advisory lock ``BEGIN IMMEDIATE`` takes (any constant: one per database).
WRITE_LOCK = 0x61706D6F  # "apmo"

_TOKEN = re.compile(
    r"'(?:[^']|'')*'"  # a string literal: kept (its % doubled)
    r'|"(?:[^"]|"")*"'  # a quoted name
    r"|::"  # a cast, not a parameter
    r"|\?(\d+)"  # ?1: numbered
    r"|\?"  # ?: positional
    r"|(?<![:\w]):([A-Za-z_]\w*)"  # :name
    r"|%"
)


@lru_cache(maxsize=4096)
def translate(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """SQLite's placeholders -> psycopg's, and for ``?N`` the order to pass the values in."""
    order: list[int] = []

    def sub(m: re.Match[str]) -> str:
        text = m.group(0)
        if text[0] in "'\"":
            return text.replace("%", "%%")
        if text == "::":
            return text
        if text == "%":
            return "%%"
        if m.group(1):
            order.append(int(m.group(1)) - 1)
            return "%s"
        if m.group(2):
            return f"%({m.group(2)})s"
        return "%s"

    return _TOKEN.sub(sub, sql), (tuple(order) if order else None)


def _params(sql: str, params: Any) -> tuple[str, Any]:
    text, order = translate(sql)
    if params is None:
        return text, None
    if order is not None:
        return text, [params[i] for i in order]
    return text, params


class _BoolAsInt(Dumper):
    """Python bools go into INTEGER columns as on SQLite (0/1)."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class _IntegralNumeric(Loader):
    """SUM over BIGINT columns is NUMERIC in PostgreSQL: an int, as SQLite gives (the schema
    has no NUMERIC column; money is integer micro-USD and decimals are stored as text)."""

    def load(self, data: Any) -> Any:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else value


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_dumper(bool, _BoolAsInt)
    conn.adapters.register_loader("numeric", _IntegralNumeric)


@dataclass(slots=True)
class Result:
    """A statement's outcome, read whole before its connection went back to the pool."""

    rows: list[tuple[Any, ...]]
    rowcount: int
    description: Any
    lastrowid: None = None

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows.pop(0) if self.rows else None  # results read row by row are short

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self.rows = self.rows, []
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class _Bound(threading.local):
    conn: psycopg.Connection[Any] | None = None
    tx: Any = None
    depth: int = 0


class PgConnection:
    """What ``db.conn`` is on PostgreSQL: the calling thread's transaction, if any."""

    dialect = "postgresql"

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._bound = _Bound()

    @property
    def in_transaction(self) -> bool:
        return self._bound.conn is not None

    def __enter__(self) -> PgConnection:
        bound = self._bound
        if bound.conn is None:
            conn = self.pool.getconn()
            try:
                tx = conn.transaction()
                tx.__enter__()
            except BaseException:
                self.pool.putconn(conn)
                raise
            bound.conn, bound.tx = conn, tx
        bound.depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        bound = self._bound
        bound.depth -= 1
        if bound.depth:
            return
        conn, tx = bound.conn, bound.tx
        bound.conn = bound.tx = None
        assert conn is not None
        try:
            tx.__exit__(*exc)
        finally:
            self.pool.putconn(conn)

    def execute(self, sql: str, params: Any = None) -> Any:
        conn = self._bound.conn
        if sql.startswith("BEGIN IMMEDIATE"):
            if conn is None:
                raise RuntimeError("BEGIN IMMEDIATE outside `with db.conn:`")
            return conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        return self.run(*_params(sql, params))

    def run(self, sql: str, values: Any = None) -> Any:
        """A statement already in psycopg's placeholders, in the thread's transaction if any."""
        conn = self._bound.conn
        if conn is not None:
            return conn.execute(sql, values)
        with self.pool.connection() as conn:
            cur = conn.execute(sql, values)
            rows = cur.fetchall() if cur.description else []
            return Result(rows, cur.rowcount, cur.description)

    def executemany(self, sql: str, seq: Iterable[Any]) -> None:
        text, order = translate(sql)
        values = [[p[i] for i in order] for p in seq] if order is not None else list(seq)
        if self._bound.conn is not None:
            with self._bound.conn.cursor() as cur:
                cur.executemany(text, values)
            return
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(text, values)

    def close(self) -> None:
        self.pool.close()


@dataclass(slots=True)
class Column:
    name: str
    type: str


_TYPES = {str: "TEXT", int: "BIGINT", float: "DOUBLE PRECISION", bytes: "BYTEA"}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: Any) -> str:
    if isinstance(value, bool | int | float):
        return str(int(value) if isinstance(value, bool) else value)
    return "'" + str(value).replace("'", "''") + "'"


class PgTable:
    """The part of ``sqlite_utils.Table`` the modules and migrations use."""

    def __init__(self, db: PgDatabase, name: str) -> None:
        self.db = db
        self.name = name
        self.last_pk: Any = None

    def create(
        self,
        columns: dict[str, type],
        *,
        pk: str | Sequence[str],
        foreign_keys: Sequence[tuple[str, str, str]] = (),
        not_null: Iterable[str] = (),
        defaults: dict[str, Any] | None = None,
    ) -> PgTable:
        not_null, defaults = set(not_null), defaults or {}
        references = {column: (table, other) for column, table, other in foreign_keys}
        identity = isinstance(pk, str) and columns[pk] is int
        parts = []
        for name, kind in columns.items():
            part = f"{_q(name)} {_TYPES[kind]}"
            if identity and name == pk:
                part += " GENERATED BY DEFAULT AS IDENTITY"
            if name in not_null:
                part += " NOT NULL"
            if name in defaults:
                part += f" DEFAULT {_literal(defaults[name])}"
            if name in references:
                table, other = references[name]
                part += f" REFERENCES {_q(table)} ({_q(other)})"
            parts.append(part)
        keys = [pk] if isinstance(pk, str) else list(pk)
        parts.append(f"PRIMARY KEY ({', '.join(map(_q, keys))})")
        self.db.execute(f"CREATE TABLE {_q(self.name)} ({', '.join(parts)})")
        return self

    def create_index(
        self, columns: Sequence[str], *, unique: bool = False, index_name: str | None = None
    ) -> PgTable:
        name = index_name or f"idx_{self.name}_{'_'.join(columns)}"
        self.db.execute(
            f"CREATE {'UNIQUE ' if unique else ''}INDEX {_q(name)}"
            f" ON {_q(self.name)} ({', '.join(map(_q, columns))})"
        )
        return self

    def add_column(self, name: str, kind: type, *, not_null_default: Any = None) -> PgTable:
        extra = (
            "" if not_null_default is None else f" NOT NULL DEFAULT {_literal(not_null_default)}"
        )
        self.db.execute(f"ALTER TABLE {_q(self.name)} ADD COLUMN {_q(name)} {_TYPES[kind]}{extra}")
        return self

    def insert(self, row: dict[str, Any]) -> PgTable:
        columns = ", ".join(map(_q, row))
        values = ", ".join(["%s"] * len(row))
        pk = self.db.primary_key(self.name)
        got = self.db.conn.run(
            f"INSERT INTO {_q(self.name)} ({columns}) VALUES ({values}) RETURNING {_q(pk)}",
            list(row.values()),
        ).fetchone()
        self.last_pk = got[0]
        return self

    @property
    def columns(self) -> list[Column]:
        return [
            Column(name, kind)
            for name, kind in self.db.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ?"
                " ORDER BY ordinal_position",
                (self.name,),
            )
        ]

    @property
    def exists(self) -> bool:
        return self.name in self.db.table_names()


class PgDatabase:
    """The part of ``sqlite_utils.Database`` the modules use, on a PostgreSQL pool."""

    dialect = "postgresql"

    def __init__(self, url: str, *, max_size: int = 8) -> None:
        self.url = url
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True},
            configure=_configure,
            timeout=5.0,  # a request waits at most this for a connection (a probe too)
            open=True,
            name="apimodels",
        )
        self.pool.wait(timeout=30)
        self.conn = PgConnection(self.pool)
        self._pks: dict[str, str] = {}

    def execute(self, sql: str, params: Any = None) -> Any:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, seq: Iterable[Any]) -> None:
        self.conn.executemany(sql, seq)

    def query(self, sql: str, params: Any = None) -> Iterator[dict[str, Any]]:
        cur = self.conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        for row in cur.fetchall():
            yield dict(zip(names, row, strict=True))

    def __getitem__(self, name: str) -> PgTable:
        return PgTable(self, name)

    def table_names(self) -> list[str]:
        return [
            r[0]
            for r in self.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() ORDER BY table_name"
            )
        ]

    def primary_key(self, table: str) -> str:
        if table not in self._pks:
            row = self.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = ?::regclass AND i.indisprimary",
                (table,),
            ).fetchone()
            self._pks[table] = row[0]
        return self._pks[table]

    def close(self) -> None:
        self.pool.close()
