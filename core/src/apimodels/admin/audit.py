"""The admin audit log: every admin action, by the API or the CLI, appended once it is done
(who, what, when, why, the target's state before and after). Nothing updates or deletes a
row: this module only appends and reads.

The log outlives an account holder's personal data (docs/privacy.md pseudonymizes a closed
account's email and key names), so its snapshots keep ids, states and amounts, never an
account's email or a key's name. An operator's own record (``admins.*``) keeps its email."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from typing import Any

import sqlite_utils

from ..store.db import utcnow
from .context import Actor

#: Fields of an account holder's snapshots that name them, left out of the log.
PERSONAL = frozenset({"email", "name"})

#: The columns of an exported entry, in order.
COLUMNS = ("id", "created_at", "actor", "action", "target", "reason", "before", "after")


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in PERSONAL}
    return value


def record_op(
    c: sqlite3.Connection,
    actor: Actor,
    action: str,
    target: str,
    *,
    reason: str | None = None,
    before: Any = None,
    after: Any = None,
) -> int:
    """Append one entry inside the caller's transaction (a change of money and its entry
    commit together); returns its id."""
    if not action.startswith("admins."):
        before, after = _scrub(before), _scrub(after)
    cursor = c.execute(
        "INSERT INTO admin_audit (created_at, actor, action, target, reason, before, after)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            utcnow(),
            actor.name,
            action,
            target,
            reason,
            None if before is None else json.dumps(before, default=str, sort_keys=True),
            None if after is None else json.dumps(after, default=str, sort_keys=True),
        ),
    )
    (entry_id,) = cursor.fetchone()
    return int(entry_id)


def record(
    db: sqlite_utils.Database,
    actor: Actor,
    action: str,
    target: str,
    *,
    reason: str | None = None,
    before: Any = None,
    after: Any = None,
) -> int:
    """Append one entry, once the action it records is done; returns its id."""
    with db.conn:
        return record_op(db.conn, actor, action, target, reason=reason, before=before, after=after)


def entries(
    db: sqlite_utils.Database,
    *,
    limit: int = 50,
    before_id: int | None = None,
    target: str | None = None,
    action: str | None = None,
    actor: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Entries newest first, (rows, has_more); ``before_id`` is the last id of a page."""
    where, params = ["1 = 1"], []
    for column, value in (("target", target), ("action", action), ("actor", actor)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if before_id is not None:
        where.append("id < ?")
        params.append(before_id)
    rows = list(
        db.query(
            f"SELECT * FROM admin_audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            [*params, limit + 1],
        )
    )
    for row in rows:
        for side in ("before", "after"):
            row[side] = None if row[side] is None else json.loads(row[side])
    return rows[:limit], len(rows) > limit


def export(rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` as JSON lines (``jsonl``) or CSV (``csv``, before/after as JSON text)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
    if fmt != "csv":
        raise ValueError(f"unknown export format {fmt!r}: jsonl or csv")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(
            [
                json.dumps(r[c], sort_keys=True) if c in ("before", "after") and r[c] else r[c]
                for c in COLUMNS
            ]
        )
    return out.getvalue()
