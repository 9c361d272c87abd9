"""Sign-in throttling: failed attempts counted in the database (every worker and host sees
the same counts) per email address and per client address, over a sliding window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlite_utils

from ..store.db import utcnow

#: A client address may fail this many times the per-email limit (several people behind
#: one NAT), so that guessing across many emails from one place is bounded too.
PER_ADDRESS_FACTOR = 4


class Throttle:
    def __init__(self, db: sqlite_utils.Database, attempts: int, window_minutes: int) -> None:
        self.db = db
        self.attempts = attempts
        self.window = timedelta(minutes=window_minutes)

    def _since(self) -> str:
        return (datetime.now(UTC) - self.window).isoformat(timespec="microseconds")

    def _failures(self, subject: str) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM console_login_failures WHERE subject = ? AND created_at > ?",
            [subject, self._since()],
        ).fetchone()[0]

    def blocked(self, email: str, ip: str) -> bool:
        return (
            self._failures("email:" + email) >= self.attempts
            or self._failures("ip:" + ip) >= self.attempts * PER_ADDRESS_FACTOR
        )

    def failed(self, email: str, ip: str) -> None:
        now = utcnow()
        with self.db.conn:
            self.db.execute(
                "INSERT INTO console_login_failures (subject, created_at) VALUES (?, ?), (?, ?)",
                ["email:" + email, now, "ip:" + ip, now],
            )
            # Old rows are useless: drop them as we go (bounded table, no sweeper needed).
            self.db.execute(
                "DELETE FROM console_login_failures WHERE created_at < ?", [self._since()]
            )

    def succeeded(self, email: str) -> None:
        with self.db.conn:
            self.db.execute(
                "DELETE FROM console_login_failures WHERE subject = ?", ["email:" + email]
            )

    @property
    def retry_after_seconds(self) -> int:
        return int(self.window.total_seconds())
