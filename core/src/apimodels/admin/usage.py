"""Usage totals for an operator: calls, failures, tokens and credits charged, per account,
per model or per UTC day, over a time range. Derived from the usage rows (what the ledger
charged), never kept beside them."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from .context import Operations

#: What a total may be grouped by, and the column expression of each.
GROUPS = {
    "account": "account_id",
    "model": "model",
    "day": "substr(created_at, 1, 10)",  # ISO-8601 UTC text: its date
}
#: At most this many groups are answered (the largest totals by credits first).
MAX_GROUPS = 1000


def usage_totals(
    ops: Operations,
    group_by: str,
    *,
    since: str | None = None,
    until: str | None = None,
    account_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """One row per group: ``key``, ``calls``, ``failed``, ``input_tokens``,
    ``output_tokens``, ``cost_micros``; days in order, others by credits charged."""
    expression = GROUPS.get(group_by)
    if expression is None:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
    where, params = ["hold_state != 'pending'"], []
    for clause, value in (
        ("created_at >= ?", since),
        ("created_at < ?", until),
        ("account_id = ?", account_id),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    order = "key" if group_by == "day" else "cost_micros DESC, key"
    rows = ops.db.execute(
        f"SELECT {expression} AS key, COUNT(*) AS calls,"
        " SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,"
        " COALESCE(SUM(input_tokens), 0) AS input_tokens,"
        " COALESCE(SUM(output_tokens), 0) AS output_tokens,"
        " COALESCE(SUM(CASE WHEN hold_state = 'captured' THEN cost_micros END), 0) AS cost_micros"
        f" FROM usage WHERE {' AND '.join(where)} GROUP BY {expression} ORDER BY {order} LIMIT ?",
        [*params, min(limit, MAX_GROUPS)],
    )
    columns = [d[0] for d in rows.description]
    return [dict(zip(columns, r, strict=True)) for r in rows.fetchall()]
