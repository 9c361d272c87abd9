"""Stored Responses API answers (``store: true``): kept per account, read back by id,
deleted by their owner, by the retention sweep after ``privacy.stored_response_days``, and
with a closed account's other content after its grace period.

Writes go through the ledger's group commit (``writes``), queued after the call's charge in
the same transaction, off the answer's latency; a read of an answer still queued first
commits what is queued, so an answer is readable as soon as it was sent (and a read of any
other waits for nothing: on PostgreSQL, a commit waits for the ledger's writer thread).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, Protocol

import sqlite_utils

from .db import utcnow

log = logging.getLogger("apimodels")


class Writes(Protocol):
    """What this store needs of the ledger's group commit."""

    def write(self, op: Callable[..., Any], *args: Any) -> Any: ...

    def commit(self) -> None: ...


class StoredResponses:
    def __init__(self, db: sqlite_utils.Database, writes: Writes) -> None:
        self.db = db
        self.writes = writes
        self._queued: set[str] = set()  # answers put and not yet committed

    def put(self, response_id: str, account_id: str, body: bytes, history: bytes) -> None:
        """Queue an answer (its JSON, and its conversation's) to be kept; a failure is
        logged (the answer was sent)."""
        row = (response_id, account_id, utcnow(), body.decode(), history.decode())
        future = self.writes.write(_insert, *row)
        future.add_done_callback(_log_failure)
        self._queued.add(response_id)
        future.add_done_callback(lambda _: self._queued.discard(response_id))

    def get(self, response_id: str, account_id: str) -> tuple[str, list[Any]] | None:
        """The answer (its JSON text) and its conversation, if this account stored it
        (another account's is as absent as an unknown id)."""
        if response_id in self._queued:
            self.writes.commit()
        found = self.db.execute(
            "SELECT body, history FROM stored_responses WHERE id = ? AND account_id = ?",
            (response_id, account_id),
        ).fetchone()
        return None if found is None else (found[0], json.loads(found[1]))

    def delete(self, response_id: str, account_id: str) -> bool:
        """Delete an answer this account stored; False if there is none (or another's)."""
        if response_id in self._queued:
            self.writes.commit()
        with self.db.conn:
            deleted = self.db.execute(
                "DELETE FROM stored_responses WHERE id = ? AND account_id = ?",
                (response_id, account_id),
            ).rowcount
        return deleted > 0


def delete_stored_before(
    db: sqlite_utils.Database, cutoff: str, *, count_only: bool = False
) -> int:
    """Delete (or count) the answers stored before ``cutoff`` (ISO-8601 UTC)."""
    if count_only:
        sql = "SELECT count(*) FROM stored_responses WHERE created_at < ?"
        return db.execute(sql, [cutoff]).fetchone()[0]
    with db.conn:
        return db.execute("DELETE FROM stored_responses WHERE created_at < ?", [cutoff]).rowcount


def delete_account_responses(db: sqlite_utils.Database, account_id: str) -> int:
    """Delete every answer an account stored (a closed account's, after its grace)."""
    with db.conn:
        sql = "DELETE FROM stored_responses WHERE account_id = ?"
        return db.execute(sql, [account_id]).rowcount


def account_responses(db: sqlite_utils.Database, account_id: str) -> list[dict[str, Any]]:
    """An account's stored answers, oldest first, for its data export."""
    rows = db.execute(
        "SELECT id, created_at, body FROM stored_responses WHERE account_id = ?"
        " ORDER BY created_at, id",
        [account_id],
    ).fetchall()
    return [{"id": i, "created_at": at, "response": json.loads(body)} for i, at, body in rows]


def _insert(c: sqlite3.Connection, *row: str) -> None:
    c.execute(
        "INSERT INTO stored_responses (id, account_id, created_at, body, history)"
        " VALUES (?, ?, ?, ?, ?)",
        row,
    )


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("storing a response failed: %s", type(future.exception()).__name__)
