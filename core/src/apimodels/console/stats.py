"""What the dashboard and the usage pages read: an account's spend, summed from its usage
rows (the ledger's charges), always filtered by the account id of the signed-in holder."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

#: A row that cost something: only captured holds are charges.
_CHARGED = "hold_state = 'captured'"


def _day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def spend_since(db: sqlite_utils.Database, account_id: str, since: datetime) -> int:
    return db.execute(
        f"SELECT COALESCE(SUM(cost_micros), 0) FROM usage WHERE account_id = ?"
        f" AND created_at >= ? AND {_CHARGED}",
        [account_id, since.isoformat(timespec="microseconds")],
    ).fetchone()[0]


def spend_per_day(
    db: sqlite_utils.Database, account_id: str, days: int = 30, now: datetime | None = None
) -> tuple[list[str], dict[str, list[int]]]:
    """The last ``days`` days (oldest first) and, per model, its spend on each of them."""
    now = now or datetime.now(UTC)
    first = _day_start(now) - timedelta(days=days - 1)
    labels = [(first + timedelta(days=i)).date().isoformat() for i in range(days)]
    index = {day: i for i, day in enumerate(labels)}
    per_model: dict[str, list[int]] = defaultdict(lambda: [0] * days)
    rows = db.execute(
        f"SELECT substr(created_at, 1, 10), model, SUM(cost_micros) FROM usage"
        f" WHERE account_id = ? AND created_at >= ? AND {_CHARGED}"
        f" GROUP BY substr(created_at, 1, 10), model",
        [account_id, first.isoformat(timespec="microseconds")],
    ).fetchall()
    for day, model, micros in rows:
        if day in index and micros:
            per_model[model][index[day]] += micros
    return labels, dict(per_model)


def summary(
    db: sqlite_utils.Database, account_id: str, now: datetime | None = None
) -> dict[str, int]:
    now = now or datetime.now(UTC)
    today = _day_start(now)
    return {
        "today_micros": spend_since(db, account_id, today),
        "month_micros": spend_since(db, account_id, today.replace(day=1)),
    }


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


def key_spend(db: sqlite_utils.Database, account_id: str) -> list[dict[str, Any]]:
    return list(
        db.query(
            f"SELECT key_id, COUNT(*) AS calls, COALESCE(SUM(cost_micros), 0) AS micros"
            f" FROM usage WHERE account_id = ? AND {_CHARGED} GROUP BY key_id",
            [account_id],
        )
    )
