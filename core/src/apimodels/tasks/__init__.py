"""Long-running tasks: ``POST /v1/tasks``, the worker that finishes them, client webhooks.

- ``store``: the tasks table; create (with its hold) and finish (with its settle) are each
  one transaction, and finishing is a compare-and-set: a task is charged once.
- ``runner``: the worker inside each server process: submits and polls upstream jobs, runs
  other models' calls in the background, copies outputs into storage, settles, notifies.
- ``notify``: signed client webhooks, with retries and the SSRF rules.

Their HTTP endpoints (and the one that takes upstream job webhooks) are ``http.tasks``.
"""

from .runner import TaskRunner
from .store import TaskStore

__all__ = ["TaskRunner", "TaskStore"]
