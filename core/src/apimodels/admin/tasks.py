"""Tasks for an operator: any account's, and canceling one (cost 0, audited)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest, NotFound
from ..tasks.store import TERMINAL, Finish
from . import audit
from .context import Actor, Operations, need_reason, require_write

#: A task's columns an operator's list shows (not its input or output text).
FIELDS = (
    "id", "account_id", "key_id", "model", "provider", "status", "created_at", "completed_at",
    "cost_micros", "error_code",
)  # fmt: skip


def _view(task: dict[str, Any]) -> dict[str, Any]:
    return {k: task.get(k) for k in FIELDS}


def find_tasks(
    ops: Operations,
    account_id: str | None = None,
    status: str | None = None,
    *,
    limit: int = 20,
    starting_after: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Tasks newest first (every account's when ``account_id`` is None)."""
    rows, more = ops.tasks.page(
        account_id, limit=limit, status=status, starting_after=starting_after
    )
    return [_view(t) for t in rows], more


async def cancel_task(
    ops: Operations, actor: Actor, task_id: str, reason: str | None
) -> dict[str, Any]:
    """Cancel a queued or running task: its hold is released (it costs nothing) and, in a
    serving process, its job upstream is stopped too. A canceled one is answered as is."""
    require_write(actor)
    reason = need_reason(reason)
    task = ops.tasks.load(task_id)
    if task is None:
        raise NotFound(f"No task found with id '{task_id}'.", code="task_not_found")
    if task["status"] == "canceled":
        return _view(task)
    if task["status"] in TERMINAL:
        raise InvalidRequest(
            f"Task {task_id} has already {task['status']}; it cannot be canceled.",
            code="task_not_cancelable",
            status=409,
        )
    if ops.runner is not None:
        await ops.runner.cancel(task)
    else:
        ops.tasks.finish(task_id, Finish("canceled"))
    after = ops.tasks.load(task_id)
    assert after is not None
    audit.record(
        ops.db,
        actor,
        "tasks.cancel",
        task_id,
        reason=reason,
        before=_view(task),
        after=_view(after),
    )
    return _view(after)
