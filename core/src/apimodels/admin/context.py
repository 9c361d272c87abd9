"""What every admin service function works with: the stores, and who is acting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import sqlite_utils

from ..billing.ledger import Ledger
from ..store.db import read_off_loop

if TYPE_CHECKING:
    from ..store.accounts import KeyStore
    from ..tasks.runner import TaskRunner
    from ..tasks.store import TaskStore
    from ..topups.stripe_gateway import StripeGateway


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does an admin action: an admin token (``admin-token:atk_...``) or an operator at
    the command line (``cli:USER``), as the audit log names them. A read-only token's
    actor cannot write."""

    name: str
    can_write: bool = True


@dataclass(frozen=True, slots=True)
class Operations:
    """The stores of one deployment, as a server process or the CLI opened them.

    ``keys`` is the serving process's key cache (dropped for an account whose status or
    keys change, so the change holds here at once; other processes see it within
    ``gateway.key_cache_seconds``); ``runner`` cancels a task's job upstream too; ``stripe``
    refunds orders. Each is None where there is none (the CLI has no cache or runner)."""

    db: sqlite_utils.Database
    ledger: Ledger
    tasks: TaskStore
    close_grace_days: int
    keys: KeyStore | None = None
    runner: TaskRunner | None = None
    stripe: StripeGateway | None = None


T = TypeVar("T")


async def reading(ops: Operations, fn: Callable[[Operations], T]) -> T:
    """``fn(ops)`` for a read that may scan many rows (the overview, the books' check), off
    the event loop: its stores read through a worker thread's own connection
    (``store.db.read_off_loop``)."""

    def run(reader: Any) -> T:
        return fn(ops if reader is ops.db else replace(ops, db=reader, ledger=Ledger(reader)))

    return await read_off_loop(ops.db, run)


def require_write(actor: Actor) -> None:
    """403 for a read-only actor: every write service function asks this first."""
    from ..errors import PermissionDenied

    if not actor.can_write:
        raise PermissionDenied(
            "This admin token is read-only: a write needs a token of scope 'write'",
            code="admin_read_only",
        )


def need_reason(reason: str | None) -> str:
    """An action that changes an account says why (400 otherwise)."""
    from ..errors import InvalidRequest

    if reason is None or not reason.strip():
        raise InvalidRequest("Give a reason: it is kept in the audit log", param="reason")
    return reason.strip()
