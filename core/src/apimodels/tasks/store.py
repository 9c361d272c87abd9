"""Tasks in the database: every SQL statement about the ``tasks`` table.

A task's credits are held in the usage row that shares its id, so creating a task is one
transaction (hold + row), and finishing it is one transaction too: a compare-and-set of the
task's status from queued/running to its terminal status, and in the same transaction the
capture or release of its hold. Whoever finishes a task first (the poller, an upstream
webhook, a cancel, the timeout, a second worker after a restart) wins; the others change
nothing. That is how a task is charged exactly once.

Workers claim due tasks with a lease (``lease_until``): a compare-and-set, so two workers on
one database never advance the same task at once, and a crashed worker's tasks are taken
over when its leases run out.

Removing a task's content (its owner's ``DELETE``, the retention sweep) keeps the row as
the billing record: id, model, status, times and cost stay; input, output and error text
go. Output files go first, then ``erase`` clears the row: a crash in between leaves a row
that still names its files, and the next sweep removes them again (deletes are idempotent).
Sweepers claim rows with ``purge_until``, a compare-and-set like the workers' leases.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import sqlite_utils

from ..billing.ledger import Ledger, capture_op, hold_op, release_op, transaction
from ..billing.usage import usage_fields
from ..errors import NotFound
from ..providers.types import Usage
from ..store.db import is_postgres

TERMINAL = ("succeeded", "failed", "canceled")
STATUSES = ("queued", "running", *TERMINAL)


#: On an error answer, names a task that goes on (and is billed): the answer is kept, so a
#: retry with the same key answers it again instead of starting a second task.
TASK_HEADER = "x-apimodels-task"


def new_task_id() -> str:
    """``task_`` + time (hex microseconds) + 64 random bits: unique and in time order."""
    return f"task_{time.time_ns() // 1000:013x}{secrets.token_hex(8)}"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def now_iso(delay_seconds: float = 0.0) -> str:
    return _iso(datetime.now(UTC) + timedelta(seconds=delay_seconds))


@dataclass(slots=True)
class Finish:
    """How a task ends: its status, output or error, and what it used."""

    status: str
    output: Any = None  # [{key, content_type, bytes}] or {"text": ...}
    usage: Usage | None = None
    cost_micros: int = 0
    error_code: str | None = None
    error_message: str | None = None


class TaskStore:
    def __init__(self, db: sqlite_utils.Database, ledger: Ledger) -> None:
        self.db = db
        self.ledger = ledger

    # --- creating -----------------------------------------------------------------------

    def create(
        self,
        task_id: str,
        *,
        account_id: str,
        key_id: str,
        model: str,
        provider: str,
        modality: str,
        input: dict[str, Any],
        webhook_url: str | None,
        hold_micros: int,
        unit_prices: str,
        timeout_seconds: float,
        billing: bool = True,
    ) -> dict[str, Any]:
        """Hold the estimate (402 when short) and queue the task, in one transaction."""
        now = datetime.now(UTC)
        row = {
            "id": task_id,
            "account_id": account_id,
            "key_id": key_id,
            "model": model,
            "provider": provider,
            "status": "queued",
            "input": json.dumps(input, separators=(",", ":")),
            "webhook_url": webhook_url,
            "created_at": _iso(now),
            "deadline_at": _iso(now + timedelta(seconds=timeout_seconds)),
            "next_poll_at": _iso(now),
            "polls": 0,
            "webhook_attempts": 0,
        }
        with transaction(self.ledger) as c:
            if billing:
                # The hold outlives the deadline: the worker settles the task before the
                # expiry sweep would (a day of margin for a gateway that was down).
                hold_op(
                    c,
                    task_id,
                    account_id,
                    hold_micros,
                    timedelta(seconds=timeout_seconds + 86_400),
                    {
                        "key_id": key_id,
                        "model": model,
                        "provider": provider,
                        "modality": modality,
                        "stream": 0,
                        "unit_prices": unit_prices,
                    },
                )
            columns = ", ".join(row)
            c.execute(
                f"INSERT INTO tasks ({columns}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
        return {**dict.fromkeys(self._columns), **row}

    # --- reading ------------------------------------------------------------------------

    def get(self, account_id: str, task_id: str) -> dict[str, Any]:
        """One of the account's tasks; another account's id is 404, like an unknown one."""
        row = self.db.execute(
            "SELECT * FROM tasks WHERE id = ? AND account_id = ?", (task_id, account_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"No task found with id '{task_id}'.", code="task_not_found")
        return self._row(row)

    def load(self, task_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else self._row(row)

    def by_upstream(self, provider: str, upstream_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT * FROM tasks WHERE provider = ? AND upstream_id = ?", (provider, upstream_id)
        ).fetchone()
        return None if row is None else self._row(row)

    def page(
        self,
        account_id: str | None,
        *,
        limit: int,
        status: str | None = None,
        starting_after: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """The account's tasks (every account's for None), newest first; ``starting_after``
        is the last id of a page."""
        where = ["TRUE"]
        params: list[Any] = []
        if account_id is not None:
            where.append("account_id = ?")
            params.append(account_id)
        if status:
            where.append("status = ?")
            params.append(status)
        if starting_after:
            where.append("id < ?")  # ids are in time order
            params.append(starting_after)
        rows = self.db.execute(
            f"SELECT * FROM tasks WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        tasks = [self._row(r) for r in rows[:limit]]
        return tasks, len(rows) > limit

    # --- removing content ------------------------------------------------------------------

    def mark_deleted(self, account_id: str, task_id: str) -> dict[str, Any]:
        """The owner deletes an ended task: its input and error text go now (and any stored
        idempotent answer naming it, which repeats its input); its output goes in ``erase``,
        once its files are removed. Another account's task is 404."""
        with transaction(self.ledger) as c:
            row = c.execute(
                "UPDATE tasks SET deleted_at = COALESCE(deleted_at, ?), input = 'null',"
                " error_message = NULL WHERE id = ? AND account_id = ?"
                f" AND status IN {TERMINAL} RETURNING *",
                (now_iso(), task_id, account_id),
            ).fetchone()
            if row is not None:
                named = f'"id":"{task_id}"'
                if is_postgres(c):  # bytea in bytea
                    sql, needle = " AND position(? IN body) > 0", named.encode()
                else:
                    sql, needle = " AND instr(CAST(body AS TEXT), ?) > 0", named
                c.execute(
                    "DELETE FROM idempotency_keys WHERE account_id = ? AND state = 'done'" + sql,
                    (account_id, needle),
                )
        if row is None:
            self.get(account_id, task_id)  # 404 when it is not the account's
            raise RuntimeError(f"task {task_id} has not ended")  # the caller cancels first
        return self._row(row)

    def outputs_due(self, now: datetime, default_days: int, limit: int) -> list[str]:
        """Ended tasks whose outputs outlived their account's retention (``default_days``
        unless the account has its own; 0 keeps them), and deletions a crash left half done."""
        ids = [
            r[0]
            for r in self.db.execute(
                "SELECT id FROM tasks WHERE deleted_at IS NOT NULL"
                " AND output_expired_at IS NULL LIMIT ?",
                (limit,),
            ).fetchall()
        ]
        overrides = [
            r[0]
            for r in self.db.execute(
                "SELECT DISTINCT output_retention_days FROM accounts"
                " WHERE output_retention_days IS NOT NULL"
            ).fetchall()
        ]
        for days in {default_days, *overrides}:
            if days <= 0 or len(ids) >= limit:
                continue
            rule = "(a.output_retention_days = ?2" + (
                " OR a.output_retention_days IS NULL)" if days == default_days else ")"
            )
            ids += [
                r[0]
                for r in self.db.execute(
                    "SELECT t.id FROM tasks t JOIN accounts a ON a.id = t.account_id"
                    " WHERE t.output_expired_at IS NULL AND t.completed_at IS NOT NULL"
                    f" AND t.completed_at < ?1 AND {rule} ORDER BY t.completed_at LIMIT ?3",
                    (_iso(now - timedelta(days=days)), days, limit - len(ids)),
                ).fetchall()
            ]
        return ids

    def account_outputs(self, account_id: str) -> list[str]:
        """An account's ended tasks whose outputs are still held (a closed account's)."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT id FROM tasks WHERE account_id = ? AND output_expired_at IS NULL"
                " AND completed_at IS NOT NULL",
                (account_id,),
            ).fetchall()
        ]

    def unfinished(self, account_id: str) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT id FROM tasks WHERE account_id = ? AND status IN ('queued', 'running')",
                (account_id,),
            ).fetchall()
        ]

    def forget_webhooks(self, account_id: str) -> None:
        """Drop the webhook URLs of a pseudonymized account's tasks (they may name it)."""
        with transaction(self.ledger) as c:
            c.execute(
                "UPDATE tasks SET webhook_url = NULL, webhook_error = NULL WHERE account_id = ?",
                (account_id,),
            )

    def claim_purge(
        self, task_id: str, now: datetime, lease_seconds: float
    ) -> dict[str, Any] | None:
        """Take an ended task whose content is to go, unless another sweeper holds it (None)."""
        with transaction(self.ledger) as c:
            row = c.execute(
                "UPDATE tasks SET purge_until = ? WHERE id = ? AND output_expired_at IS NULL"
                f" AND status IN {TERMINAL} AND (purge_until IS NULL OR purge_until <= ?)"
                " RETURNING *",
                (_iso(now + timedelta(seconds=lease_seconds)), task_id, _iso(now)),
            ).fetchone()
        return None if row is None else self._row(row)

    def erase(self, task_id: str, now: datetime | None = None) -> bool:
        """Its files are gone: clear the task's input, output and error text, once (False
        when another sweeper finished first)."""
        with transaction(self.ledger) as c:
            return (
                c.execute(
                    "UPDATE tasks SET input = 'null', output = NULL, error_message = NULL,"
                    " output_expired_at = ?, purge_until = NULL"
                    " WHERE id = ? AND output_expired_at IS NULL",
                    (_iso(now or datetime.now(UTC)), task_id),
                ).rowcount
                == 1
            )

    def _row(self, row: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(self._columns, row, strict=True))

    @cached_property
    def _columns(self) -> list[str]:
        return [c.name for c in self.db["tasks"].columns]

    # --- the worker's side ----------------------------------------------------------------

    def claim_due(self, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
        """Lease up to ``limit`` unfinished tasks whose next poll is due."""
        now = now_iso()
        if is_postgres(self.db):
            # One statement: rows another process is claiming right now are skipped, not
            # waited for, so N workers on M hosts take disjoint tasks.
            with transaction(self.ledger) as c:
                rows = c.execute(
                    "UPDATE tasks SET lease_until = ?1, next_poll_at = ?1 WHERE id IN ("
                    "SELECT id FROM tasks WHERE status IN ('queued', 'running')"
                    " AND next_poll_at <= ?2 AND (lease_until IS NULL OR lease_until <= ?2)"
                    " ORDER BY next_poll_at LIMIT ?3 FOR UPDATE SKIP LOCKED)"
                    " AND (lease_until IS NULL OR lease_until <= ?2) RETURNING *",
                    (now_iso(lease_seconds), now, limit),
                ).fetchall()
            return [self._row(r) for r in rows]
        ids = [
            r[0]
            for r in self.db.execute(
                "SELECT id FROM tasks WHERE status IN ('queued', 'running') AND next_poll_at <= ?"
                " AND (lease_until IS NULL OR lease_until <= ?) ORDER BY next_poll_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
        ]
        return [t for i in ids if (t := self.lease(i, lease_seconds)) is not None]

    def lease(self, task_id: str, lease_seconds: float) -> dict[str, Any] | None:
        """Take a task for ``lease_seconds`` unless a live lease holds it (compare-and-set)."""
        now = now_iso()
        with transaction(self.ledger) as c:
            row = c.execute(
                # next_poll_at moves with the lease: a webhook's poll_now while the task is
                # leased pulls it back, and release_lease keeps the earlier of the two.
                "UPDATE tasks SET lease_until = ?1, next_poll_at = ?1 WHERE id = ?2"
                " AND status IN ('queued', 'running') AND (lease_until IS NULL OR lease_until <= ?3)"
                " RETURNING *",
                (now_iso(lease_seconds), task_id, now),
            ).fetchone()
        return None if row is None else self._row(row)

    def started(self, task_id: str) -> None:
        """The task is running (its call went out, or its job is processing)."""
        with transaction(self.ledger) as c:
            c.execute(
                "UPDATE tasks SET status = 'running', started_at = COALESCE(started_at, ?)"
                " WHERE id = ? AND status IN ('queued', 'running')",
                (now_iso(), task_id),
            )

    def submitted(self, task_id: str, upstream_id: str) -> bool:
        """Record the job that runs the task, once: False if the task already has one or
        has ended (the caller then cancels the job it just made)."""
        with transaction(self.ledger) as c:
            return (
                c.execute(
                    "UPDATE tasks SET status = 'running', upstream_id = ?,"
                    " started_at = COALESCE(started_at, ?)"
                    " WHERE id = ? AND upstream_id IS NULL AND status IN ('queued', 'running')",
                    (upstream_id, now_iso(), task_id),
                ).rowcount
                == 1
            )

    def renew_lease(self, task_id: str, lease_seconds: float) -> None:
        """Keep a task this worker is still advancing (a long call, a big download)."""
        with transaction(self.ledger) as c:
            c.execute(
                "UPDATE tasks SET lease_until = ? WHERE id = ? AND status IN ('queued', 'running')",
                (now_iso(lease_seconds), task_id),
            )

    def release_lease(self, task_id: str, next_poll_in: float) -> None:
        """Give the task back, to be looked at again in ``next_poll_in`` seconds (or sooner,
        if an upstream webhook asked for a poll meanwhile)."""
        with transaction(self.ledger) as c:
            c.execute(
                "UPDATE tasks SET lease_until = NULL, polls = polls + 1,"
                " next_poll_at = CASE WHEN next_poll_at < ?1 THEN next_poll_at ELSE ?1 END"
                " WHERE id = ?2",
                (now_iso(next_poll_in), task_id),
            )

    def poll_now(self, task_id: str) -> None:
        """Ask for the task to be looked at at once (an upstream webhook said it changed)."""
        with transaction(self.ledger) as c:
            c.execute(
                "UPDATE tasks SET next_poll_at = ? WHERE id = ? AND status IN ('queued', 'running')",
                (now_iso(), task_id),
            )

    def finish(self, task_id: str, end: Finish, *, billing: bool = True) -> bool:
        """End a task and settle its hold in one transaction; False if it had ended already."""
        fields = usage_fields(end.usage) if end.usage is not None else {}
        fields["error_code"] = end.error_code
        with transaction(self.ledger) as c:
            row = c.execute(
                "UPDATE tasks SET status = ?, completed_at = ?, output = ?, error_code = ?,"
                " error_message = ?, cost_micros = ?, lease_until = NULL,"
                " webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END,"
                " webhook_next_at = ?"
                " WHERE id = ? AND status IN ('queued', 'running') RETURNING created_at",
                (
                    end.status,
                    now_iso(),
                    None if end.output is None else json.dumps(end.output, separators=(",", ":")),
                    end.error_code,
                    end.error_message,
                    end.cost_micros if end.status == "succeeded" else 0,
                    now_iso(),
                    task_id,
                ),
            ).fetchone()
            if row is None:
                return False
            if billing:
                created = datetime.fromisoformat(row[0])
                fields["latency_ms"] = round(
                    (datetime.now(UTC) - created).total_seconds() * 1000, 3
                )
                if end.status != "succeeded":
                    release_op(c, task_id, fields)
                elif not capture_op(c, task_id, end.cost_micros, fields):
                    # Its hold had expired (the gateway was down past it): not charged,
                    # so the task must not say it was.
                    c.execute("UPDATE tasks SET cost_micros = 0 WHERE id = ?", (task_id,))
        return True

    # --- client webhooks ----------------------------------------------------------------

    def claim_webhooks(self, limit: int, hold_seconds: float) -> list[dict[str, Any]]:
        """Due webhook deliveries, each pushed ``hold_seconds`` ahead (compare-and-set) so
        that a second worker does not send it at the same time."""
        now = now_iso()
        if is_postgres(self.db):
            with transaction(self.ledger) as c:
                rows = c.execute(
                    "UPDATE tasks SET webhook_next_at = ?1 WHERE id IN ("
                    "SELECT id FROM tasks WHERE webhook_state = 'pending' AND webhook_next_at <= ?2"
                    " ORDER BY webhook_next_at LIMIT ?3 FOR UPDATE SKIP LOCKED)"
                    " AND webhook_state = 'pending' AND webhook_next_at <= ?2 RETURNING *",
                    (now_iso(hold_seconds), now, limit),
                ).fetchall()
            return [self._row(r) for r in rows]
        due = self.db.execute(
            "SELECT id, webhook_next_at FROM tasks WHERE webhook_state = 'pending'"
            " AND webhook_next_at <= ? ORDER BY webhook_next_at LIMIT ?",
            (now, limit),
        ).fetchall()
        claimed = []
        for task_id, next_at in due:
            with transaction(self.ledger) as c:
                row = c.execute(
                    "UPDATE tasks SET webhook_next_at = ? WHERE id = ? AND webhook_next_at = ?"
                    " AND webhook_state = 'pending' RETURNING *",
                    (now_iso(hold_seconds), task_id, next_at),
                ).fetchone()
            if row is not None:
                claimed.append(self._row(row))
        return claimed

    def webhook_attempted(
        self, task_id: str, attempts: int, *, state: str, retry_in: float, error: str | None
    ) -> None:
        with transaction(self.ledger) as c:
            c.execute(
                "UPDATE tasks SET webhook_state = ?, webhook_attempts = ?, webhook_next_at = ?,"
                " webhook_error = ? WHERE id = ? AND webhook_attempts = ?",
                (state, attempts + 1, now_iso(retry_in), error, task_id, attempts),
            )
