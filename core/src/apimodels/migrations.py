"""Forward-only schema migrations, each applied once and recorded in ``_migrations``.

Add a function ``mNNN_what(db)`` decorated with ``@migration`` at the end; never edit one
that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending migrations in order; return the names applied."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with db.conn:  # the migration and its record commit together
            db.conn.execute("BEGIN IMMEDIATE")
            fn(db)
            db.conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                (fn.__name__, datetime.now(UTC).isoformat()),
            )
        applied.append(fn.__name__)
    return applied


@migration
def m001_accounts_and_keys(db: sqlite_utils.Database) -> None:
    db["accounts"].create(
        {
            "id": str,
            "email": str,
            "status": str,  # active | suspended | closed
            "status_reason": str,
            "created_at": str,
        },
        pk="id",
        not_null={"email", "status", "created_at"},
        defaults={"status": "active"},
    )
    db["accounts"].create_index(["email"], unique=True)
    db["api_keys"].create(
        {
            "id": str,
            "account_id": str,
            "name": str,
            "prefix": str,  # non-secret lookup handle, part of the key itself
            "hash": str,  # sha256 of the whole key; the key is never stored
            "created_at": str,
            "expires_at": str,  # set when rotated: the old key's grace period ends
            "revoked_at": str,
            "replaced_by": str,
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "prefix", "hash", "created_at"},
    )
    db["api_keys"].create_index(["prefix"], unique=True)
    db["api_keys"].create_index(["account_id"])
