"""An operator revokes an account's API key (a leaked one, an abusive one)."""

from __future__ import annotations

from typing import Any

from ..errors import NotFound
from ..store import accounts as acc
from . import audit
from .context import Actor, Operations, require_write


def get_key(ops: Operations, key_id: str) -> dict[str, Any]:
    """A key as listed (never its hash), 404 if there is none."""
    row = ops.db.execute("SELECT account_id FROM api_keys WHERE id = ?", [key_id]).fetchone()
    if row is None:
        raise NotFound(f"no key '{key_id}'", code="key_not_found", param="key_id")
    return next(k for k in acc.list_keys(ops.db, row[0]) if k["id"] == key_id)


def revoke_key(
    ops: Operations, actor: Actor, key_id: str, reason: str | None = None
) -> dict[str, Any]:
    """Revoke ``key_id`` now: this process refuses it at once, others within
    ``gateway.key_cache_seconds``. Revoking a revoked key changes nothing. The reason is
    optional here (a leaked key needs no explanation), and audited when given."""
    require_write(actor)
    before = get_key(ops, key_id)
    after = acc.revoke_key(ops.db, key_id)
    if ops.keys is not None:
        ops.keys.forget()
    if before["revoked_at"] is None:
        audit.record(
            ops.db, actor, "keys.revoke", key_id, reason=reason, before=before, after=after
        )
    return after
