"""Console credentials of an account holder: the password and the verified email address.

An account is made by ``store.accounts.create_account`` (the same function the CLI uses);
an account the CLI made has no password until its holder sets one through a reset link.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from ..store.db import utcnow


def find_by_email(db: sqlite_utils.Database, email: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM accounts WHERE email = ?", [email.strip().lower()]))
    return rows[0] if rows else None


def get(db: sqlite_utils.Database, account_id: str) -> dict[str, Any]:
    return next(db.query("SELECT * FROM accounts WHERE id = ?", [account_id]))


def set_password_hash(db: sqlite_utils.Database, account_id: str, password_hash: str) -> None:
    with db.conn:
        db.execute(
            "UPDATE accounts SET password_hash = ? WHERE id = ?", [password_hash, account_id]
        )


def mark_verified(db: sqlite_utils.Database, account_id: str) -> None:
    with db.conn:
        db.execute(
            "UPDATE accounts SET email_verified_at = ? WHERE id = ? AND email_verified_at IS NULL",
            [utcnow(), account_id],
        )


def set_low_balance(db: sqlite_utils.Database, account_id: str, micros: int | None) -> None:
    with db.conn:
        db.execute(
            "UPDATE accounts SET low_balance_micros = ?, low_balance_mailed_at = NULL WHERE id = ?",
            [micros, account_id],
        )
