"""Per-key limits: requests per minute and spending caps (per UTC day and in total).

Checked in memory, in microseconds, before the hold. The rate limit is a token bucket per
key and per server process. Spending is read from the usage rows when a capped key is first
seen and again every ``gateway.key_cache_seconds``, and counted in memory in between,
pending holds included; so within one process a cap is exact, and spending through other
processes is seen within that same bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlite_utils

from ..errors import RateLimited
from ..store.accounts import Principal


@dataclass(slots=True)
class _KeyState:
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    day: str = ""
    spent_day: int = 0
    spent_total: int = 0
    held: int = 0
    synced: float = -math.inf


def _today() -> tuple[str, float]:
    """Today's UTC date and the seconds until it ends."""
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return now.date().isoformat(), (tomorrow - now).total_seconds()


class Limiter:
    def __init__(self, db: sqlite_utils.Database, sync_seconds: float) -> None:
        self.db = db
        self.sync_seconds = sync_seconds
        self._keys: dict[str, _KeyState] = {}

    def admit(self, principal: Principal, hold_micros: int) -> None:
        """Raise 429 when the request would break one of the key's limits; else count it."""
        limits = principal.limits
        if limits is None:
            return
        state = self._keys.get(principal.key_id)
        if state is None:
            state = self._keys[principal.key_id] = _KeyState(tokens=float(limits.rpm or 0))
        if limits.rpm:
            now = time.monotonic()
            state.tokens = min(limits.rpm, state.tokens + (now - state.refilled) * limits.rpm / 60)
            state.refilled = now
            if state.tokens < 1:
                wait = math.ceil((1 - state.tokens) * 60 / limits.rpm)
                raise RateLimited(
                    f"This key is limited to {limits.rpm} requests per minute.",
                    code="key_rate_limit",
                    headers={"retry-after": str(wait)},
                )
        if limits.caps_spending:
            self._sync(principal.account_id, principal.key_id, state)
            day, seconds_left = _today()
            if state.day != day:
                state.day, state.spent_day = day, 0
            if (
                limits.daily_cap_micros is not None
                and state.spent_day + state.held + hold_micros > limits.daily_cap_micros
            ):
                raise RateLimited(
                    "This key has reached its daily spending cap.",
                    code="key_daily_cap",
                    headers={"retry-after": str(math.ceil(seconds_left))},
                )
            if (
                limits.total_cap_micros is not None
                and state.spent_total + state.held + hold_micros > limits.total_cap_micros
            ):
                # Retry-After: when in-flight requests of this key settle and free their holds.
                raise RateLimited(
                    "This key has reached its total spending cap; raise it with `apimodels keys limit`.",
                    code="key_total_cap",
                    headers={"retry-after": "60"},
                )
            state.held += hold_micros
        if limits.rpm:
            state.tokens -= 1

    def settled(self, principal: Principal, hold_micros: int, cost_micros: int) -> None:
        """A request admitted with ``hold_micros`` ended costing ``cost_micros``."""
        limits = principal.limits
        state = self._keys.get(principal.key_id)
        if limits is None or state is None or not limits.caps_spending:
            return
        state.held = max(0, state.held - hold_micros)
        state.spent_day += cost_micros
        state.spent_total += cost_micros

    def _sync(self, account_id: str, key_id: str, state: _KeyState) -> None:
        now = time.monotonic()
        if now - state.synced < self.sync_seconds:
            return
        day, _ = _today()
        # A task's hold counts as spent until the task ends: it settles in the background,
        # maybe in another process, long after this one admitted it.
        total, today = self.db.execute(
            "SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(CASE WHEN created_at >= ? THEN spent END), 0)"
            " FROM (SELECT created_at, CASE WHEN hold_state = 'pending' AND request_id LIKE 'task!_%'"
            " ESCAPE '!' THEN hold_micros ELSE cost_micros END AS spent"
            " FROM usage WHERE account_id = ? AND key_id = ?) AS spending",
            (day, account_id, key_id),
        ).fetchone()
        state.spent_total, state.spent_day, state.day, state.synced = total, today, day, now
