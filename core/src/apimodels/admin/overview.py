"""The operator's overview: accounts, calls and spend per day, top models, upstream errors per
provider, pending holds and the last check of the books. Sums of the usage rows (what the
ledger charged), as ``usage_totals``; nothing is kept beside them.

The last check of the books is the newest ``ledger.check`` entry of the audit log: an
operator's check (:func:`record_check`) is written there, so every process shows the same."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import audit
from .checks import check_books
from .context import Actor, Operations, reading
from .usage import usage_totals

#: Error codes of a failure upstream (the provider's), as opposed to a refused request.
UPSTREAM_CODES = (
    "upstream_error",
    "upstream_timeout",
    "upstream_overloaded",
    "provider_unavailable",
)
CHECK = "ledger.check"


@dataclass(frozen=True, slots=True)
class Overview:
    days: list[str]  # the chart's days, oldest first
    spend_per_model: dict[str, list[int]]  # micro-USD per day, per model
    calls_per_day: list[int]
    spend_per_day: list[int]
    accounts_by_status: dict[str, int]
    active_accounts: int  # with a call in the period
    top_models: list[dict[str, Any]]
    providers: list[dict[str, Any]]  # provider, calls, upstream_errors, error_rate (a str %)
    pending_holds: int
    held_micros: int
    last_check: dict[str, Any] | None


def overview(ops: Operations, days: int = 30, now: datetime | None = None) -> Overview:
    """The figures of the last ``days`` UTC days (today included)."""
    today = (now or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=days - 1)
    since = first.isoformat(timespec="seconds")
    labels = [(first + timedelta(days=i)).date().isoformat() for i in range(days)]
    index = {day: i for i, day in enumerate(labels)}
    per_model: dict[str, list[int]] = defaultdict(lambda: [0] * days)
    calls = [0] * days
    for day, model, n, micros in ops.db.execute(
        "SELECT substr(created_at, 1, 10), model, COUNT(*), COALESCE(SUM(cost_micros), 0)"
        " FROM usage WHERE created_at >= ? GROUP BY substr(created_at, 1, 10), model",
        [since],
    ).fetchall():
        if day in index:
            calls[index[day]] += n
            if micros:
                per_model[model][index[day]] += micros
    spend = [sum(series[i] for series in per_model.values()) for i in range(days)]
    statuses = dict(
        ops.db.execute("SELECT status, COUNT(*) FROM accounts GROUP BY status").fetchall()
    )
    (active,) = ops.db.execute(
        "SELECT COUNT(DISTINCT account_id) FROM usage WHERE created_at >= ?", [since]
    ).fetchone()
    marks = ", ".join("?" for _ in UPSTREAM_CODES)
    providers = [
        {
            "provider": provider,
            "calls": n,
            "upstream_errors": errors,
            "error_rate": f"{100 * errors / n:.1f}%" if n else "—",
        }
        for provider, n, errors in ops.db.execute(
            "SELECT provider, COUNT(*),"
            f" SUM(CASE WHEN error_code IN ({marks}) THEN 1 ELSE 0 END)"
            " FROM usage WHERE created_at >= ? GROUP BY provider ORDER BY provider",
            [*UPSTREAM_CODES, since],
        ).fetchall()
    ]
    (holds,) = ops.db.execute("SELECT COUNT(*) FROM usage WHERE hold_state = 'pending'").fetchone()
    # Every hold and reservation, as the accounts' running totals keep them.
    (held,) = ops.db.execute("SELECT COALESCE(SUM(held_micros), 0) FROM accounts").fetchone()
    checks, _more = audit.entries(ops.db, limit=1, action=CHECK)
    return Overview(
        days=labels,
        spend_per_model=dict(per_model),
        calls_per_day=calls,
        spend_per_day=spend,
        accounts_by_status=statuses,
        active_accounts=active,
        top_models=usage_totals(ops, "model", since=since, limit=10),
        providers=providers,
        pending_holds=holds,
        held_micros=held,
        last_check=checks[0] if checks else None,
    )


async def record_check(ops: Operations, actor: Actor) -> dict[str, Any]:
    """Check the books now (off the event loop: seconds at a million rows) and keep the
    result in the audit log (the overview shows it)."""
    result = await reading(ops, check_books)
    audit.record(ops.db, actor, CHECK, "ledger", after=result)
    return result
