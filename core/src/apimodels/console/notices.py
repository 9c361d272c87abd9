"""Mail on events the holder should hear of without asking: a top-up's receipt, a low
balance, a suspension (with its reason). A loop in each serving process looks for them
every ``[console] notice_interval_seconds``; each mail is claimed by a row of
``console_mail_log`` (or, for a low balance, a compare-and-set on the account) before it
is sent, so several processes send it once. A mail that fails is not retried (the pages
show the same facts)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlite_utils

from ..billing.money import to_micros
from ..store.db import utcnow
from .app import minor, usd
from .legal import Legal
from .mail import Mail, Notifier

log = logging.getLogger("apimodels.console")
#: Events older than this when first seen are not mailed (a server started after a long
#: stop, or a database from before the Console, sends no stale receipts).
LOOKBACK = timedelta(days=2)


class Notices:
    def __init__(
        self,
        db: sqlite_utils.Database,
        notifier: Notifier,
        origin: str,
        low_balance_usd: Decimal,
        legal: Legal | None = None,
    ) -> None:
        self.legal = legal
        self.db = db
        self.notifier = notifier
        self.origin = origin.rstrip("/")
        self.default_low = to_micros(low_balance_usd)

    def _claim(self, kind: str, ref: str, account_id: str) -> bool:
        with self.db.conn:
            return (
                self.db.execute(
                    "INSERT INTO console_mail_log (kind, ref, account_id, created_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (kind, ref) DO NOTHING",
                    [kind, ref, account_id, utcnow()],
                ).rowcount
                == 1
            )

    async def run_once(self) -> int:
        """Send what is due; the number of mails sent."""
        since = (datetime.now(UTC) - LOOKBACK).isoformat(timespec="seconds")
        sent = 0
        for order_id, account_id, email, micros, currency, amount_minor, method in self.db.execute(
            "SELECT o.id, o.account_id, a.email, o.amount_usd_micros, o.currency, o.amount_minor,"
            " o.method FROM topup_orders o JOIN accounts a ON a.id = o.account_id"
            " LEFT JOIN console_mail_log m ON m.kind = 'receipt' AND m.ref = o.id"
            " WHERE o.status = 'paid' AND o.paid_at >= ? AND m.ref IS NULL",
            [since],
        ).fetchall():
            if self._claim("receipt", order_id, account_id):
                body = (
                    f"Thank you: {usd(micros)} of credits were added to your account.\n\n"
                    f"Order {order_id}, paid {minor(amount_minor)} {currency.upper()} by {method}.\n"
                    f"Receipt: {self.origin}/console/credits/{order_id}\n"
                )
                sent += await self.notifier.send(
                    Mail(email, "Your top-up receipt", body, "receipt")
                )
        # One mail per suspension: its ref is when it happened (the reason, for one made
        # before accounts kept that), so the same reason a second time is mailed again.
        for account_id, email, reason, ref in self.db.execute(
            "SELECT a.id, a.email, a.status_reason, a.id || ':'"
            " || COALESCE(a.status_changed_at, a.status_reason, '') AS ref FROM accounts a"
            " LEFT JOIN console_mail_log m ON m.kind = 'suspended'"
            " AND m.ref = a.id || ':' || COALESCE(a.status_changed_at, a.status_reason, '')"
            " WHERE a.status = 'suspended' AND m.ref IS NULL"
        ).fetchall():
            if self._claim("suspended", ref, account_id):
                body = (
                    f"Your account is suspended: {reason or 'contact support'}.\n\n"
                    "Its API keys are refused until it is reinstated.\n"
                )
                sent += await self.notifier.send(
                    Mail(email, "Your account is suspended", body, "suspended")
                )
        sent += await self._low_balances()
        sent += await self._terms_changed()
        return sent

    async def _terms_changed(self) -> int:
        """Holders who accepted an earlier Terms hear once of the version now in force."""
        terms = self.legal.current.get("terms") if self.legal else None
        if terms is None:
            return 0
        sent = 0
        for account_id, email in self.db.execute(
            "SELECT a.id, a.email FROM accounts a WHERE a.status = 'active'"
            " AND EXISTS (SELECT 1 FROM console_acceptances c WHERE c.account_id = a.id"
            " AND c.document = 'terms')"
            " AND NOT EXISTS (SELECT 1 FROM console_acceptances c WHERE c.account_id = a.id"
            " AND c.document = 'terms' AND c.version = ?)",
            [terms.version],
        ).fetchall():
            if self._claim("terms", f"{account_id}:{terms.version}", account_id):
                body = (
                    f"We have published a new version of our Terms of Service ({terms.version}).\n\n"
                    f"Read it: {self.origin}/console/terms\n"
                    "You will be asked to accept it the next time you sign in to the Console.\n"
                )
                sent += await self.notifier.send(
                    Mail(email, "Our Terms of Service have changed", body, "terms")
                )
        return sent

    async def _low_balances(self) -> int:
        with self.db.conn:  # re-armed once the balance is back above the threshold
            self.db.execute(
                "UPDATE accounts SET low_balance_mailed_at = NULL"
                " WHERE low_balance_mailed_at IS NOT NULL"
                " AND balance_micros - held_micros >= COALESCE(low_balance_micros, ?)",
                [self.default_low],
            )
        sent = 0
        # Only verified holders that have had credits: a new, empty account is not "low".
        for account_id, email, available in self.db.execute(
            "SELECT id, email, balance_micros - held_micros FROM accounts"
            " WHERE status = 'active' AND email_verified_at IS NOT NULL"
            " AND low_balance_mailed_at IS NULL"
            " AND balance_micros - held_micros < COALESCE(low_balance_micros, ?)"
            " AND EXISTS (SELECT 1 FROM ledger_entries e WHERE e.account_id = accounts.id"
            " AND e.amount_micros > 0)",
            [self.default_low],
        ).fetchall():
            with self.db.conn:
                claimed = self.db.execute(
                    "UPDATE accounts SET low_balance_mailed_at = ?"
                    " WHERE id = ? AND low_balance_mailed_at IS NULL",
                    [utcnow(), account_id],
                ).rowcount
            if claimed:
                body = (
                    f"Your available balance is {usd(available)}. Calls are refused once it"
                    f" cannot cover them.\n\nTop up: {self.origin}/console/credits\n"
                )
                sent += await self.notifier.send(
                    Mail(email, "Your balance is low", body, "low_balance")
                )
        return sent

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run_once()
            except Exception as exc:  # keep going: the next round tries again
                log.error("console notices failed: %s", type(exc).__name__)
