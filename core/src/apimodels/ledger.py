"""The credits ledger: append-only entries, two-phase holds, running totals.

Every amount is integer micro-USD. An account's ``balance_micros`` is the sum of its ledger
entries and ``held_micros`` the sum of its pending holds; both change only inside the same
transaction as the entry or hold they sum (``apimodels ledger check`` recomputes them).

A billable call: ``hold`` (atomic check-and-reserve: 402 when balance minus pending holds is
short) -> upstream call -> ``capture`` the actual cost or ``release`` the hold. Settling is
a compare-and-set on the hold's state, so a hold is settled at most once, whoever tries
(the request, the expiry sweep after a crash, a retried webhook). A capture larger than the
hold is charged in full: the balance may then go below zero by at most that overrun.

Durability: SQLite in WAL mode with ``synchronous = NORMAL``. A committed transaction
survives a crash of the server process (kill -9); a power cut or OS crash can lose the last
transactions since the most recent WAL sync (at most a few hundred milliseconds of
requests), never corrupt the file, and never leave an entry without its running total.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from .db import utcnow
from .errors import InsufficientCredits, NotFound

ENTRY_KINDS = ("grant", "topup", "charge", "refund", "adjustment")

#: What a request's row records when it settles.
SETTLE_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "images",
    "characters",
    "seconds",
    "outputs",
    "run_seconds",
    "error_code",
    "latency_ms",
)
_SETTLE = (
    "UPDATE usage SET hold_state = :state, status = :status, cost_micros = :cost, settled_at = :now, "
    + ", ".join(f"{f} = :{f}" for f in SETTLE_FIELDS)
    + " WHERE request_id = :id AND hold_state = 'pending' RETURNING account_id, hold_micros"
)


def hold_op(
    c: sqlite3.Connection,
    request_id: str,
    account_id: str,
    amount_micros: int,
    ttl: timedelta,
    request: dict[str, Any] | None,
) -> None:
    """The hold, inside a caller's transaction (see :meth:`Ledger.hold`)."""
    now = datetime.now(UTC)
    row = dict(request or {})
    row.update(
        request_id=request_id,
        account_id=account_id,
        hold_micros=amount_micros,
        hold_state="pending",
        hold_expires_at=(now + ttl).isoformat(timespec="microseconds"),
        status="pending",
        created_at=now.isoformat(timespec="microseconds"),
    )
    cur = c.execute(
        "UPDATE accounts SET held_micros = held_micros + ?1"
        " WHERE id = ?2 AND balance_micros - held_micros >= ?1",
        (amount_micros, account_id),
    )
    if cur.rowcount == 0:
        raise InsufficientCredits(
            "Your credit balance is too low for this request. Add credits and try again."
        )
    columns = ", ".join(row)
    values = ", ".join(f":{k}" for k in row)
    c.execute(f"INSERT INTO usage ({columns}) VALUES ({values})", row)


def _settle(
    c: sqlite3.Connection, request_id: str, state: str, cost: int, fields: dict[str, Any] | None
) -> tuple[str, int] | None:
    """Compare-and-set a pending hold to ``state``; (account, held amount) or None."""
    params = dict.fromkeys(SETTLE_FIELDS)
    if fields:
        params.update((k, v) for k, v in fields.items() if k in params)
    params.update(
        id=request_id,
        state=state,
        status="succeeded" if state == "captured" else "failed",
        cost=cost,
        now=utcnow(),
    )
    row = c.execute(_SETTLE, params).fetchone()
    if row is None:
        return None
    c.execute(
        "UPDATE accounts SET held_micros = held_micros - ?, balance_micros = balance_micros - ?"
        " WHERE id = ?",
        (row[1], cost, row[0]),
    )
    return row[0], row[1]


def capture_op(
    c: sqlite3.Connection, request_id: str, cost_micros: int, fields: dict[str, Any] | None
) -> bool:
    """The capture, inside a caller's transaction (see :meth:`Ledger.capture`)."""
    settled = _settle(c, request_id, "captured", cost_micros, fields)
    if settled is None:
        return False
    if cost_micros:
        c.execute(
            "INSERT INTO ledger_entries (account_id, kind, amount_micros, reason, actor,"
            " hold_id, created_at) VALUES (?, 'charge', ?, 'usage', 'gateway', ?, ?)",
            (settled[0], -cost_micros, request_id, utcnow()),
        )
    return True


def release_op(
    c: sqlite3.Connection, request_id: str, fields: dict[str, Any] | None, state: str = "released"
) -> bool:
    """The release, inside a caller's transaction (see :meth:`Ledger.release`)."""
    return _settle(c, request_id, state, 0, fields) is not None


def post_op(
    c: sqlite3.Connection,
    account_id: str,
    amount_micros: int,
    *,
    kind: str,
    reason: str,
    actor: str,
    idempotency_key: str | None = None,
) -> int | None:
    """An entry, inside a caller's transaction (see :meth:`Ledger.post`), so a change of
    state elsewhere (a top-up order marked paid) commits with the entry or not at all."""
    if kind not in ENTRY_KINDS:
        raise ValueError(f"unknown entry kind {kind!r}")
    if not reason:
        raise ValueError("every ledger entry needs a reason")
    cur = c.execute(
        "INSERT INTO ledger_entries (account_id, kind, amount_micros, reason, actor,"
        " idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        (account_id, kind, amount_micros, reason, actor, idempotency_key, utcnow()),
    )
    if cur.rowcount == 0:
        return None
    c.execute(
        "UPDATE accounts SET balance_micros = balance_micros + ? WHERE id = ?",
        (amount_micros, account_id),
    )
    return cur.lastrowid


class GroupCommit:
    """Ledger operations of concurrent requests committed together, on the event loop.

    Each operation is queued and awaited; the first one queued in a loop iteration schedules
    a flush for the end of that iteration, which runs every queued operation in one SQLite
    transaction (each operation in a savepoint of its own) and then answers them. A request
    goes on only after its operation is committed, so
    durability is that of one transaction per request; what batching saves is the commit's
    page writes, shared by every request in the batch.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []

    def _submit(self, op: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((op, future))
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            with self.ledger._tx() as c:
                for op, future in batch:
                    if future.cancelled():  # its request is gone: do not hold for it
                        continue
                    # Each operation in its own savepoint: one that fails (a refused hold,
                    # a value SQLite cannot store) is undone alone, never its neighbours.
                    c.execute("SAVEPOINT op")
                    try:
                        outcomes.append((future, op(c), None))
                    except Exception as exc:
                        c.execute("ROLLBACK TO op")
                        outcomes.append((future, None, exc))
                    c.execute("RELEASE op")
        except Exception as exc:  # the commit itself failed: nothing of the batch happened
            outcomes = [(future, None, exc) for _, future in batch]
        for future, result, error in outcomes:
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    async def hold(
        self,
        request_id: str,
        account_id: str,
        amount_micros: int,
        ttl: timedelta,
        request: dict[str, Any] | None = None,
    ) -> None:
        await self._submit(
            lambda c: hold_op(c, request_id, account_id, amount_micros, ttl, request)
        )

    def capture(
        self, request_id: str, cost_micros: int, fields: dict[str, Any] | None = None
    ) -> asyncio.Future[bool]:
        return self._submit(lambda c: capture_op(c, request_id, cost_micros, fields))

    def release(
        self, request_id: str, fields: dict[str, Any] | None = None, *, state: str = "released"
    ) -> asyncio.Future[bool]:
        return self._submit(lambda c: release_op(c, request_id, fields, state))


@dataclass(frozen=True, slots=True)
class Balance:
    balance_micros: int
    held_micros: int

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


class Ledger:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.conn = db.conn
        self._lock = threading.Lock()  # one transaction at a time on the shared connection

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    # --- entries -----------------------------------------------------------------------

    def post(
        self,
        account_id: str,
        amount_micros: int,
        *,
        kind: str,
        reason: str,
        actor: str,
        idempotency_key: str | None = None,
    ) -> int | None:
        """Append an entry and move the balance with it. Returns the entry id, or None when
        an entry with the same idempotency key exists (nothing is changed)."""
        with self._tx() as c:
            if not c.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
                raise NotFound(f"no account {account_id!r}")
            return post_op(
                c,
                account_id,
                amount_micros,
                kind=kind,
                reason=reason,
                actor=actor,
                idempotency_key=idempotency_key,
            )

    def balance(self, account_id: str) -> Balance:
        row = self.conn.execute(
            "SELECT balance_micros, held_micros FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no account {account_id!r}")
        return Balance(row[0], row[1])

    # --- holds -------------------------------------------------------------------------

    def hold(
        self,
        request_id: str,
        account_id: str,
        amount_micros: int,
        ttl: timedelta,
        request: dict[str, Any] | None = None,
    ) -> None:
        """Reserve ``amount_micros`` if balance minus pending holds covers it, atomically,
        and open the request's usage row (``request`` gives its key, model, prices...)."""
        with self._tx() as c:
            hold_op(c, request_id, account_id, amount_micros, ttl, request)

    def capture(
        self, request_id: str, cost_micros: int, fields: dict[str, Any] | None = None
    ) -> bool:
        """Charge ``cost_micros`` against a pending hold and record the usage, at once.

        False when the hold was already settled (or expired): nothing is charged then.
        """
        with self._tx() as c:
            return capture_op(c, request_id, cost_micros, fields)

    def release(
        self, request_id: str, fields: dict[str, Any] | None = None, *, state: str = "released"
    ) -> bool:
        """Release a pending hold: the call costs nothing. False if already settled."""
        with self._tx() as c:
            return release_op(c, request_id, fields, state)

    def expire(self, now: datetime | None = None, *, running: Collection[str] = ()) -> int:
        """Release every pending hold past its expiry (left by a crash), except those of
        requests still ``running`` in this process. Returns how many."""
        cutoff = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT request_id FROM usage WHERE hold_state = 'pending' AND hold_expires_at <= ?",
                (cutoff,),
            ).fetchall()
        ]
        expired = {"error_code": "hold_expired"}
        return sum(self.release(i, expired, state="expired") for i in ids if i not in running)

    # --- audit -------------------------------------------------------------------------

    def check(self, now: datetime | None = None) -> list[str]:
        """Every inconsistency found; an empty list means the ledger is sound."""
        problems = []
        c = self.conn
        for acct, stored, summed in c.execute(
            "SELECT a.id, a.balance_micros, COALESCE(SUM(e.amount_micros), 0) FROM accounts a"
            " LEFT JOIN ledger_entries e ON e.account_id = a.id GROUP BY a.id"
            " HAVING a.balance_micros != COALESCE(SUM(e.amount_micros), 0)"
        ):
            problems.append(f"account {acct}: balance {stored} but its entries sum to {summed}")
        for acct, stored, summed in c.execute(
            "SELECT a.id, a.held_micros, COALESCE(SUM(u.hold_micros), 0) FROM accounts a"
            " LEFT JOIN usage u ON u.account_id = a.id AND u.hold_state = 'pending' GROUP BY a.id"
            " HAVING a.held_micros != COALESCE(SUM(u.hold_micros), 0)"
        ):
            problems.append(f"account {acct}: held {stored} but its pending holds sum to {summed}")
        # A charge entry exists exactly for captured requests that cost something, and for
        # the amount captured (the unique index on hold_id already forbids two).
        for request_id, state, cost, charged in c.execute(
            "SELECT u.request_id, u.hold_state, u.cost_micros, -e.amount_micros FROM usage u"
            " LEFT JOIN ledger_entries e ON e.hold_id = u.request_id"
            " WHERE (u.hold_state = 'captured' AND COALESCE(u.cost_micros, 0) != COALESCE(-e.amount_micros, 0))"
            " OR (u.hold_state != 'captured' AND e.id IS NOT NULL)"
        ):
            problems.append(f"request {request_id} ({state}): cost {cost} but charged {charged}")
        for (entry_id,) in c.execute(
            "SELECT e.id FROM ledger_entries e LEFT JOIN usage u ON u.request_id = e.hold_id"
            " WHERE e.hold_id IS NOT NULL AND u.request_id IS NULL"
        ):
            problems.append(f"entry {entry_id}: a charge for no known request")
        cutoff = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
        for (request_id,) in c.execute(
            "SELECT request_id FROM usage WHERE hold_state = 'pending' AND hold_expires_at <= ?",
            (cutoff,),
        ):
            problems.append(f"hold {request_id}: expired but still pending")
        return problems


# --- receipts ----------------------------------------------------------------------------


def list_usage(
    db: sqlite_utils.Database,
    account_id: str,
    *,
    limit: int = 20,
    starting_after: str | None = None,
    since: str | None = None,
    until: str | None = None,
    model: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """An account's usage rows, newest first; (rows, has_more). ``starting_after`` is the
    request id of the last row of the previous page."""
    where = ["account_id = :account"]
    params: dict[str, Any] = {"account": account_id, "limit": limit + 1}
    if starting_after:
        cursor = db.execute(
            "SELECT created_at FROM usage WHERE request_id = ? AND account_id = ?",
            (starting_after, account_id),
        ).fetchone()
        if cursor is None:
            raise NotFound(f"no request {starting_after!r} to page after", param="starting_after")
        where.append("(created_at, request_id) < (:c_at, :c_id)")
        params.update(c_at=cursor[0], c_id=starting_after)
    if since:
        where.append("created_at >= :since")
        params["since"] = since
    if until:
        where.append("created_at < :until")
        params["until"] = until
    if model:
        where.append("model = :model")
        params["model"] = model
    rows = list(
        db.query(
            f"SELECT * FROM usage WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, request_id DESC LIMIT :limit",
            params,
        )
    )
    return rows[:limit], len(rows) > limit


def get_usage(db: sqlite_utils.Database, account_id: str, request_id: str) -> dict[str, Any]:
    """One usage row of the account; another account's request id is simply not found."""
    rows = list(
        db.query(
            "SELECT * FROM usage WHERE request_id = ? AND account_id = ?", (request_id, account_id)
        )
    )
    if not rows:
        raise NotFound(f"No request {request_id!r} on this account", code="generation_not_found")
    return rows[0]


def transaction(ledger: Ledger) -> Any:
    """The ledger's own write transaction (``BEGIN IMMEDIATE`` under its lock), for callers
    that change their tables and the ledger together (with :func:`post_op`)."""
    return ledger._tx()
