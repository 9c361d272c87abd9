"""Stored Responses API answers (``store: true``): kept per account, read back by id.

Writes go through the ledger's group commit (``writes``), queued after the call's charge in
the same transaction, off the answer's latency; a read first commits what is queued, so an
answer is readable as soon as it was sent.
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

    def put(self, response_id: str, account_id: str, body: bytes, history: bytes) -> None:
        """Queue an answer (its JSON, and its conversation's) to be kept; a failure is
        logged (the answer was sent)."""
        row = (response_id, account_id, utcnow(), body.decode(), history.decode())
        future = self.writes.write(_insert, *row)
        future.add_done_callback(_log_failure)

    def get(self, response_id: str, account_id: str) -> tuple[str, list[Any]] | None:
        """The answer (its JSON text) and its conversation, if this account stored it
        (another account's is as absent as an unknown id)."""
        self.writes.commit()
        found = self.db.execute(
            "SELECT body, history FROM stored_responses WHERE id = ? AND account_id = ?",
            (response_id, account_id),
        ).fetchone()
        return None if found is None else (found[0], json.loads(found[1]))


def _insert(c: sqlite3.Connection, *row: str) -> None:
    c.execute(
        "INSERT INTO stored_responses (id, account_id, created_at, body, history)"
        " VALUES (?, ?, ?, ?, ?)",
        row,
    )


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("storing a response failed: %s", type(future.exception()).__name__)
