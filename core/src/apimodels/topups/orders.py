"""Top-up orders: the order store and its state machine.

    creating --(Checkout Session made)--> open --(paid)--> paid
        |                                  |  \\--(delayed method pending)--> processing --> paid
        v                                  v                                    \\--> failed
      failed (Stripe refused)         expired | failed

Every change that moves money is a compare-and-set on the order in the same transaction as
its ledger entry, whose idempotency key names the order (``topup:ORDER``) or the Stripe
object behind it (refund, dispute), so replayed, reordered or concurrent deliveries of the
same fact move the balance once. Refunds are cumulative: Stripe reports a charge's total
``amount_refunded``, and only the part not yet recorded is debited, whoever records it first
(the webhook or ``apimodels orders refund``).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import sqlite_utils

from ..billing.ledger import post_op
from ..errors import NotFound
from ..store.db import utcnow
from .rates import Rate, minor_to_usd_micros, usd_cents, usd_micros, usd_to_cny_fen

CREDITABLE = ("open", "processing")


def _dict(cur: sqlite3.Cursor) -> dict[str, Any] | None:
    row = cur.fetchone()
    if row is None:
        return None
    return {d[0]: v for d, v in zip(cur.description, row, strict=True)}


def new_order(
    db: sqlite_utils.Database, account_id: str, method: str, usd: Decimal, rate: Rate | None
) -> dict[str, Any]:
    """Record a new order (``creating``): what it buys, what Stripe will charge for it."""
    now = utcnow()
    row: dict[str, Any] = {
        "id": "ord_" + secrets.token_hex(12),
        "account_id": account_id,
        "method": method,
        "status": "creating",
        "amount_usd_micros": usd_micros(usd),
        "currency": "usd",
        "amount_minor": usd_cents(usd),
        "rate": None,
        "rate_source": None,
        "rate_as_of": None,
        "refunded_usd_micros": 0,
        "refunded_minor": 0,
        "created_at": now,
        "updated_at": now,
    }
    if method == "alipay":
        assert rate is not None
        row.update(
            currency="cny",
            amount_minor=usd_to_cny_fen(usd, rate.cny_per_usd),
            rate=str(rate.cny_per_usd),
            rate_source=rate.source,
            rate_as_of=rate.as_of.isoformat(),
        )
    db["topup_orders"].insert(row)
    return row


def set_opened(db: sqlite_utils.Database, order_id: str, session_id: str, url: str) -> None:
    db.execute(
        "UPDATE topup_orders SET status = 'open', stripe_session_id = ?, checkout_url = ?,"
        " updated_at = ? WHERE id = ? AND status = 'creating'",
        [session_id, url, utcnow(), order_id],
    )


def set_creation_failed(db: sqlite_utils.Database, order_id: str, code: str) -> None:
    db.execute(
        "UPDATE topup_orders SET status = 'failed', error_code = ?, updated_at = ?"
        " WHERE id = ? AND status = 'creating'",
        [code, utcnow(), order_id],
    )


def get_order(
    db: sqlite_utils.Database, order_id: str, account_id: str | None = None
) -> dict[str, Any]:
    """One order (only the account's own when ``account_id`` is given: others are 404)."""
    sql, params = "SELECT * FROM topup_orders WHERE id = ?", [order_id]
    if account_id is not None:
        sql += " AND account_id = ?"
        params.append(account_id)
    rows = list(db.query(sql, params))
    if not rows:
        raise NotFound(f"No top-up order '{order_id}'.", code="order_not_found", param="id")
    return rows[0]


def list_orders(
    db: sqlite_utils.Database,
    account_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    where, params = [], []
    if account_id is not None:
        where.append("account_id = ?")
        params.append(account_id)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return list(
        db.query(
            f"SELECT * FROM topup_orders {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
    )


def order_entries(db: sqlite_utils.Database, order_id: str) -> list[dict[str, Any]]:
    """The ledger entries that belong to an order, oldest first."""
    return list(
        db.query(
            "SELECT e.*, t.stripe_event_id FROM topup_entries t"
            " JOIN ledger_entries e ON e.id = t.entry_id WHERE t.order_id = ? ORDER BY e.id",
            [order_id],
        )
    )


# --- changes inside a caller's ledger transaction -------------------------------------------


def order_op(c: sqlite3.Connection, **where: str) -> dict[str, Any] | None:
    """The order with ``id``, ``stripe_session_id`` or ``stripe_payment_intent``."""
    ((column, value),) = where.items()
    assert column in ("id", "stripe_session_id", "stripe_payment_intent")
    return _dict(c.execute(f"SELECT * FROM topup_orders WHERE {column} = ?", (value,)))


def _link(
    c: sqlite3.Connection, entry_id: int, order_id: str, event_id: str | None, kind: str
) -> None:
    c.execute(
        "INSERT INTO topup_entries (entry_id, order_id, stripe_event_id, kind) VALUES (?, ?, ?, ?)",
        (entry_id, order_id, event_id, kind),
    )


def credit_op(
    c: sqlite3.Connection, order: dict[str, Any], payment_intent: str | None, event_id: str
) -> bool:
    """Mark a payable order paid and credit its USD amount, at most once. False when the
    order was not payable (already paid, failed or expired): nothing changes then."""
    now = utcnow()
    cur = c.execute(
        "UPDATE topup_orders SET status = 'paid', paid_at = ?, updated_at = ?,"
        " stripe_payment_intent = COALESCE(?, stripe_payment_intent)"
        " WHERE id = ? AND status IN ('open', 'processing')",
        (now, now, payment_intent, order["id"]),
    )
    if cur.rowcount == 0:
        return False
    entry = post_op(
        c,
        order["account_id"],
        order["amount_usd_micros"],
        kind="topup",
        reason=f"top-up {order['id']} ({order['method']}, {_money(order)})",
        actor="stripe",
        idempotency_key=f"topup:{order['id']}",
    )
    if entry is None:  # cannot happen while the CAS above holds; never credit twice anyway
        raise RuntimeError(f"order {order['id']} was credited without being paid")
    _link(c, entry, order["id"], event_id, "topup")
    return True


def transition_op(
    c: sqlite3.Connection,
    order_id: str,
    from_states: tuple[str, ...],
    to: str,
    code: str | None = None,
) -> bool:
    marks = ",".join("?" * len(from_states))
    cur = c.execute(
        f"UPDATE topup_orders SET status = ?, error_code = COALESCE(?, error_code), updated_at = ?"
        f" WHERE id = ? AND status IN ({marks})",
        (to, code, utcnow(), order_id, *from_states),
    )
    return cur.rowcount == 1


def refund_total_op(
    c: sqlite3.Connection,
    order: dict[str, Any],
    refunded_minor: int,
    *,
    key: str,
    reason: str,
    actor: str,
    event_id: str | None = None,
) -> int:
    """Record that Stripe has refunded ``refunded_minor`` of the order's charge in total:
    debit the credits behind the part not yet recorded. Returns the micro-USD debited
    (0 when that total was already recorded, e.g. by the other path)."""
    current = _dict(
        c.execute(
            "SELECT refunded_minor, refunded_usd_micros FROM topup_orders WHERE id = ?",
            (order["id"],),
        )
    )
    assert current is not None
    total = min(refunded_minor, order["amount_minor"])
    if total <= current["refunded_minor"]:
        return 0
    before = minor_to_usd_micros(
        current["refunded_minor"], order["amount_minor"], order["amount_usd_micros"]
    )
    after = minor_to_usd_micros(total, order["amount_minor"], order["amount_usd_micros"])
    debit = min(after - before, order["amount_usd_micros"] - current["refunded_usd_micros"])
    cur = c.execute(
        "UPDATE topup_orders SET refunded_minor = ?, refunded_usd_micros = refunded_usd_micros + ?,"
        " updated_at = ? WHERE id = ? AND refunded_minor = ?",
        (total, max(debit, 0), utcnow(), order["id"], current["refunded_minor"]),
    )
    assert cur.rowcount == 1  # we hold the write lock: nobody moved it since the read
    if debit <= 0:
        return 0
    entry = post_op(
        c,
        order["account_id"],
        -debit,
        kind="refund",
        reason=reason,
        actor=actor,
        idempotency_key=key,
    )
    if entry is None:
        raise RuntimeError(f"refund {key} of order {order['id']} was recorded twice")
    _link(c, entry, order["id"], event_id, "refund")
    return debit


def dispute_op(
    c: sqlite3.Connection,
    order: dict[str, Any],
    dispute_id: str,
    amount_minor: int,
    *,
    won: bool,
    event_id: str,
) -> int:
    """A dispute opened takes the disputed credits back; a dispute won gives back exactly
    what its opening took. Each at most once, in either order: a "won" seen before the
    opening claims the opening's key with a zero entry, so the late opening takes nothing.
    Returns the signed micro-USD moved."""
    opened = f"dispute:{dispute_id}"
    taken = c.execute(
        "SELECT amount_micros FROM ledger_entries WHERE idempotency_key = ?", (opened,)
    ).fetchone()
    if won:
        if taken is None:
            key, amount, note = opened, 0, "closed as won before its opening was seen"
        else:
            key, amount, note = f"dispute-won:{dispute_id}", -taken[0], "won"
        kind = "adjustment"
    else:
        if taken is not None:
            return 0
        left = _dict(
            c.execute("SELECT refunded_usd_micros FROM topup_orders WHERE id = ?", (order["id"],))
        )
        assert left is not None
        usd = minor_to_usd_micros(amount_minor, order["amount_minor"], order["amount_usd_micros"])
        key, kind, note = opened, "refund", "opened"
        amount = -min(usd, order["amount_usd_micros"] - left["refunded_usd_micros"])
    entry = post_op(
        c,
        order["account_id"],
        amount,
        kind=kind,
        reason=f"dispute {dispute_id} on top-up {order['id']} {note}",
        actor="stripe",
        idempotency_key=key,
    )
    if entry is None:
        return 0
    c.execute(
        "UPDATE topup_orders SET refunded_usd_micros = refunded_usd_micros - ?, updated_at = ?"
        " WHERE id = ?",
        (amount, utcnow(), order["id"]),
    )
    _link(c, entry, order["id"], event_id, "dispute")
    return amount


def _money(order: dict[str, Any]) -> str:
    minor = Decimal(order["amount_minor"]) / 100
    return f"{minor:.2f} {order['currency'].upper()}"


# --- review ------------------------------------------------------------------------------


def reconcile(db: sqlite_utils.Database) -> list[str]:
    """Every mismatch between orders and their ledger entries; empty when all agree.

    A paid order has exactly one top-up entry of its USD amount, and its linked entries sum
    to what it bought minus what refunds and disputes took back; an order that is not paid
    has no entries at all; no top-up entry names an order that does not exist.
    """
    problems = []
    for o in db.query("SELECT * FROM topup_orders ORDER BY created_at"):
        entries = order_entries(db, o["id"])
        credits = [e for e in entries if e["kind"] == "topup"]
        total = sum(e["amount_micros"] for e in entries)
        if o["status"] == "paid":
            if len(credits) != 1 or credits[0]["amount_micros"] != o["amount_usd_micros"]:
                got = ", ".join(str(e["amount_micros"]) for e in credits) or "none"
                problems.append(
                    f"order {o['id']} is paid ({o['amount_usd_micros']} micro-USD) but its "
                    f"top-up credits are: {got}"
                )
            elif total != o["amount_usd_micros"] - o["refunded_usd_micros"]:
                problems.append(
                    f"order {o['id']}: entries sum to {total} micro-USD, expected "
                    f"{o['amount_usd_micros'] - o['refunded_usd_micros']}"
                )
        elif entries:
            problems.append(
                f"order {o['id']} is {o['status']} but has {len(entries)} ledger entries "
                f"({total} micro-USD)"
            )
    for (key,) in db.execute(
        "SELECT e.idempotency_key FROM ledger_entries e WHERE e.kind = 'topup'"
        " AND e.idempotency_key LIKE 'topup:%' AND NOT EXISTS"
        " (SELECT 1 FROM topup_orders o WHERE 'topup:' || o.id = e.idempotency_key)"
    ).fetchall():
        problems.append(f"ledger entry {key} names no known order")
    return problems


def reconcile_with_stripe(
    db: sqlite_utils.Database, retrieve_session: Callable[[str], Any], since: str
) -> list[str]:
    """Orders made since ``since`` that Stripe reports paid but that are not paid here: a
    webhook lost, refused or never configured. ``retrieve_session`` asks Stripe's API."""
    problems = []
    for o in db.query(
        "SELECT * FROM topup_orders WHERE status != 'paid' AND stripe_session_id IS NOT NULL"
        " AND created_at >= ? ORDER BY created_at",
        [since],
    ):
        session = retrieve_session(o["stripe_session_id"])
        if session.payment_status == "paid":
            problems.append(
                f"order {o['id']} is {o['status']} here but paid at Stripe (session "
                f"{o['stripe_session_id']}): its webhook was lost or refused"
            )
    return problems
