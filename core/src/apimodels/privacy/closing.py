"""Closing an account: export first, then close; the sweep does the rest later.

At closing (one transaction): the account is closed, every key revoked, and the balance's
fate written to the ledger as an ``adjustment`` that brings it to zero (forfeited per the
Terms; an operator who refunds does so first, with ``apimodels orders refund``). Unfinished
tasks are canceled first (their holds released: they cost nothing).

After ``privacy.close_grace_days``: the account's outputs are deleted (its tasks' content,
every file under its prefix in the store, its stored Responses API answers), and any balance that moved since closing (a
call in flight at that moment, a late refund) is settled to zero by a second entry. After
``privacy.billing_retention_days``: the email and key names are replaced by pseudonyms.
Each step is idempotent (compare-and-set, idempotency keys): a re-run finishes a step a
crash interrupted, and two processes never take it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from ..billing.ledger import Ledger, post_op, transaction
from ..policy.audit import list_violations
from ..storage import MAX_URL_TTL_SECONDS, Storage
from ..store import accounts as acc
from ..store.db import utcnow
from ..store.responses import account_responses
from ..tasks.render import absolute_url, render_task
from ..tasks.store import Finish, TaskStore
from ..topups.orders import list_orders
from .outputs import output_keys

FORFEITED = "balance forfeited on closing the account, per the Terms"
SETTLED = "closed account settled to zero after its grace period"


@dataclass(frozen=True, slots=True)
class Closed:
    """What closing did: the balance written off (negative: a debt written off)."""

    account_id: str
    forfeited_micros: int
    tasks_canceled: int
    outputs_deleted_after: str


def close_account(
    db: sqlite_utils.Database,
    ledger: Ledger,
    store: TaskStore,
    account: str,
    reason: str,
    *,
    actor: str,
    grace_days: int,
) -> Closed:
    """Close ``account`` (id or email); ``ValueError`` if it is closed already."""
    if not reason:
        raise ValueError("give a --reason")
    acct = acc.get_account(db, account)
    account_id = acct["id"]
    if acct["status"] == "closed":
        raise ValueError(f"account {account_id} is closed")
    canceled = 0
    for task_id in store.unfinished(account_id):
        end = Finish("canceled", error_code="account_closed", error_message="account closed")
        canceled += store.finish(task_id, end)
    now = utcnow()
    with transaction(ledger) as c:
        if not acc.close_op(c, account_id, reason, now):
            raise ValueError(f"account {account_id} is closed")
        balance = c.execute(
            "SELECT balance_micros FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()[0]
        # Written even at zero: the ledger says what became of the balance, always.
        post_op(
            c,
            account_id,
            -balance,
            kind="adjustment",
            reason=FORFEITED,
            actor=actor,
            idempotency_key=f"close:{account_id}",
        )
    after = datetime.fromisoformat(now) + timedelta(days=grace_days)
    return Closed(account_id, balance, canceled, after.isoformat(timespec="seconds"))


def settle_to_zero(ledger: Ledger, account_id: str, actor: str) -> int:
    """A closed account's balance back to zero, once; returns the amount posted."""
    with transaction(ledger) as c:
        balance = c.execute(
            "SELECT balance_micros FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()[0]
        if balance == 0:
            return 0
        posted = post_op(
            c,
            account_id,
            -balance,
            kind="adjustment",
            reason=SETTLED,
            actor=actor,
            idempotency_key=f"close-settled:{account_id}",
        )
    return 0 if posted is None else -balance


def export_account(
    db: sqlite_utils.Database,
    store: TaskStore,
    storage: Storage,
    account: str,
    *,
    public_url: str = "",
) -> dict[str, Any]:
    """Everything kept about an account, as JSON-able data: the account, keys (never their
    hashes), usage, ledger, tasks, stored Responses API answers, top-up orders, policy
    violations, and signed links (valid 7 days) to the output files still held."""
    data = acc.export_account(db, account)
    account_id = data["account"]["id"]
    data["account"].pop("webhook_secret", None)  # a secret, not data about the holder
    tasks, _ = store.page(account_id, limit=10**9)
    data["tasks"] = [render_task(t, storage, public_url) for t in reversed(tasks)]
    expires = datetime.now(UTC) + timedelta(seconds=MAX_URL_TTL_SECONDS)
    data["outputs"] = [
        {
            "task_id": t["id"],
            "url": absolute_url(storage.url(key, expires_in=MAX_URL_TTL_SECONDS), public_url),
            "expires_at": expires.isoformat(timespec="seconds"),
        }
        for t in reversed(tasks)
        for key in sorted(output_keys(t))
    ]
    data["stored_responses"] = account_responses(db, account_id)
    data["orders"] = list_orders(db, account_id, limit=10**9)
    data["policy_violations"] = list_violations(db, account_id, limit=10**9)
    return data
