"""The operator's side: the admin service functions, one implementation behind two doors
(the ``apimodels`` CLI and the admin HTTP API under ``/admin/v1/``), with admin tokens,
operator records and an append-only audit log of every admin action.

Each module owns one concern: ``accounts`` (search, detail, suspend, unsuspend, close),
``credits`` (grants, adjustments), ``keys`` (revocation), ``orders`` (list, show, refund),
``tasks`` (list, cancel), ``usage`` (totals), ``checks`` (the books), ``tokens`` (admin
tokens), ``operators`` (operator records), ``audit`` (the log); ``api`` serves them over
HTTP. Every write takes an :class:`Actor` and is refused (403) to a read-only one.
"""

from .context import Actor, Operations, need_reason, require_write

__all__ = ["Actor", "Operations", "need_reason", "require_write"]
