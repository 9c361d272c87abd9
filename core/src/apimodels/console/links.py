"""One-time links mailed to an account holder: verify the email address, reset the
password. The token (256 random bits) is in the link only; the database keeps its hash.
Using a link is a compare-and-set, so two clicks (or two workers) use it once."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import sqlite_utils

from ..store.db import utcnow
from .sessions import digest

LIFETIMES = {"verify": timedelta(days=2), "reset": timedelta(hours=1)}


def issue(db: sqlite_utils.Database, account_id: str, purpose: str) -> str:
    """A new token for ``purpose``; earlier unused ones of the same purpose stop working."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with db.conn:
        db.execute(
            "UPDATE console_tokens SET used_at = ?"
            " WHERE account_id = ? AND purpose = ? AND used_at IS NULL",
            [utcnow(), account_id, purpose],
        )
        db.execute(
            "INSERT INTO console_tokens (id, account_id, purpose, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                digest(token),
                account_id,
                purpose,
                utcnow(),
                (now + LIFETIMES[purpose]).isoformat(timespec="seconds"),
            ],
        )
    return token


def peek(db: sqlite_utils.Database, token: str, purpose: str) -> str | None:
    """The account a live token is for, without using it (the reset form's first view)."""
    row = db.execute(
        "SELECT account_id FROM console_tokens WHERE id = ? AND purpose = ?"
        " AND used_at IS NULL AND expires_at > ?",
        [digest(token), purpose, datetime.now(UTC).isoformat(timespec="seconds")],
    ).fetchone()
    return row[0] if row else None


def use(db: sqlite_utils.Database, token: str, purpose: str) -> str | None:
    """Use a token once: the account it was for, or None (unknown, used, expired)."""
    account_id = peek(db, token, purpose)
    if account_id is None:
        return None
    with db.conn:
        used = db.execute(
            "UPDATE console_tokens SET used_at = ? WHERE id = ? AND used_at IS NULL",
            [utcnow(), digest(token)],
        ).rowcount
    return account_id if used == 1 else None
