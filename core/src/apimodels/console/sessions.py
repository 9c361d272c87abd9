"""Console sessions, kept server-side so that each can be revoked.

The cookie holds 256 random bits; the database keeps only their SHA-256 (a copy of the
database opens no session). Signing in always makes a new session (no fixation); signing
out, changing the password, resetting it or closing the account revokes sessions.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from ..store.db import utcnow

COOKIE = "am_session"
HOLDER = "holder"  # an account holder
OPERATOR = "operator"  # an operator (admin.operators): the admin pages too
#: last_seen_at is written at most this often (a page view is not a write).
_TOUCH_EVERY = timedelta(minutes=5)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    id: str  # the digest, never the cookie's value
    token: str
    account_id: str
    role: str
    email: str
    account_status: str
    email_verified: bool


def start(
    db: sqlite_utils.Database,
    account_id: str,
    *,
    days: int,
    user_agent: str,
    ip: str,
    role: str = HOLDER,
) -> str:
    """A new session for the account; returns the cookie's value (shown to nobody else)."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with db.conn:
        db.execute(
            "INSERT INTO console_sessions (id, account_id, role, created_at, last_seen_at,"
            " expires_at, user_agent, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                digest(token),
                account_id,
                role,
                utcnow(),
                utcnow(),
                (now + timedelta(days=days)).isoformat(timespec="seconds"),
                user_agent[:200],
                ip,
            ],
        )
    return token


def load(db: sqlite_utils.Database, token: str | None) -> Session | None:
    """The live session behind a cookie, or None (unknown, revoked, expired, closed)."""
    if not token:
        return None
    row = db.execute(
        "SELECT s.id, s.account_id, s.role, s.expires_at, s.last_seen_at, a.email, a.status,"
        " a.email_verified_at FROM console_sessions s JOIN accounts a ON a.id = s.account_id"
        " WHERE s.id = ? AND s.revoked_at IS NULL",
        [digest(token)],
    ).fetchone()
    now = datetime.now(UTC)
    if row is None or datetime.fromisoformat(row[3]) <= now or row[6] == "closed":
        return None
    if now - datetime.fromisoformat(row[4]) > _TOUCH_EVERY:
        with db.conn:
            db.execute(
                "UPDATE console_sessions SET last_seen_at = ? WHERE id = ?", [utcnow(), row[0]]
            )
    return Session(row[0], token, row[1], row[2], row[5], row[6], row[7] is not None)


def revoke(db: sqlite_utils.Database, session_id: str, account_id: str) -> bool:
    """Revoke one of the account's sessions (another account's id changes nothing)."""
    with db.conn:
        return (
            db.execute(
                "UPDATE console_sessions SET revoked_at = ?"
                " WHERE id = ? AND account_id = ? AND revoked_at IS NULL",
                [utcnow(), session_id, account_id],
            ).rowcount
            == 1
        )


def revoke_all(db: sqlite_utils.Database, account_id: str, *, keep: str | None = None) -> int:
    """Sign the account out everywhere (but in session ``keep``, when given)."""
    with db.conn:
        return db.execute(
            "UPDATE console_sessions SET revoked_at = ?"
            " WHERE account_id = ? AND revoked_at IS NULL AND id <> ?",
            [utcnow(), account_id, keep or ""],
        ).rowcount


def active(db: sqlite_utils.Database, account_id: str) -> list[dict[str, Any]]:
    """The account's live sessions, newest first."""
    return list(
        db.query(
            "SELECT id, role, created_at, last_seen_at, expires_at, user_agent, ip"
            " FROM console_sessions WHERE account_id = ? AND revoked_at IS NULL"
            " AND expires_at > ? ORDER BY created_at DESC",
            [account_id, datetime.now(UTC).isoformat(timespec="seconds")],
        )
    )
