"""Operators: the people who run the service, by email. The Console gives them its admin
pages (a role beside the account holder's); the CLI and admin tokens need no such record."""

from __future__ import annotations

import secrets
from typing import Any

import sqlite_utils

from ..errors import NotFound
from ..store.db import utcnow
from . import audit
from .context import Actor


def _normal(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise ValueError(f"not an email address: {email!r}")
    return email


def create_admin(db: sqlite_utils.Database, actor: Actor, email: str) -> dict[str, Any]:
    """Make ``email`` an operator (again, if it was removed)."""
    email = _normal(email)
    current = is_admin(db, email)
    if current is not None:
        raise ValueError(f"{email} is an operator already ({current['id']})")
    row = {
        "id": "adm_" + secrets.token_hex(8),
        "email": email,
        "created_at": utcnow(),
        "created_by": actor.name,
        "removed_at": None,
    }
    with db.conn:
        # A removed record keeps its email's unique slot: it is renamed out of the way.
        db.execute(
            "UPDATE admins SET email = id || ':' || email WHERE email = ? AND removed_at IS NOT NULL",
            [email],
        )
        db["admins"].insert(row)
    audit.record(db, actor, "admins.create", row["id"], after=row)
    return row


def list_admins(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """The current operators, oldest first."""
    return list(db.query("SELECT * FROM admins WHERE removed_at IS NULL ORDER BY created_at, id"))


def is_admin(db: sqlite_utils.Database, email: str) -> dict[str, Any] | None:
    """The operator record of ``email``, if it is a current operator."""
    rows = list(
        db.query(
            "SELECT * FROM admins WHERE email = ? AND removed_at IS NULL", [email.strip().lower()]
        )
    )
    return rows[0] if rows else None


def may_operate(db: sqlite_utils.Database, account: dict[str, Any]) -> bool:
    """Whether a Console sign-in of ``account`` gets the operator's role: its email is a
    current operator's and verified (a password set by sign-up alone proves nothing of the
    address: whoever signed up first with an operator's email gets no admin page). The
    admin pages ask :func:`is_admin` again on each request, so a removal holds at once."""
    verified = account.get("email_verified_at") is not None
    return verified and is_admin(db, account["email"]) is not None


def console_actor(email: str) -> Actor:
    """An operator acting in the Console, as the audit log names them."""
    return Actor(f"console:{email}")


def remove_admin(db: sqlite_utils.Database, actor: Actor, ref: str) -> dict[str, Any]:
    """``ref`` (an email or ``adm_`` id) is no longer an operator."""
    rows = list(
        db.query(
            "SELECT * FROM admins WHERE (id = ? OR email = ?) AND removed_at IS NULL",
            [ref, ref.strip().lower()],
        )
    )
    if not rows:
        raise NotFound(f"no operator {ref!r}")
    before = rows[0]
    with db.conn:
        db.execute("UPDATE admins SET removed_at = ? WHERE id = ?", [utcnow(), before["id"]])
    after = next(iter(db.query("SELECT * FROM admins WHERE id = ?", [before["id"]])))
    audit.record(db, actor, "admins.remove", before["id"], before=before, after=after)
    return after
