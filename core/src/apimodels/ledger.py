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

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from .db import utcnow
from .errors import InsufficientCredits, NotFound

ENTRY_KINDS = ("grant", "topup", "charge", "refund", "adjustment")

_USAGE_COLUMNS = (
    "request_id",
    "account_id",
    "key_id",
    "model",
    "provider",
    "modality",
    "status",
    "stream",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "images",
    "characters",
    "seconds",
    "unit_prices",
    "hold_micros",
    "cost_micros",
    "error_code",
    "latency_ms",
    "created_at",
)
_INSERT_USAGE = (
    f"INSERT INTO usage ({', '.join(_USAGE_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _USAGE_COLUMNS)})"
)


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
        if kind not in ENTRY_KINDS:
            raise ValueError(f"unknown entry kind {kind!r}")
        if not reason:
            raise ValueError("every ledger entry needs a reason")
        with self._tx() as c:
            if not c.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
                raise NotFound(f"no account {account_id!r}")
            cur = c.execute(
                "INSERT INTO ledger_entries (account_id, kind, amount_micros, reason, actor,"
                " idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                (account_id, kind, amount_micros, reason, actor, idempotency_key, utcnow()),
            )
            if cur.rowcount == 0:
                return None
            c.execute(
                "UPDATE accounts SET balance_micros = balance_micros + ? WHERE id = ?",
                (amount_micros, account_id),
            )
            return cur.lastrowid

    def balance(self, account_id: str) -> Balance:
        row = self.conn.execute(
            "SELECT balance_micros, held_micros FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no account {account_id!r}")
        return Balance(row[0], row[1])

    # --- holds -------------------------------------------------------------------------

    def hold(
        self, hold_id: str, account_id: str, key_id: str | None, amount_micros: int, ttl: timedelta
    ) -> None:
        """Reserve ``amount_micros`` if balance minus pending holds covers it, atomically."""
        now = datetime.now(UTC)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE accounts SET held_micros = held_micros + ?1"
                " WHERE id = ?2 AND balance_micros - held_micros >= ?1",
                (amount_micros, account_id),
            )
            if cur.rowcount == 0:
                raise InsufficientCredits(
                    "Your credit balance is too low for this request. Add credits and try again."
                )
            c.execute(
                "INSERT INTO holds (id, account_id, key_id, amount_micros, state, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                (
                    hold_id,
                    account_id,
                    key_id,
                    amount_micros,
                    now.isoformat(timespec="microseconds"),
                    (now + ttl).isoformat(timespec="microseconds"),
                ),
            )

    def _settle(self, c: Any, hold_id: str, state: str, captured: int) -> tuple[str, int] | None:
        """Compare-and-set a pending hold to ``state``; (account, held amount) or None."""
        row = c.execute(
            "UPDATE holds SET state = ?, captured_micros = ?, settled_at = ?"
            " WHERE id = ? AND state = 'pending' RETURNING account_id, amount_micros",
            (state, captured, utcnow(), hold_id),
        ).fetchone()
        if row is None:
            return None
        c.execute(
            "UPDATE accounts SET held_micros = held_micros - ?, balance_micros = balance_micros - ?"
            " WHERE id = ?",
            (row[1], captured, row[0]),
        )
        return row[0], row[1]

    def capture(self, hold_id: str, cost_micros: int, usage: dict[str, Any] | None = None) -> bool:
        """Charge ``cost_micros`` against a pending hold (and record the usage row) at once.

        False when the hold was already settled (or expired): nothing is charged then.
        """
        with self._tx() as c:
            settled = self._settle(c, hold_id, "captured", cost_micros)
            if settled is None:
                return False
            if cost_micros:
                c.execute(
                    "INSERT INTO ledger_entries (account_id, kind, amount_micros, reason, actor,"
                    " idempotency_key, hold_id, created_at) VALUES (?, 'charge', ?, ?, 'gateway', ?, ?, ?)",
                    (settled[0], -cost_micros, "usage", "charge:" + hold_id, hold_id, utcnow()),
                )
            if usage is not None:
                c.execute(_INSERT_USAGE, _usage_row(usage, settled[1], cost_micros))
            return True

    def release(
        self, hold_id: str, usage: dict[str, Any] | None = None, *, state: str = "released"
    ) -> bool:
        """Release a pending hold: the call costs nothing. False if already settled."""
        with self._tx() as c:
            settled = self._settle(c, hold_id, state, 0)
            if settled is None:
                return False
            if usage is not None:
                c.execute(_INSERT_USAGE, _usage_row(usage, settled[1], 0))
            return True

    def expire(self, now: datetime | None = None) -> int:
        """Release every pending hold past its expiry (left by a crash). Returns how many."""
        cutoff = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM holds WHERE state = 'pending' AND expires_at <= ?", (cutoff,)
            ).fetchall()
        ]
        return sum(self.release(hold_id, state="expired") for hold_id in ids)

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
            "SELECT a.id, a.held_micros, COALESCE(SUM(h.amount_micros), 0) FROM accounts a"
            " LEFT JOIN holds h ON h.account_id = a.id AND h.state = 'pending' GROUP BY a.id"
            " HAVING a.held_micros != COALESCE(SUM(h.amount_micros), 0)"
        ):
            problems.append(f"account {acct}: held {stored} but its pending holds sum to {summed}")
        for hold_id, n in c.execute(
            "SELECT hold_id, COUNT(*) FROM ledger_entries WHERE hold_id IS NOT NULL"
            " GROUP BY hold_id HAVING COUNT(*) > 1"
        ):
            problems.append(f"hold {hold_id}: charged {n} times")
        for hold_id, state, captured, charged in c.execute(
            "SELECT h.id, h.state, h.captured_micros, COALESCE(-SUM(e.amount_micros), 0) FROM holds h"
            " LEFT JOIN ledger_entries e ON e.hold_id = h.id GROUP BY h.id"
            " HAVING (h.state = 'captured' AND COALESCE(h.captured_micros, 0) != COALESCE(-SUM(e.amount_micros), 0))"
            " OR (h.state != 'captured' AND COUNT(e.id) > 0)"
        ):
            problems.append(f"hold {hold_id} ({state}): captured {captured} but charged {charged}")
        cutoff = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
        for (hold_id,) in c.execute(
            "SELECT id FROM holds WHERE state = 'pending' AND expires_at <= ?", (cutoff,)
        ):
            problems.append(f"hold {hold_id}: expired but still pending")
        return problems


def _usage_row(usage: dict[str, Any], hold_micros: int, cost_micros: int) -> dict[str, Any]:
    row = dict.fromkeys(_USAGE_COLUMNS)
    row.update(usage)
    row["hold_micros"] = hold_micros
    row["cost_micros"] = cost_micros
    if isinstance(row["unit_prices"], dict):
        row["unit_prices"] = json.dumps(row["unit_prices"], separators=(",", ":"))
    row["created_at"] = row["created_at"] or utcnow()
    return row


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
