"""What the dashboard and the usage pages read: an account's spend, summed from its usage
rows (the ledger's charges), always filtered by the account id of the signed-in holder."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlite_utils

# Sums of cost_micros over every row of the account are its charges: a released or expired
# hold is settled at cost 0 and a pending one has no cost yet (billing.ledger._settle), so
# no filter on hold_state is needed, and idx_usage_days answers from the index.


def _day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Spend:
    """The dashboard's figures: the last ``days`` days (oldest first), each model's spend on
    each of them, and the spend of today and of this month (UTC)."""

    labels: list[str]
    per_model: dict[str, list[int]]
    today_micros: int
    month_micros: int


def spend(
    db: sqlite_utils.Database, account_id: str, days: int = 30, now: datetime | None = None
) -> Spend:
    """One pass over the account's rows since the earlier of the chart's first day and the
    first of the month, grouped by day and model in SQL."""
    now = now or datetime.now(UTC)
    today = _day_start(now)
    first = today - timedelta(days=days - 1)
    month = today.replace(day=1)
    labels = [(first + timedelta(days=i)).date().isoformat() for i in range(days)]
    index = {day: i for i, day in enumerate(labels)}
    per_model: dict[str, list[int]] = defaultdict(lambda: [0] * days)
    today_micros = month_micros = 0
    month_label, today_label = month.date().isoformat(), today.date().isoformat()
    rows = db.execute(
        "SELECT substr(created_at, 1, 10), model, SUM(cost_micros) FROM usage"
        " WHERE account_id = ? AND substr(created_at, 1, 10) >= ?"
        " GROUP BY substr(created_at, 1, 10), model",
        [account_id, min(first, month).date().isoformat()],
    ).fetchall()
    for day, model, micros in rows:
        if not micros:
            continue
        if day in index:
            per_model[model][index[day]] += micros
        if day >= month_label:
            month_micros += micros
        if day == today_label:
            today_micros += micros
    return Spend(labels, dict(per_model), today_micros, month_micros)


def paid_since(db: sqlite_utils.Database, account_id: str, since: datetime) -> int:
    """Credits bought by paid top-ups since ``since``, less what was refunded of them (the
    Terms cap liability at what was paid in the last three months)."""
    return db.execute(
        "SELECT COALESCE(SUM(amount_usd_micros - refunded_usd_micros), 0) FROM topup_orders"
        " WHERE account_id = ? AND status = 'paid' AND paid_at >= ?",
        [account_id, since.isoformat(timespec="seconds")],
    ).fetchone()[0]


def last_used(db: sqlite_utils.Database, key_ids: list[str]) -> dict[str, str]:
    """When each key was last used (its newest usage row)."""
    out = {}
    for key_id in key_ids:
        row = db.execute(
            "SELECT created_at FROM usage WHERE key_id = ? ORDER BY created_at DESC LIMIT 1",
            [key_id],
        ).fetchone()
        if row:
            out[key_id] = row[0]
    return out
