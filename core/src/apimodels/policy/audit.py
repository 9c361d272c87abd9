"""The audit trail of refused requests: one ``policy_violations`` row per deny (by a policy
plugin or by an upstream's own safety system).

A row keeps who (account, key), what (model, category, plugin, reason), when, a SHA-256 of
the content and a short redacted excerpt; never the full content unless
``[safety] store_full_content`` asks for it. Redaction removes what identifies people or
unlocks things (e-mail addresses, URLs, phone and card numbers, key-like tokens) before
the excerpt is cut to ``[safety] excerpt_chars``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from ..store.db import utcnow

_REDACTIONS = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.IGNORECASE), "[url]"),
    (re.compile(r"\b(?:sk|pk|rk|key|tok|ghp|xox[abp])[-_][\w-]{12,}", re.IGNORECASE), "[secret]"),
    (re.compile(r"\b[A-Za-z0-9+/_-]*\d[A-Za-z0-9+/_-]*[A-Za-z][A-Za-z0-9+/_-]{22,}"), "[secret]"),
    (re.compile(r"\+?\d[\d ().-]{6,}\d"), "[number]"),
]


def redact(text: str, limit: int) -> str:
    """``text`` without personal data or secrets, whitespace folded, cut to ``limit``."""
    for pattern, placeholder in _REDACTIONS:
        text = pattern.sub(placeholder, text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def content_hash(texts: list[str]) -> str:
    """SHA-256 of the content as the policies saw it (the texts joined by newlines)."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Violation:
    """One refused request, as recorded."""

    account_id: str
    key_id: str | None
    model: str
    modality: str
    category: str
    plugin: str
    source: str  # policy | upstream
    reason: str
    texts: list[str]
    evidence: str = ""
    request_id: str | None = None


def record(
    db: sqlite_utils.Database,
    violation: Violation,
    *,
    excerpt_chars: int,
    store_full_content: bool = False,
) -> dict[str, Any]:
    """Insert the audit row of ``violation`` (its own transaction); return it."""
    content = "\n".join(violation.texts)
    row = {
        "created_at": utcnow(),
        "account_id": violation.account_id,
        "key_id": violation.key_id,
        "request_id": violation.request_id,
        "model": violation.model,
        "modality": violation.modality,
        "category": violation.category,
        "plugin": violation.plugin,
        "source": violation.source,
        "reason": violation.reason,
        "excerpt": redact(violation.evidence or content, excerpt_chars),
        "content_sha256": content_hash(violation.texts),
        "content": content if store_full_content else None,
        "reviewed_at": None,
    }
    with db.conn:
        db.execute("BEGIN IMMEDIATE")
        row["id"] = db["policy_violations"].insert(row).last_pk
    return row


def recent_count(db: sqlite_utils.Database, account_id: str, window: timedelta) -> int:
    """Unreviewed violations of an account within the last ``window``."""
    since = (datetime.now(UTC) - window).isoformat(timespec="microseconds")
    return db.execute(
        "SELECT count(*) FROM policy_violations"
        " WHERE account_id = ? AND created_at >= ? AND reviewed_at IS NULL",
        [account_id, since],
    ).fetchone()[0]


def mark_reviewed(db: sqlite_utils.Database, account_id: str) -> int:
    """Mark an account's violations reviewed (they no longer count toward a suspension)."""
    with db.conn:
        db.execute("BEGIN IMMEDIATE")
        cursor = db.execute(
            "UPDATE policy_violations SET reviewed_at = ?"
            " WHERE account_id = ? AND reviewed_at IS NULL",
            [utcnow(), account_id],
        )
    return cursor.rowcount


def list_violations(
    db: sqlite_utils.Database, account_id: str, limit: int = 50
) -> list[dict[str, Any]]:
    """An account's latest violations, newest first."""
    return list(
        db.query(
            "SELECT * FROM policy_violations WHERE account_id = ? ORDER BY id DESC LIMIT ?",
            [account_id, limit],
        )
    )


def clear_excerpts(db: sqlite_utils.Database, before: str, *, dry_run: bool = False) -> int:
    """Remove the excerpt and content of violations recorded before ``before`` (the row,
    its category and hash stay: the account's record). Returns how many rows (would) change."""
    where = "created_at < ? AND (excerpt != '' OR content IS NOT NULL)"
    if dry_run:
        return db.execute(
            f"SELECT count(*) FROM policy_violations WHERE {where}", [before]
        ).fetchone()[0]
    with db.conn:
        db.execute("BEGIN IMMEDIATE")
        return db.execute(
            f"UPDATE policy_violations SET excerpt = '', content = NULL WHERE {where}", [before]
        ).rowcount
