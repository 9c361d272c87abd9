"""Admin tokens: the credentials of the admin HTTP API, made by the CLI.

A token looks like ``sk-adm-<prefix><secret>`` (8 indexed characters, then 40 secret ones);
only its SHA-256 is stored and compared in constant time, as for API keys. Its scope is
``read`` (GET only) or ``write`` (everything). Revocation holds at once in every process:
the admin API is not a hot path, so each request reads the token's row, with no cache.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from typing import Any

import sqlite_utils

from ..errors import AuthenticationError, NotFound
from ..store.db import utcnow
from . import audit
from .context import Actor

TOKEN_PREFIX = "sk-adm-"
SCOPES = ("read", "write")
_ALPHABET = string.ascii_letters + string.digits
_PREFIX_LEN = 8
_SECRET_LEN = 40
_TOKEN_LEN = len(TOKEN_PREFIX) + _PREFIX_LEN + _SECRET_LEN


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "hash"}
    out["hint"] = TOKEN_PREFIX + row["prefix"] + "…"
    return out


def create_token(
    db: sqlite_utils.Database, actor: Actor, name: str, scope: str
) -> tuple[dict[str, Any], str]:
    """A new token (its row, and the token itself, shown once)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    prefix = _random(_PREFIX_LEN)
    token = TOKEN_PREFIX + prefix + _random(_SECRET_LEN)
    row = {
        "id": "atk_" + _random(16),
        "name": name,
        "scope": scope,
        "prefix": prefix,
        "hash": _digest(token),
        "created_at": utcnow(),
        "created_by": actor.name,
        "revoked_at": None,
    }
    with db.conn:
        db["admin_tokens"].insert(row)
    public = _public(row)
    audit.record(db, actor, "admin_tokens.create", row["id"], after=public)
    return public, token


def list_tokens(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return [_public(r) for r in db.query("SELECT * FROM admin_tokens ORDER BY created_at")]


def _row(db: sqlite_utils.Database, token_id: str) -> dict[str, Any]:
    rows = list(db.query("SELECT * FROM admin_tokens WHERE id = ?", [token_id]))
    if not rows:
        raise NotFound(f"no admin token {token_id!r}")
    return rows[0]


def revoke_token(
    db: sqlite_utils.Database, actor: Actor, token_id: str, reason: str | None = None
) -> dict[str, Any]:
    """Revoke a token now (a no-op, unaudited, when it is revoked already)."""
    before = _public(_row(db, token_id))
    if before["revoked_at"] is None:
        with db.conn:
            db.execute(
                "UPDATE admin_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                [utcnow(), token_id],
            )
        after = _public(_row(db, token_id))
        audit.record(
            db, actor, "admin_tokens.revoke", token_id, reason=reason, before=before, after=after
        )
        return after
    return before


def authenticate(db: sqlite_utils.Database, authorization: str | None) -> Actor:
    """The actor behind an ``Authorization: Bearer sk-adm-...`` header (401 otherwise)."""
    if not authorization:
        raise AuthenticationError(
            "Missing admin token: send it as 'Authorization: Bearer <token>'",
            code="missing_admin_token",
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    invalid = AuthenticationError("Invalid admin token", code="invalid_admin_token")
    if scheme.lower() != "bearer" or len(token) != _TOKEN_LEN or not token.startswith(TOKEN_PREFIX):
        raise invalid  # never echo the token, not even in part
    prefix = token[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + _PREFIX_LEN]
    row = db.execute(
        "SELECT id, hash, scope, revoked_at FROM admin_tokens WHERE prefix = ?", [prefix]
    ).fetchone()
    if row is None or not hmac.compare_digest(row[1], _digest(token)):
        raise invalid
    if row[3] is not None:
        raise AuthenticationError("This admin token has been revoked", code="revoked_admin_token")
    return Actor(f"admin-token:{row[0]}", can_write=row[2] == "write")
