"""Idempotent POSTs: an ``Idempotency-Key`` header makes a repeat return the first answer.

Within 24 hours, a repeat by the same account with the same key:
- after the first finished: gets its stored response (status, body, cost headers) with
  ``idempotent-replayed: true``, and is not charged again;
- while the first is still running: 409 ``idempotency_key_in_use`` with ``Retry-After: 1``;
- with a different body or path: 400 ``idempotency_key_reused``.
A first attempt that failed (any error status) cost nothing and is not stored, so the
client can retry with the same key once the cause is fixed; except a 504 whose task goes on
(``x-apimodels-task``), which is stored and answered again. An attempt left running by a crash is
forgotten after ``gateway.hold_ttl_seconds``. Streaming requests cannot be replayed and
answer 400 when they carry the header.

A stored answer is committed in the same transaction as its call's charge (through the
ledger's group commit, after the charge queued before it), before it is sent: a crash can
lose both, never keep an answer that a retry would replay free. (Should that batch fail
and its writes be retried one by one, the charge is still written first.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import sqlite_utils
from starlette.requests import Request
from starlette.responses import Response

from ..billing.ledger import GroupCommit
from ..errors import APIError, InvalidRequest
from ..store.db import off_loop, utcnow
from ..tasks.store import TASK_HEADER

log = logging.getLogger("apimodels")

HEADER = "idempotency-key"
TTL = timedelta(hours=24)
_REPLAYED_HEADERS = ("content-type", "x-apimodels-cost", "x-request-id", TASK_HEADER)


class IdempotencyConflict(APIError):
    status = 409
    type = "invalid_request_error"
    default_code = "idempotency_key_in_use"


class Idempotency:
    def __init__(
        self,
        db: sqlite_utils.Database,
        abandon_after: timedelta,
        writes: GroupCommit | None = None,
    ) -> None:
        self.db = db
        self.abandon_after = abandon_after
        self.writes = writes  # the ledger's queue, when charges are committed through it
        self._lock = threading.Lock()

    async def run(
        self,
        request: Request,
        account_id: str,
        key: str,
        handler: Callable[[], Awaitable[Response]],
    ) -> Response:
        if not 1 <= len(key) <= 255:
            raise InvalidRequest(
                "Idempotency-Key must be 1 to 255 characters", param="Idempotency-Key"
            )
        raw = await request.body()
        digest = hashlib.sha256(
            request.method.encode() + request.url.path.encode() + b"\0" + raw
        ).hexdigest()
        stored = await off_loop(self.db, self._claim, account_id, key, digest)
        if stored is not None:
            return stored
        try:
            response = await handler()
        except BaseException:
            self._forget(account_id, key)  # in place: a cancelled request awaits nothing more
            raise
        if response.status_code >= 400 and TASK_HEADER not in response.headers:
            await off_loop(self.db, self._forget, account_id, key)
        else:
            await self._store(account_id, key, response)
        return response

    def _claim(self, account_id: str, key: str, digest: str) -> Response | None:
        """Record the first attempt, or answer for it. None: go ahead."""
        now = datetime.now(UTC)
        with self._lock, self.db.conn:
            c = self.db.conn
            c.execute("BEGIN IMMEDIATE")
            row = c.execute(
                "SELECT request_hash, state, status, headers, body, created_at FROM idempotency_keys"
                " WHERE account_id = ? AND key = ?",
                (account_id, key),
            ).fetchone()
            if row is not None:
                created = datetime.fromisoformat(row[5])
                stale = now - created > (TTL if row[1] == "done" else self.abandon_after)
                if not stale:
                    if row[0] != digest:
                        raise InvalidRequest(
                            "This Idempotency-Key was used with a different request",
                            param="Idempotency-Key",
                            code="idempotency_key_reused",
                        )
                    if row[1] != "done":
                        raise IdempotencyConflict(
                            "A request with this Idempotency-Key is still in progress",
                            headers={"retry-after": "1"},
                        )
                    headers = json.loads(row[3]) | {"idempotent-replayed": "true"}
                    return Response(row[4], row[2], headers=headers)
                c.execute(
                    "DELETE FROM idempotency_keys WHERE account_id = ? AND key = ?",
                    (account_id, key),
                )
            c.execute(
                "INSERT INTO idempotency_keys (account_id, key, request_hash, state, created_at)"
                " VALUES (?, ?, ?, 'in_flight', ?)",
                (account_id, key, digest, utcnow()),
            )
        return None

    async def _store(self, account_id: str, key: str, response: Response) -> None:
        """Store the answer before it is sent: a retry right after it finds it."""
        headers = {k: v for k, v in response.headers.items() if k in _REPLAYED_HEADERS}
        answer = (response.status_code, json.dumps(headers), bytes(response.body))
        if self.writes is None:
            with self._lock, self.db.conn:
                _store_answer(self.db.conn, account_id, key, *answer)
            return
        try:
            # Shielded: a client that leaves meanwhile cannot take the write out of its batch.
            await asyncio.shield(self.writes.write(_store_answer, account_id, key, *answer))
        except Exception as exc:
            # The call succeeded: answer it. Unstored, the key answers 409 until the attempt
            # is abandoned, and then runs again.
            log.error("storing an idempotent answer failed: %s", type(exc).__name__)

    def _forget(self, account_id: str, key: str) -> None:
        with self._lock, self.db.conn:
            self.db.conn.execute(
                "DELETE FROM idempotency_keys WHERE account_id = ? AND key = ? AND state = 'in_flight'",
                (account_id, key),
            )

    def purge(self) -> int:
        """Delete records older than 24 hours."""
        cutoff = (datetime.now(UTC) - TTL).isoformat(timespec="microseconds")
        with self._lock, self.db.conn:
            return self.db.conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", (cutoff,)
            ).rowcount


def _store_answer(
    c: sqlite3.Connection, account_id: str, key: str, status: int, headers: str, body: bytes
) -> None:
    c.execute(
        "UPDATE idempotency_keys SET state = 'done', status = ?, headers = ?, body = ?"
        " WHERE account_id = ? AND key = ?",
        (status, headers, body, account_id, key),
    )
