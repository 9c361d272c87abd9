"""Personal data and outputs: what the gateway keeps, for how long, and how it goes.

- ``outputs``: remove one task's content (its files, then its input and output text),
  keeping its billing record; used by ``DELETE /v1/tasks/{id}``, the sweep and closing.
- ``retention``: the periodic sweep (``storage.retention_days`` and the ``[privacy]``
  table), safe with several processes and finished by a re-run after a crash.
- ``closing``: export an account, close it (keys revoked, tasks canceled, the balance's
  fate written to the ledger), and the later steps the sweep takes for a closed account.

docs/privacy.md says what is kept where; this package is how those promises are kept.
"""

from .closing import close_account, export_account
from .outputs import remove_task_content
from .retention import Sweeper, SweepReport

__all__ = ["SweepReport", "Sweeper", "close_account", "export_account", "remove_task_content"]
