"""The operator's overview: accounts, calls and spend per day, top models, upstream errors per
provider, pending holds and the last check of the books. Read from the ledger's running
totals per day, account, model and provider (``usage_daily``, kept with the usage rows they
sum, which ``ledger check`` verifies): a month of them is a few thousand rows where the
usage rows are millions.

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

CHECK = "ledger.check"
#: A top model's figures, as ``usage_totals`` names them.
TOTALS = ("key", "calls", "failed", "input_tokens", "output_tokens", "cost_micros")


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
    labels = [(first + timedelta(days=i)).date().isoformat() for i in range(days)]
    index = {day: i for i, day in enumerate(labels)}
    first_day = labels[0]
    per_model: dict[str, list[int]] = defaultdict(lambda: [0] * days)
    calls = [0] * days
    for day, model, n, micros in ops.db.execute(
        "SELECT day, model, SUM(calls), SUM(cost_micros) FROM usage_daily WHERE day >= ?"
        " GROUP BY day, model",
        [first_day],
    ).fetchall():
        if day in index:
            calls[index[day]] += n
            if micros:
                per_model[model or None][index[day]] += micros
    spend = [sum(series[i] for series in per_model.values()) for i in range(days)]
    statuses = dict(
        ops.db.execute("SELECT status, COUNT(*) FROM accounts GROUP BY status").fetchall()
    )
    (active,) = ops.db.execute(
        "SELECT COUNT(DISTINCT account_id) FROM usage_daily WHERE day >= ?", [first_day]
    ).fetchone()
    top_models = [
        dict(zip(TOTALS, (model or None, *sums), strict=True))
        for model, *sums in ops.db.execute(
            "SELECT model, SUM(settled), SUM(failed), SUM(input_tokens), SUM(output_tokens),"
            " SUM(cost_micros) AS cost FROM usage_daily WHERE day >= ? GROUP BY model"
            " HAVING SUM(settled) > 0 ORDER BY cost DESC, model LIMIT 10",
            [first_day],
        ).fetchall()
    ]
    providers = [
        {
            "provider": provider or None,
            "calls": n,
            "upstream_errors": errors,
            "error_rate": f"{100 * errors / n:.1f}%" if n else "—",
        }
        for provider, n, errors in ops.db.execute(
            "SELECT provider, SUM(calls), SUM(upstream_errors) FROM usage_daily WHERE day >= ?"
            " GROUP BY provider ORDER BY provider",
            [first_day],
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
        top_models=top_models,
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
