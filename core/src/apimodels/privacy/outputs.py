"""Removing one task's content: its output files first, then the text in its row.

The order makes a crash harmless: the row keeps naming its files until they are gone, and
the sweep (``retention``) picks up a task whose deletion did not finish.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ..storage import Storage
from ..tasks.store import TaskStore


def output_keys(task: dict[str, Any]) -> set[str]:
    """The storage keys a task's row names (none for a text output)."""
    output = json.loads(task["output"]) if task["output"] else None
    return {item["key"] for item in output} if isinstance(output, list) else set()


async def remove_task_content(
    store: TaskStore,
    storage: Storage,
    task: dict[str, Any],
    *,
    scan: bool = False,
    now: datetime | None = None,
) -> tuple[int, bool]:
    """Delete ``task``'s output files, then clear its input, output and error text (the
    billing record stays). ``scan`` also looks in the task's folder of the store for files
    its row does not name (a worker that lost a race with a cancel). Returns the number of
    files deleted and whether this call cleared the row (False: another did it first);
    raises ``StorageError`` (the row is then left as it was)."""
    keys = output_keys(task)
    if scan:
        folder = f"{storage.account_prefix(task['account_id'])}/{task['id']}"
        async for batch in storage.scan(folder):
            keys.update(o.key for o in batch)
    for key in sorted(keys):
        await storage.delete(key)
    return len(keys), store.erase(task["id"], now)
