"""The credits ledger: append-only entries, holds and reservations, running totals.

Every amount is integer micro-USD. An account's ``balance_micros`` is the sum of its ledger
entries and ``held_micros`` the sum of its pending holds and reservations; both change only
inside the same transaction as the entry, hold or reservation they sum (``apimodels ledger
check`` recomputes them).

Two ways to set credits aside, both checked atomically against balance minus what is held
(402 when short):

- A **hold** per call (tasks): ``hold`` writes the call's usage row as pending -> ``capture``
  the actual cost or ``release``. Settling is a compare-and-set on the hold's state, so a
  hold is settled at most once, whoever tries (the worker, a webhook, the expiry sweep).
- A **reservation** per server process and account (synchronous calls, see
  ``biller.Biller``): the process sets credits aside ahead of its requests and admits them
  against that in memory; each request that ends is written once, whole (``settle_op``),
  taking its cost from the reservation. The primary key of its usage row and the unique
  charge per request make a second settle of it fail.

Two running totals per UTC day of the requests are changed in the transaction that writes
the usage rows they sum, so that what reads them reads a few rows whatever the history:
each API key's spending (``key_spend``: a pending task's hold counts as spent until the
task settles; ``apimodels.billing.limits`` leases a key's room under its spending caps
from it), and each account's calls per model and provider (``usage_daily``: calls, those
settled and failed, tokens, credits charged, upstream errors; the admin overview).

A cost larger than what was set aside is charged in full: the balance may then go below
zero by at most that overrun (and no cost exceeds the bound ``pricing.usage_ceiling`` sets
from the request). ``check`` reports a balance that ever went lower than that floor.

Durability: SQLite in WAL mode with ``synchronous = NORMAL``. A committed transaction
survives a crash of the server process (kill -9); a power cut or OS crash can lose the last
transactions since the most recent WAL sync (at most a few hundred milliseconds of
requests), never corrupt the file, and never leave an entry without its running total.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from ..errors import InsufficientCredits, NotFound
from ..store import db as store_db
from ..store.db import is_postgres, utcnow
from .usage import NO_QUANTITIES, QUANTITY_FIELDS

log = logging.getLogger("apimodels")

ENTRY_KINDS = ("grant", "topup", "charge", "refund", "adjustment")

#: What a request's row records when it settles.
SETTLE_FIELDS = (*QUANTITY_FIELDS, "error_code", "latency_ms")
_SETTLE = (
    "UPDATE usage SET hold_state = :state, status = :status, cost_micros = :cost, settled_at = :now, "
    + ", ".join(f"{f} = :{f}" for f in SETTLE_FIELDS)
    + " WHERE request_id = :id AND hold_state = 'pending'"
    " RETURNING account_id, hold_micros, key_id, created_at, model, provider"
)
#: What a usage row counts as spent by its key: its cost, or, while a task runs, its hold
#: (a task settles in the background, maybe in another process, long after it was
#: admitted). ``key_spend`` sums it per key and day; ``check`` recomputes it with this.
SPENT_BY_ROW = (
    "CASE WHEN hold_state = 'pending' AND request_id LIKE 'task!_%' ESCAPE '!'"
    " THEN hold_micros ELSE COALESCE(cost_micros, 0) END"
)
_ADD_SPENT = (
    "INSERT INTO key_spend (key_id, day, spent_micros) VALUES (?, ?, ?)"
    " ON CONFLICT (key_id, day) DO UPDATE"
    " SET spent_micros = key_spend.spent_micros + excluded.spent_micros"
)


def _counts_hold(request_id: str) -> bool:
    """Whether a pending row's hold counts as spent (``SPENT_BY_ROW``): a task's does."""
    return request_id.startswith("task_")


def add_spent_op(c: sqlite3.Connection, spent: dict[tuple[str, str], int]) -> None:
    """Add to keys' running totals, ``{(key id, day): micro-USD}``: in key order, so two
    processes' batches lock the same rows in the same order (PostgreSQL)."""
    for (key_id, day), amount in sorted(spent.items()):
        if amount:
            c.execute(_ADD_SPENT, (key_id, day, amount))


#: Error codes of a failure upstream (the provider's), as opposed to a refused request:
#: ``usage_daily`` counts them per provider.
UPSTREAM_ERROR_CODES = frozenset(
    ("upstream_error", "upstream_timeout", "upstream_overloaded", "provider_unavailable")
)
#: ``usage_daily``'s counters, in the order :func:`add_daily_op` adds them.
DAILY_COUNTERS = (
    "calls",  # every request, pending or not
    "settled",  # those no longer pending
    "failed",
    "input_tokens",
    "output_tokens",
    "cost_micros",  # what was charged
    "upstream_errors",
)
_ADD_DAILY = (
    f"INSERT INTO usage_daily (day, account_id, model, provider, {', '.join(DAILY_COUNTERS)})"
    f" VALUES (?, ?, ?, ?, {', '.join('?' * len(DAILY_COUNTERS))})"
    " ON CONFLICT (day, account_id, model, provider) DO UPDATE SET "
    + ", ".join(f"{n} = usage_daily.{n} + excluded.{n}" for n in DAILY_COUNTERS)
)
_INPUT, _OUTPUT = QUANTITY_FIELDS.index("input_tokens"), QUANTITY_FIELDS.index("output_tokens")
Daily = tuple[str, str, str, str]  # day, account, model, provider ('' for none)


def _daily(created_at: str, account_id: str, model: str | None, provider: str | None) -> Daily:
    return created_at[:10], account_id, model or "", provider or ""


#: The counters of a call that starts (a task's hold: it settles later).
_STARTED = (1, 0, 0, 0, 0, 0, 0)


def _settled(
    calls: int, failed: bool, tokens_in: Any, tokens_out: Any, cost: int, error: Any
) -> list[int]:
    """The ``DAILY_COUNTERS`` of one request that settled (``calls``: 1 when its row is
    written whole now, 0 when it was counted as it started)."""
    upstream = error in UPSTREAM_ERROR_CODES
    return [calls, 1, int(failed), tokens_in or 0, tokens_out or 0, cost, int(upstream)]


def add_daily_op(c: sqlite3.Connection, daily: dict[Daily, list[int]]) -> None:
    """Add to accounts' calls per day, model and provider, ``{(day, account, model,
    provider): counters}``: in key order, after the accounts (the batch's lock order)."""
    for group, counters in sorted(daily.items()):
        c.execute(_ADD_DAILY, (*group, *counters))


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
    if row.get("key_id") and _counts_hold(request_id):
        add_spent_op(c, {(row["key_id"], row["created_at"][:10]): amount_micros})
    group = _daily(row["created_at"], account_id, row.get("model"), row.get("provider"))
    add_daily_op(c, {group: list(_STARTED)})


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
    account_id, held, key_id, created_at, model, provider = row
    c.execute(
        "UPDATE accounts SET held_micros = held_micros - ?, balance_micros = balance_micros - ?"
        " WHERE id = ?",
        (held, cost, account_id),
    )
    if key_id:  # what the key spent: the cost now, instead of a task's hold
        add_spent_op(
            c, {(key_id, created_at[:10]): cost - (held if _counts_hold(request_id) else 0)}
        )
    counters = _settled(
        0, state != "captured", params["input_tokens"], params["output_tokens"], cost,
        params["error_code"],
    )  # fmt: skip
    add_daily_op(c, {_daily(created_at, account_id, model, provider): counters})
    return account_id, held


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
    row = c.execute(
        "INSERT INTO ledger_entries (account_id, kind, amount_micros, reason, actor,"
        " idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        " RETURNING id",
        (account_id, kind, amount_micros, reason, actor, idempotency_key, utcnow()),
    ).fetchone()
    if row is None:
        return None
    c.execute(
        "UPDATE accounts SET balance_micros = balance_micros + ? WHERE id = ?",
        (amount_micros, account_id),
    )
    return int(row[0])


#: The columns of a usage row written whole when its request ends (see :class:`Settlement`).
USAGE_COLUMNS = (
    "request_id",
    "account_id",
    "key_id",
    "model",
    "provider",
    "modality",
    "unit_prices",
    "stream",
    "hold_micros",
    "hold_state",
    "status",
    "cost_micros",
    "created_at",
    "settled_at",
    *SETTLE_FIELDS,
)
_INSERT_USAGE = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"
)
_INSERT_CHARGE = (
    "INSERT INTO ledger_entries (account_id, kind, amount_micros, reason, actor, hold_id,"
    " created_at) VALUES (?, 'charge', ?, 'usage', 'gateway', ?, ?)"
)


@dataclass(slots=True, kw_only=True)
class Settlement:
    """A request that ended: its usage row, its charge, and what it takes from the credits
    its process reserved (``taken_micros``; the rest of a cost above the reservation is
    charged from the balance alone, like any overrun). Keyword-only: several of its
    amounts are adjacent integers, which positions would let a caller swap unseen."""

    request_id: str
    account_id: str
    reservation_id: str
    hold_micros: int
    cost_micros: int  # 0 when it failed
    taken_micros: int
    succeeded: bool
    key_id: str | None
    billed_as: tuple[str | None, ...]  # model, provider, modality, unit prices (Route)
    stream: int
    created_at: str
    quantities: tuple[Any, ...] = NO_QUANTITIES  # QUANTITY_FIELDS
    error_code: str | None = None
    latency_ms: float | None = None
    #: Told, once the batch is over, whether it was recorded (False: recorded before) or the
    #: error that kept it out: called directly, before any waiter of the settle wakes.
    on_commit: Callable[[bool, BaseException | None], None] | None = None

    def row(self, now: str) -> tuple[Any, ...]:
        """Its usage row, in the order of ``USAGE_COLUMNS``."""
        return (
            self.request_id,
            self.account_id,
            self.key_id,
            *self.billed_as,
            self.stream,
            self.hold_micros,
            "captured" if self.succeeded else "released",
            "succeeded" if self.succeeded else "failed",
            self.cost_micros,
            self.created_at,
            now,
            *self.quantities,
            self.error_code,
            self.latency_ms,
        )


def settle_op(c: sqlite3.Connection, settlements: list[Settlement], now: str) -> None:
    """Write ended requests in one go: their usage rows and charges (``executemany``), then
    one update per account and per reservation, whatever the number of requests.

    A request id seen before fails the whole call (the primary key and the unique charge
    index): a request is recorded and charged at most once.
    """
    c.executemany(_INSERT_USAGE, [s.row(now) for s in settlements])
    charges = [
        (s.account_id, -s.cost_micros, s.request_id, now) for s in settlements if s.cost_micros
    ]
    if charges:
        c.executemany(_INSERT_CHARGE, charges)
    spent: dict[str, int] = {}
    by_key: dict[tuple[str, str], int] = {}
    daily: dict[Daily, list[int]] = {}
    taken: dict[tuple[str, str], int] = {}
    for s in settlements:
        spent[s.account_id] = spent.get(s.account_id, 0) + s.cost_micros
        if s.key_id and s.cost_micros:
            day = (s.key_id, s.created_at[:10])
            by_key[day] = by_key.get(day, 0) + s.cost_micros
        q = s.quantities
        one = _settled(1, not s.succeeded, q[_INPUT], q[_OUTPUT], s.cost_micros, s.error_code)
        group = _daily(s.created_at, s.account_id, s.billed_as[0], s.billed_as[1])
        if (counters := daily.get(group)) is not None:
            one = [a + b for a, b in zip(counters, one, strict=True)]
        daily[group] = one
        if s.taken_micros:
            key = (s.reservation_id, s.account_id)
            taken[key] = taken.get(key, 0) + s.taken_micros
    unheld: dict[str, int] = {}
    # In key order: two processes' batches lock the same rows in the same order (PostgreSQL).
    for (reservation_id, account_id), amount in sorted(taken.items()):
        # A reservation released meanwhile (expired by another process) no longer holds
        # anything: then the charge comes from the balance alone.
        if c.execute(
            "UPDATE reservations SET amount_micros = amount_micros - ?1"
            " WHERE id = ?2 AND amount_micros >= ?1",
            (amount, reservation_id),
        ).rowcount:
            unheld[account_id] = unheld.get(account_id, 0) + amount
    for account_id, cost in sorted(spent.items()):
        if cost or unheld.get(account_id):
            c.execute(
                "UPDATE accounts SET balance_micros = balance_micros - ?,"
                " held_micros = held_micros - ? WHERE id = ?",
                (cost, unheld.get(account_id, 0), account_id),
            )
    add_spent_op(c, by_key)  # after the accounts: each batch locks accounts first
    add_daily_op(c, daily)


_AVAILABLE = "SELECT balance_micros - held_micros FROM accounts WHERE id = ?"
_AVAILABLE_FOR_UPDATE = _AVAILABLE + " FOR NO KEY UPDATE"


def reserve_op(
    c: sqlite3.Connection,
    reservation_id: str,
    account_id: str,
    process: str,
    need: int,
    want: int,
    expires_at: str,
) -> int:
    """Set aside between ``need`` and ``want`` more micro-USD of the account's available
    credits for its process's reservation (beyond ``need``, at most half of what is left);
    how much was set aside. 402 when even ``need`` is not available (nothing is written
    then)."""
    # PostgreSQL: the row stays locked until the grant below (SQLite's write lock does it);
    # NO KEY UPDATE, as the UPDATE itself takes: it does not wait for the KEY SHARE locks
    # that other transactions' inserts referencing the account hold (a deadlock otherwise).
    row = c.execute(
        _AVAILABLE_FOR_UPDATE if is_postgres(c) else _AVAILABLE, (account_id,)
    ).fetchone()
    if row is None or row[0] < need:
        raise InsufficientCredits(
            "Your credit balance is too low for this request. Add credits and try again."
        )
    # At most half of the rest: other processes serving the account can still admit calls.
    granted = need + max(0, min(want - need, (row[0] - need) // 2))
    c.execute(
        "UPDATE accounts SET held_micros = held_micros + ? WHERE id = ?", (granted, account_id)
    )
    c.execute(
        "INSERT INTO reservations (id, account_id, process, amount_micros, expires_at,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " amount_micros = reservations.amount_micros + excluded.amount_micros,"
        " expires_at = excluded.expires_at",
        (reservation_id, account_id, process, granted, expires_at, utcnow()),
    )
    return granted


def unreserve_op(c: sqlite3.Connection, reservation_id: str) -> int:
    """Return a reservation's credits to its account; how much it held (0 if gone)."""
    row = c.execute(
        "DELETE FROM reservations WHERE id = ? RETURNING account_id, amount_micros",
        (reservation_id,),
    ).fetchone()
    if row is None:
        return 0
    c.execute("UPDATE accounts SET held_micros = held_micros - ? WHERE id = ?", (row[1], row[0]))
    return int(row[1])


def renew_op(c: sqlite3.Connection, process: str, expires_at: str) -> set[str]:
    """Push back the expiry of a live process's reservations; the ids it still has."""
    return {
        r[0]
        for r in c.execute(
            "UPDATE reservations SET expires_at = ? WHERE process = ? RETURNING id",
            (expires_at, process),
        )
    }


_Op = tuple[str, Any, "asyncio.Future[Any]"]


class GroupCommit:
    """The gateway's ledger writes, committed together, in order.

    Each write is queued and its future awaited. A write someone waits for (a reservation
    to grow; :meth:`settle`) has the queue flushed at the end of the loop iteration that
    queued it; an answered call's charge, which nobody waits for (:meth:`settle_later`),
    may wait up to ``delay`` seconds for company (group commit: a batch costs one transaction
    and two ``executemany`` calls, however many requests it holds). A flush applies every
    queued write in one SQLite transaction, in order, and answers them once it is
    committed; :meth:`commit` flushes at once, so that a read sees what this process
    wrote. If anything in a batch fails unexpectedly, the batch is rolled back and each
    write is retried in a transaction of its own, so it fails alone and never takes its
    neighbours with it.

    Where a batch is written: on SQLite, in place, on the event loop (a transaction of a
    local file costs microseconds; a thread's hand-over would cost more). On PostgreSQL, on
    a writer thread of its own, one batch after the other, in order: a batch waits for
    network round trips, and the event loop serves requests meanwhile. Its writes are
    answered on the event loop once it is committed, as in place.
    """

    def __init__(self, ledger: Ledger, delay: float = 0.0) -> None:
        self.ledger = ledger
        self.delay = delay
        self._queue: list[_Op] = []
        self._soon = False  # a flush is due at the end of this loop iteration
        self._later: asyncio.TimerHandle | None = None  # or within ``delay``
        self._loop: asyncio.AbstractEventLoop | None = None  # where they are due
        self._writer = (
            ThreadPoolExecutor(1, thread_name_prefix="apimodels-ledger")
            if ledger.postgres
            else None
        )
        self._written: Future[Any] | None = None  # the last batch given to the writer

    def _submit(self, kind: str, args: Any, *, later: bool = False) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a flush due on a loop that stopped will never come
            self._loop, self._soon, self._later = loop, False, None
        future = loop.create_future()
        self._queue.append((kind, args, future))
        if self._soon:
            return future
        if not later or not self.delay:
            self._soon = True
            loop.call_soon(self._flush)
        elif self._later is None:
            self._later = loop.call_later(self.delay, self._flush)
        return future

    def settle(self, settlement: Settlement) -> asyncio.Future[bool]:
        """Record an ended request (and its charge): True once committed, False if it was
        not (recorded before, or the write failed: see ``Settlement.on_commit``)."""
        return self._submit("settle", settlement)

    def settle_later(self, settlement: Settlement) -> asyncio.Future[bool]:
        """:meth:`settle` for a request nobody waits on: committed within ``delay``,
        together with the writes queued meanwhile."""
        return self._submit("settle", settlement, later=True)

    def commit(self) -> None:
        """Commit every queued write now (before a read that must see them): on the
        writer thread, wait for it (their futures are answered on the event loop)."""
        if self._queue:
            self._flush()
        if self._written is not None:
            futures.wait([self._written])

    async def flushed(self) -> None:
        """:meth:`commit`, awaited: on the writer thread, the event loop serves other
        requests while it writes."""
        if self._queue:
            self._flush()
        if self._written is not None and not self._written.done():
            with contextlib.suppress(Exception):  # its writes' waiters are told
                await asyncio.wrap_future(self._written)

    def reserve(
        self,
        reservation_id: str,
        account_id: str,
        process: str,
        need: int,
        want: int,
        expires_at: str,
    ) -> asyncio.Future[int]:
        return self._submit(
            "reserve", (reservation_id, account_id, process, need, want, expires_at)
        )

    def unreserve(self, reservation_id: str) -> asyncio.Future[int]:
        return self._submit("unreserve", (reservation_id,))

    def renew(self, process: str, expires_at: str) -> asyncio.Future[set[str]]:
        return self._submit("renew", (process, expires_at))

    def write(self, op: Callable[..., Any], *args: Any, later: bool = False) -> asyncio.Future[Any]:
        """Run ``op(connection, *args)`` at the end of this loop iteration (or, ``later``,
        within ``delay``), in the transaction of every write queued before it: a record
        that must never be committed without them (an idempotent answer, and its call's
        charge)."""
        return self._submit("write", (op, args), later=later)

    @staticmethod
    def _apply(c: sqlite3.Connection, batch: list[_Op], now: str) -> list[tuple[Any, Any]]:
        """Apply a batch in order; (result, expected error) per write. Raises on anything
        unexpected, leaving the rollback to the caller."""
        outcomes: list[tuple[Any, Any]] = []
        settling: list[Settlement] = []

        def settle_pending() -> None:
            if settling:
                settle_op(c, settling, now)
                outcomes.extend((True, None) for _ in settling)
                settling.clear()

        for kind, args, _ in batch:
            if kind == "settle":
                settling.append(args)
                continue
            settle_pending()
            if kind == "reserve":
                try:
                    outcomes.append((reserve_op(c, *args), None))
                except InsufficientCredits as exc:  # refused before writing anything
                    outcomes.append((None, exc))
            elif kind == "unreserve":
                outcomes.append((unreserve_op(c, *args), None))
            elif kind == "renew":
                outcomes.append((renew_op(c, *args), None))
            else:  # "write"
                op, op_args = args
                outcomes.append((op(c, *op_args), None))
        settle_pending()
        return outcomes

    def _flush(self) -> None:
        self._soon = False
        if self._later is not None:
            self._later.cancel()
            self._later = None
        batch, self._queue = self._queue, []
        if not batch:  # flushed already by commit()
            return
        if self._writer is None:
            try:
                outcomes = self._write(batch)
            except BaseException:
                # Interrupted (rolled back): no waiter of this batch may wait forever.
                _cancel(batch)
                raise
            self._answer(batch, outcomes)
            return
        loop = self._loop
        assert loop is not None
        written = self._written = self._writer.submit(self._write, batch)

        def answer(written: Future[list[tuple[Any, Any]]]) -> None:  # on the event loop
            if written.cancelled() or written.exception() is not None:
                _cancel(batch)
            else:
                self._answer(batch, written.result())

        def done(written: Future[list[tuple[Any, Any]]]) -> None:  # on the writer thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(answer, written)

        written.add_done_callback(done)

    def _write(self, batch: list[_Op]) -> list[tuple[Any, Any]]:
        """Apply a batch in one transaction (or each write alone if it fails): the
        outcome of each, (result, error)."""
        now = utcnow()
        try:
            with self.ledger._tx() as c:
                return self._apply(c, batch, now)
        except store_db.RETRY_ERRORS:  # a deadlock between processes' batches: each write alone
            return [self._alone(op, now) for op in batch]
        except store_db.UNAVAILABLE_ERRORS as exc:
            # Busy past the timeout, or failing: each write alone would wait or fail the
            # same way, one timeout each, so they fail together.
            log.error("ledger: a batch of %d writes failed: %s", len(batch), exc)
            return [(None, exc)] * len(batch)
        except Exception:
            return [self._alone(op, now) for op in batch]

    def _answer(self, batch: list[_Op], outcomes: list[tuple[Any, Any]]) -> None:
        for (kind, args, future), (result, error) in zip(batch, outcomes, strict=True):
            if kind == "settle":  # its future tells whether it was recorded, never raises
                self._settled(args, bool(result), error)
                if not future.cancelled():
                    future.set_result(bool(result))
                continue
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    @staticmethod
    def _settled(settlement: Settlement, recorded: bool, error: BaseException | None) -> None:
        if settlement.on_commit is None:
            if error is not None:
                log.error("settling %s failed: %s", settlement.request_id, type(error).__name__)
            return
        try:
            settlement.on_commit(recorded, error)
        except Exception as exc:  # never leave the batch's other waiters hanging
            log.error("after settling %s: %s", settlement.request_id, type(exc).__name__)

    def _alone(self, op: _Op, now: str) -> tuple[Any, Any]:
        """One write of a failed batch, in a transaction of its own."""
        kind, args, _ = op
        try:
            with self.ledger._tx() as c:
                [outcome] = self._apply(c, [op], now)
                return outcome
        except store_db.INTEGRITY_ERRORS as exc:
            try:
                if kind == "settle" and self._recorded(args.request_id):
                    return False, None  # recorded before: never charged twice
            except Exception as error:  # the database failing now: this write failed
                return None, error
            return None, exc
        except Exception as exc:
            return None, exc

    def _recorded(self, request_id: str) -> bool:
        sql = "SELECT 1 FROM usage WHERE request_id = ?"
        return self.ledger.conn.execute(sql, (request_id,)).fetchone() is not None


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
        self.postgres = is_postgres(db)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        if self.postgres:
            # A pooled connection per transaction, no lock: every write of the ledger is a
            # conditional update or takes its row lock (reserve_op), so transactions of
            # several threads and processes interleave safely.
            with self.conn:
                yield self.conn
            return
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT too (disk full, I/O error): never stay mid-transaction.
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

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
        requests still ``running`` in this process, and every reservation its process no
        longer renews (it died). Returns how many."""
        cutoff = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT request_id FROM usage WHERE hold_state = 'pending' AND hold_expires_at <= ?",
                (cutoff,),
            ).fetchall()
        ]
        expired = {"error_code": "hold_expired"}
        n = sum(self.release(i, expired, state="expired") for i in ids if i not in running)
        reservations = [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM reservations WHERE expires_at <= ?", (cutoff,)
            ).fetchall()
        ]
        for reservation_id in reservations:
            with self._tx() as c:
                unreserve_op(c, reservation_id)
        return n + len(reservations)

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
            "SELECT id, held_micros, held FROM (SELECT a.id, a.held_micros,"
            " COALESCE((SELECT SUM(u.hold_micros) FROM usage u"
            "  WHERE u.account_id = a.id AND u.hold_state = 'pending'), 0)"
            " + COALESCE((SELECT SUM(r.amount_micros) FROM reservations r"
            "  WHERE r.account_id = a.id), 0) AS held FROM accounts a) AS t"
            " WHERE held_micros != held"
        ):
            problems.append(
                f"account {acct}: held {stored} but its pending holds and reservations"
                f" sum to {summed}"
            )
        for reservation_id, amount in c.execute(
            "SELECT id, amount_micros FROM reservations WHERE amount_micros < 0"
        ):
            problems.append(f"reservation {reservation_id}: negative amount {amount}")
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
        problems.extend(_spent_problems(c))
        problems.extend(_daily_problems(c))
        problems.extend(_below_floor(c))
        cutoff = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
        for (request_id,) in c.execute(
            "SELECT request_id FROM usage WHERE hold_state = 'pending' AND hold_expires_at <= ?",
            (cutoff,),
        ):
            problems.append(f"hold {request_id}: expired but still pending")
        for (reservation_id,) in c.execute(
            "SELECT id FROM reservations WHERE expires_at <= ?", (cutoff,)
        ):
            problems.append(f"reservation {reservation_id}: expired but still held")
        return problems


def _spent_problems(c: sqlite3.Connection) -> list[str]:
    """Days of ``key_spend`` that differ from what their keys' usage rows spent."""
    return [
        f"key {key_id} on {day}: spent {stored} but its usage sums to {summed}"
        for key_id, day, stored, summed in c.execute(
            "SELECT key_id, day, SUM(stored), SUM(summed) FROM (SELECT key_id, day,"
            " spent_micros AS stored, 0 AS summed FROM key_spend UNION ALL SELECT key_id,"
            f" substr(created_at, 1, 10), 0, {SPENT_BY_ROW} FROM usage WHERE key_id IS NOT NULL)"
            " AS spending GROUP BY key_id, day HAVING SUM(stored) != SUM(summed)"
        )
    ]


def _daily_problems(c: sqlite3.Connection) -> list[str]:
    """Groups of ``usage_daily`` whose counters differ from their usage rows' sums."""
    codes = ", ".join(f"'{code}'" for code in sorted(UPSTREAM_ERROR_CODES))
    settled = "CASE WHEN hold_state != 'pending' THEN {} ELSE 0 END"
    from_rows = [
        "1",
        settled.format("1"),
        "CASE WHEN status = 'failed' AND hold_state != 'pending' THEN 1 ELSE 0 END",
        settled.format("COALESCE(input_tokens, 0)"),
        settled.format("COALESCE(output_tokens, 0)"),
        settled.format("COALESCE(cost_micros, 0)"),
        f"CASE WHEN error_code IN ({codes}) THEN 1 ELSE 0 END",
    ]
    stored = ", ".join(f"{n} AS {n}" for n in DAILY_COUNTERS)
    negated = ", ".join(f"-({e})" for e in from_rows)
    sums = ", ".join(f"SUM({n})" for n in DAILY_COUNTERS)
    differs = " OR ".join(f"SUM({n}) != 0" for n in DAILY_COUNTERS)
    problems = []
    for day, account, model, provider, *off in c.execute(
        f"SELECT day, account_id, model, provider, {sums} FROM (SELECT day, account_id, model,"
        f" provider, {stored} FROM usage_daily UNION ALL SELECT substr(created_at, 1, 10),"
        f" account_id, COALESCE(model, ''), COALESCE(provider, ''), {negated} FROM usage)"
        f" AS counted GROUP BY day, account_id, model, provider HAVING {differs}"
    ):
        wrong = ", ".join(f"{n} {d:+d}" for n, d in zip(DAILY_COUNTERS, off, strict=True) if d)
        problems.append(
            f"account {account} on {day} ({model or '-'}, {provider or '-'}): its daily"
            f" totals are off their usage rows by {wrong}"
        )
    return problems


def _cancel(batch: list[_Op]) -> None:
    for _, _, future in batch:
        future.cancel()


def _below_floor(c: sqlite3.Connection) -> list[str]:
    """Accounts whose balance ever went below its floor, replaying entries in order.

    A call is admitted only while the account's available credits cover its hold, so a
    balance goes below zero only by what charges took beyond their holds (overruns) and
    what refunds and other negative entries removed; credits added later pay that back
    first. Anything lower is an overdraft: credits spent that the account never had.
    """
    problems: list[str] = []
    account, balance, deficit, reported = None, 0, 0, False
    for entry_id, account_id, amount, kind, hold, cost in c.execute(
        "SELECT e.id, e.account_id, e.amount_micros, e.kind, u.hold_micros, u.cost_micros"
        " FROM ledger_entries e LEFT JOIN usage u ON u.request_id = e.hold_id"
        " ORDER BY e.account_id, e.id"
    ):
        if account_id != account:
            account, balance, deficit, reported = account_id, 0, 0, False
        balance += amount
        if kind == "charge":
            deficit += max(0, (cost or 0) - (hold or 0))
        elif amount < 0:
            deficit -= amount
        else:
            deficit = max(0, deficit - amount)
        if balance < -deficit and not reported:
            reported = True
            problems.append(
                f"account {account_id}: balance {balance} after entry {entry_id}, below its"
                f" floor {-deficit} (overdrawn: credits spent that it did not have)"
            )
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
