"""Per-key limits: requests per minute and spending caps (per UTC day and in total).

Checked in memory, in microseconds, before the hold, in the common case.

Requests per minute hold across every process and host on the database: each clock minute
of a key has a shared counter (``rate_windows``), from which a process leases a *slice* of
requests (``rpm / 8``, at least 1) with one atomic upsert, and admits that many in memory
before it asks again. The counter never grants more than ``rpm`` a minute, so over any clock
minute the key is served at most ``rpm`` requests, whatever the number of processes; a
slice unused at the minute's end is lost, so with P processes a busy key may be refused up
to (P - 1) x slice requests early in a minute. Within a process a token bucket (``rpm``
deep, refilled at ``rpm`` a minute) smooths the bursts as before; together, over any 60
seconds a key gets at most twice ``rpm`` (a full minute's end, then the next one's start).

Spending is read from the usage rows when a capped key is first seen and again every
``gateway.key_cache_seconds``, and counted in memory in between, pending holds included; so
within one process a cap is exact, and spending through other processes is seen within
that same bound (the tolerance: what the other processes spend in that time).
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
    window: str = ""  # the clock minute the slice below was leased in
    slice: int = 0  # requests of the shared counter this process may still admit in it


def _today() -> tuple[str, float]:
    """Today's UTC date and the seconds until it ends."""
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return now.date().isoformat(), (tomorrow - now).total_seconds()


_MINUTE = "%Y-%m-%dT%H:%M"
_LEASE = (
    "INSERT INTO rate_windows (key_id, window_start, taken) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (key_id, window_start) DO UPDATE SET taken = rate_windows.taken + ?3"
    " WHERE rate_windows.taken < ?4 RETURNING taken"
)


def _minute() -> tuple[str, float]:
    """This clock minute (UTC) and the seconds until it ends."""
    now = time.time()
    return time.strftime(_MINUTE, time.gmtime(now)), 60 - now % 60


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
            window, seconds_left = _minute()
            if state.window != window or state.slice < 1:
                state.window, state.slice = (
                    window,
                    self._lease(principal.key_id, window, limits.rpm),
                )
                if state.slice < 1:  # the other processes took this minute's requests
                    raise RateLimited(
                        f"This key is limited to {limits.rpm} requests per minute.",
                        code="key_rate_limit",
                        headers={"retry-after": str(math.ceil(seconds_left))},
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
            state.slice -= 1

    def _lease(self, key_id: str, window: str, rpm: int) -> int:
        """Take up to a slice of the key's requests for this minute from the shared counter;
        how many (0 when the minute's ``rpm`` are all taken). One statement, atomic on
        either backend: the counter moves only while it is below ``rpm``."""
        want = max(1, rpm // 8)
        row = self.db.execute(_LEASE, (key_id, window, want, rpm)).fetchone()
        if row is None:
            return 0
        return min(want, rpm - (row[0] - want))

    def purge(self, now: datetime | None = None) -> int:
        """Forget the counters of minutes past (the expiry sweep)."""
        cutoff = ((now or datetime.now(UTC)) - timedelta(minutes=2)).strftime(_MINUTE)
        return self.db.execute(
            "DELETE FROM rate_windows WHERE window_start < ?", (cutoff,)
        ).rowcount

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
