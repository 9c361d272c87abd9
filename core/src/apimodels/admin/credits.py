"""Credits an operator moves: grants (free credits) and adjustments (corrections of a
billing error, either sign), each a ledger entry with its reason, and audited."""

from __future__ import annotations

from typing import Any

from ..billing.ledger import post_op, transaction
from ..errors import InvalidRequest
from ..store import accounts as acc
from . import audit
from .context import Actor, Operations, need_reason, require_write

KINDS = ("grant", "adjustment")


def post_credits(
    ops: Operations,
    actor: Actor,
    account: str,
    amount_micros: int,
    *,
    kind: str,
    reason: str | None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Post a grant (positive) or an adjustment (non-zero) to ``account``. Returns the
    entry id (None when ``idempotency_key`` was used before: nothing changed, nothing
    audited) and the balance after. The entry and its audit commit together."""
    require_write(actor)
    reason = need_reason(reason)
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}", param="kind")
    if amount_micros == 0 or (kind == "grant" and amount_micros < 0):
        raise InvalidRequest(
            "A grant is a positive amount; an adjustment, a non-zero one", param="amount_usd"
        )
    row = acc.get_account(ops.db, account)
    with transaction(ops.ledger) as c:
        before = c.execute(
            "SELECT balance_micros FROM accounts WHERE id = ?", (row["id"],)
        ).fetchone()[0]
        entry = post_op(
            c,
            row["id"],
            amount_micros,
            kind=kind,
            reason=reason,
            actor=actor.name,
            idempotency_key=idempotency_key,
        )
        if entry is not None:
            audit.record_op(
                c,
                actor,
                f"credits.{kind}",
                row["id"],
                reason=reason,
                before={"balance_micros": before},
                after={"balance_micros": before + amount_micros, "entry_id": entry},
            )
    b = ops.ledger.balance(row["id"])
    return {
        "account_id": row["id"],
        "entry_id": entry,
        "kind": kind,
        "amount_micros": amount_micros,
        "balance_micros": b.balance_micros,
        "held_micros": b.held_micros,
    }
