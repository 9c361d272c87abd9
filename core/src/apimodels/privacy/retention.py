"""The retention sweep: every bound docs/privacy.md promises, enforced.

One pass (``Sweeper.sweep``), run by every server every ``storage.sweep_interval_minutes``
and by ``apimodels storage sweep``:

1. tasks whose outputs outlived ``storage.retention_days`` (or their account's own, set by
   the operator): files deleted, then input, output and error text cleared; the row keeps
   its billing record and ``output_expired_at``. Deletions a crash left half done too.
2. closed accounts past ``privacy.close_grace_days``: every task's content and every file
   under the account's prefix deleted; the balance settled to zero (``closing``).
3. files no task names (images answered as URLs, leftovers of a crash) older than their
   account's retention, found by listing the store.
4. excerpts of refused requests older than ``privacy.audit_excerpt_days`` cleared.
5. idempotent answers older than 24 hours deleted (the server also does it every minute).
6. closed accounts past ``privacy.billing_retention_days``: email and key names pseudonymized.
7. Responses API answers stored (``store: true``) longer than ``privacy.stored_response_days``
   deleted; a closed account's go with its outputs (step 2).

Safe with several processes: a task is claimed (``TaskStore.claim_purge``, a lease), every
other step is a compare-and-set or idempotent (deleting a missing file is no error). A crash
at any point leaves state the next pass finishes: files go before the row that names them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import sqlite_utils

from ..billing.ledger import Ledger
from ..catalog import PrivacyConfig, StorageConfig
from ..policy.audit import clear_excerpts
from ..storage import Storage, StorageError
from ..store import accounts as acc
from ..store.responses import delete_account_responses, delete_stored_before
from ..tasks.store import TaskStore
from .closing import settle_to_zero
from .outputs import output_keys, remove_task_content

log = logging.getLogger("apimodels")

#: How long a sweeper owns a task it is removing; then another may take it over.
CLAIM_SECONDS = 300.0
_BATCH = 200
_DAY = 86_400


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


@dataclass(slots=True)
class SweepReport:
    """What one pass removed (or, in a dry run, would remove)."""

    tasks: int = 0  # tasks whose content went
    files: int = 0  # output files deleted
    excerpts: int = 0  # audit excerpts cleared
    idempotent_answers: int = 0
    accounts_emptied: int = 0  # closed accounts whose grace period ended
    accounts_pseudonymized: int = 0
    stored_responses: int = 0  # Responses API answers deleted
    dry_run: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)

    @property
    def anything(self) -> bool:
        return any(v for k, v in self.as_dict().items() if k != "dry_run")


class Sweeper:
    def __init__(
        self,
        db: sqlite_utils.Database,
        ledger: Ledger,
        store: TaskStore,
        storage: Storage,
        storage_config: StorageConfig,
        privacy: PrivacyConfig,
        *,
        idempotency_ttl: timedelta = timedelta(hours=24),  # http.idempotency.TTL
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.store = store
        self.storage = storage
        self.retention_days = storage_config.retention_days
        self.privacy = privacy
        self.idempotency_ttl = idempotency_ttl

    async def sweep(self, now: datetime | None = None, *, dry_run: bool = False) -> SweepReport:
        """One pass (see the module docstring); ``now`` is for tests that move the clock."""
        now = now or datetime.now(UTC)
        report = SweepReport(dry_run=dry_run)
        if dry_run:
            await self._preview(now, report)
            return report
        await self._expire_tasks(now, report)
        await self._empty_closed_accounts(now, report)
        await self._strays(now, report)
        report.excerpts = clear_excerpts(
            self.db, _iso(now - timedelta(days=self.privacy.audit_excerpt_days))
        )
        report.idempotent_answers = self._idempotent_answers(now)
        report.accounts_pseudonymized = self._pseudonymize(now)
        report.stored_responses += delete_stored_before(self.db, self._stored_cutoff(now))
        return report

    def _stored_cutoff(self, now: datetime) -> str:
        return _iso(now - timedelta(days=self.privacy.stored_response_days))

    # --- 1. tasks -----------------------------------------------------------------------

    async def _expire_tasks(self, now: datetime, report: SweepReport) -> None:
        seen: set[str] = set()
        while True:
            due = [
                i for i in self.store.outputs_due(now, self.retention_days, _BATCH) if i not in seen
            ]
            if not due:
                return
            seen.update(due)
            for task_id in due:
                await self._remove(task_id, now, report)

    async def _remove(self, task_id: str, now: datetime, report: SweepReport) -> None:
        task = self.store.claim_purge(task_id, now, CLAIM_SECONDS)
        if task is None:  # another sweeper has it, or finished it
            return
        try:
            files, erased = await remove_task_content(self.store, self.storage, task, now=now)
        except StorageError as exc:  # the claim runs out; the next pass tries again
            log.warning("task %s: outputs not deleted: %s", task_id, exc)
            return
        report.files += files
        report.tasks += erased

    # --- 2. closed accounts -------------------------------------------------------------

    async def _empty_closed_accounts(self, now: datetime, report: SweepReport) -> None:
        grace = now - timedelta(days=self.privacy.close_grace_days)
        for account_id in acc.closed_before(self.db, _iso(grace), "outputs_deleted_at"):
            for task_id in self.store.account_outputs(account_id):
                await self._remove(task_id, now, report)
            try:
                async for batch in self.storage.scan(self.storage.account_prefix(account_id)):
                    for listed in batch:
                        await self.storage.delete(listed.key)
                        report.files += 1
            except StorageError as exc:
                log.warning("closed account %s: outputs not deleted: %s", account_id, exc)
                continue
            if self.store.account_outputs(account_id):
                continue  # a task another sweeper holds: the next pass ends this account
            report.stored_responses += delete_account_responses(self.db, account_id)
            settle_to_zero(self.ledger, account_id, actor="sweep")
            acc.outputs_deleted(self.db, account_id, _iso(now))
            report.accounts_emptied += 1

    # --- 3. files no task names ----------------------------------------------------------

    def _retention_by_prefix(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT id, output_retention_days FROM accounts WHERE output_retention_days IS NOT NULL"
        ).fetchall()
        return {self.storage.account_prefix(a): days for a, days in rows}

    async def _old_files(self, now: datetime) -> list[str]:
        overrides = self._retention_by_prefix()
        old = []
        async for batch in self.storage.scan():
            for listed in batch:
                days = overrides.get(listed.key.partition("/")[0], self.retention_days)
                if days > 0 and listed.modified_at < now.timestamp() - days * _DAY:
                    old.append(listed.key)
        return old

    async def _strays(self, now: datetime, report: SweepReport) -> None:
        try:
            for key in await self._old_files(now):
                await self.storage.delete(key)
                report.files += 1
        except StorageError as exc:
            log.warning("stray outputs not deleted: %s", exc)

    # --- 5. and 6. ------------------------------------------------------------------------

    def _idempotent_answers(self, now: datetime, *, count_only: bool = False) -> int:
        cutoff = _iso(now - self.idempotency_ttl)
        if count_only:
            sql = "SELECT count(*) FROM idempotency_keys WHERE created_at < ?"
            return self.db.execute(sql, [cutoff]).fetchone()[0]
        with self.db.conn:
            return self.db.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", [cutoff]
            ).rowcount

    def _pseudonymize(self, now: datetime) -> int:
        cutoff = _iso(now - timedelta(days=self.privacy.billing_retention_days))
        done = 0
        for account_id in acc.closed_before(self.db, cutoff, "pseudonymized_at"):
            self.store.forget_webhooks(account_id)
            done += acc.pseudonymize(self.db, account_id, _iso(now))
        return done

    # --- a dry run ----------------------------------------------------------------------

    async def _preview(self, now: datetime, report: SweepReport) -> None:
        due = self.store.outputs_due(now, self.retention_days, 10**9)
        grace = _iso(now - timedelta(days=self.privacy.close_grace_days))
        closing = acc.closed_before(self.db, grace, "outputs_deleted_at")
        for account_id in closing:
            due += self.store.account_outputs(account_id)
        files = set(await self._old_files(now))
        for task_id in set(due):
            task = self.store.load(task_id)
            if task is not None:
                files |= output_keys(task)
        for account_id in closing:
            async for batch in self.storage.scan(self.storage.account_prefix(account_id)):
                files.update(o.key for o in batch)
        report.tasks, report.files = len(set(due)), len(files)
        report.accounts_emptied = len(closing)
        report.excerpts = clear_excerpts(
            self.db,
            _iso(now - timedelta(days=self.privacy.audit_excerpt_days)),
            dry_run=True,
        )
        report.idempotent_answers = self._idempotent_answers(now, count_only=True)
        billing = _iso(now - timedelta(days=self.privacy.billing_retention_days))
        report.accounts_pseudonymized = len(acc.closed_before(self.db, billing, "pseudonymized_at"))
        report.stored_responses = delete_stored_before(
            self.db, self._stored_cutoff(now), count_only=True
        )


async def sweep_periodically(sweeper: Sweeper, minutes: float) -> None:
    """A server's sweeper: a pass every ``minutes`` (several servers may run one each)."""
    while True:
        await asyncio.sleep(minutes * 60)
        try:
            report = await sweeper.sweep()
            if report.anything:
                log.info("retention sweep: %s", report.as_dict())
        except Exception as exc:  # keep sweeping; never crash the server over it
            log.error("retention sweep failed: %s", type(exc).__name__)
