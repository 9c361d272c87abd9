"""Accounts as an operator sees them: search, the whole picture of one, and the changes of
status (suspend, unsuspend, close), each with a reason and audited."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from ..policy.audit import list_violations, mark_reviewed
from ..privacy import close_account as close
from ..store import accounts as acc
from ..topups.orders import list_orders
from . import audit
from .context import Actor, Operations, need_reason, require_write

#: How many of each of an account's recent rows its detail shows.
RECENT = 10


def _view(row: dict[str, Any]) -> dict[str, Any]:
    """An account row as an operator sees it: its running totals (kept by the ledger in the
    same row), never its webhook secret."""
    return {
        "id": row["id"],
        "email": row["email"],
        "status": row["status"],
        "status_reason": row["status_reason"],
        "created_at": row["created_at"],
        "closed_at": row.get("closed_at"),
        "balance_micros": row["balance_micros"],
        "held_micros": row["held_micros"],
    }


def _contains(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its own % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_accounts(
    ops: Operations, query: str | None = None, *, limit: int = 20, starting_after: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """Accounts whose id is ``query`` or whose email contains it (all when None), ordered
    by id; ``starting_after`` is the last id of a page. (rows, has_more)."""
    where, params = ["1 = 1"], []
    if query:
        where.append("(id = ? OR email LIKE ? ESCAPE '\\')")
        params += [query.strip(), _contains(query.strip().lower())]
    if starting_after:
        where.append("id > ?")
        params.append(starting_after)
    rows = list(
        ops.db.query(
            f"SELECT * FROM accounts WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            [*params, limit + 1],
        )
    )
    return [_view(r) for r in rows[:limit]], len(rows) > limit


def account_detail(ops: Operations, account: str) -> dict[str, Any]:
    """One account (id or email): balance, keys, recent usage, violations and orders."""
    row = acc.get_account(ops.db, account)
    aid = row["id"]
    usage = list(
        ops.db.query(
            "SELECT request_id, created_at, model, provider, status, cost_micros, error_code"
            " FROM usage WHERE account_id = ? ORDER BY created_at DESC, request_id DESC LIMIT ?",
            [aid, RECENT],
        )
    )
    return {
        **_view(row),
        "keys": acc.list_keys(ops.db, aid),
        "recent_usage": usage,
        "violations": list_violations(ops.db, aid, RECENT),
        "orders": list_orders(ops.db, aid, limit=RECENT),
    }


def _status_change(
    ops: Operations, actor: Actor, account: str, status: str, reason: str | None, action: str
) -> dict[str, Any]:
    require_write(actor)
    reason = need_reason(reason)
    before = acc.get_account(ops.db, account)
    if before["status"] == "closed":
        raise InvalidRequest(f"Account {before['id']} is closed", code="account_closed", status=409)
    acc.set_status(ops.db, before["id"], status, reason)
    if ops.keys is not None:
        ops.keys.forget_account(before["id"])
    after = _view(acc.get_account(ops.db, before["id"]))
    audit.record(
        ops.db,
        actor,
        action,
        before["id"],
        reason=reason,
        before=_view(before),
        after=after,
    )
    return after


def suspend_account(
    ops: Operations, actor: Actor, account: str, reason: str | None
) -> dict[str, Any]:
    """Every call of the account answers 403 ``account_suspended`` with the reason; its
    balance is kept."""
    return _status_change(ops, actor, account, "suspended", reason, "accounts.suspend")


def unsuspend_account(
    ops: Operations, actor: Actor, account: str, reason: str | None
) -> dict[str, Any]:
    """Lift a suspension; the account's policy violations so far are marked reviewed (an
    old burst cannot suspend it again)."""
    after = _status_change(ops, actor, account, "active", reason, "accounts.unsuspend")
    mark_reviewed(ops.db, after["id"])
    return after


def close_account(
    ops: Operations, actor: Actor, account: str, reason: str | None
) -> dict[str, Any]:
    """Close for good (docs/privacy.md): unfinished tasks canceled, keys revoked, the
    balance forfeited by a ledger entry. Refund paid top-ups first."""
    require_write(actor)
    reason = need_reason(reason)
    row = acc.get_account(ops.db, account)
    if row["status"] == "closed":
        raise InvalidRequest(f"Account {row['id']} is closed", code="account_closed", status=409)
    before = _view(row)
    closed = close(
        ops.db,
        ops.ledger,
        ops.tasks,
        row["id"],
        reason,
        actor=actor.name,
        grace_days=ops.close_grace_days,
    )
    if ops.keys is not None:
        ops.keys.forget_account(row["id"])
    after = {
        **_view(acc.get_account(ops.db, row["id"])),
        "forfeited_micros": closed.forfeited_micros,
        "tasks_canceled": closed.tasks_canceled,
        "outputs_deleted_after": closed.outputs_deleted_after,
    }
    audit.record(
        ops.db, actor, "accounts.close", row["id"], reason=reason, before=before, after=after
    )
    return after
