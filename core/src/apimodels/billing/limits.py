"""Per-key limits: requests per minute and spending caps (per UTC day and in total).

Both hold across every process and host on the database, and both are checked in memory, in
microseconds, in the common case: each process *leases* a slice of a key's allowance from a
shared row with one write, and admits requests against it before it asks again. The writes
join the ledger's batch (``GroupCommit.write``), so they cost a request no round trip of its
own and never block the event loop longer than a batch does.

Requests per minute: each clock minute of a key has a shared counter (``rate_windows``),
from which a process leases ``rpm / 8`` requests (at least 1) at a time. The counter never
grants more than ``rpm`` a minute, so over any clock minute the key is served at most
``rpm`` requests, whatever the number of processes; a slice unused at the minute's end is
lost, so with P processes a busy key may be refused up to (P - 1) x slice requests early in
a minute. Within a process a token bucket (``rpm`` deep, refilled at ``rpm`` a minute)
smooths the bursts; together, over any 60 seconds a key gets at most twice ``rpm`` (a full
minute's end, then the next one's start).

Spending caps: a process leases an amount of the key's room, what it may hold and charge
from then on (``spend_leases``, one row per key and process). The lease is granted in one
transaction that locks the key's account, reads what the key has spent (the ledger's
running totals per day, ``key_spend``: a pending task's hold counts until the task ends)
and the live leases of the other processes, and grants at most the room left under each
cap: so what every process charges never sums past a cap. A charge, once committed, is
taken off its process's lease (it is in its key's running total then: counted twice
otherwise). A lease is renewed when the requests outgrow it, when the UTC day or the key's
caps change; the upkeep (:meth:`Limiter.maintain`) keeps a live process's leases from
expiring (a lease must outlive the calls it covers) and gives back those of keys idle for a
few seconds; a lease expires ``LEASE_SECONDS`` after its last renewal (a crashed process's
lease frees its room then) and is returned when the server stops. A lease takes what the
next requests hold plus an eighth of the room left, so with P processes serving one key a
cap may refuse a request while up to (P - 1) eighths of the room sit in the other
processes' leases, never let one through past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import RateLimited
from ..store.accounts import KeyLimits, Principal
from ..store.db import is_postgres, utcnow

if TYPE_CHECKING:
    from .ledger import GroupCommit

log = logging.getLogger("apimodels")

#: How long a spending lease lives in the database; a process uses it for half that.
LEASE_SECONDS = 60.0
#: After a refusal, the key's requests that would need a new lease are refused in memory
#: for this long (a client hammering a spent cap costs no write per request).
REFUSAL_SECONDS = 1.0


@dataclass(slots=True)
class _KeyState:
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    window: str = ""  # the clock minute the slice below was leased in
    slice: int = 0  # requests of the shared counter this process may still admit in it
    # Spending: what this process may hold and charge for the key since its lease was
    # granted (``lease``); what it holds for requests in flight (``held``), the costs of
    # requests settled but not yet committed (``pending``), and the costs committed since
    # the grant (``charged``); ``dropped``: costs whose settle was not recorded.
    lease: int = 0
    held: int = 0
    pending: int = 0
    charged: int = 0
    dropped: int = 0
    caps: KeyLimits | None = None  # the caps it was granted under
    until: float = -math.inf  # used until then (monotonic)
    day_ends: float = -math.inf  # the end of the UTC day it was granted in (epoch)
    refused: tuple[float, int, str] | None = None  # (until, need refused, code)
    leasing: asyncio.Future[None] | None = None  # the renewal on its way
    used_at: float = 0.0  # when a request last used the lease (monotonic)
    full: str = ""  # the minute whose requests the processes took all of
    slicing: asyncio.Future[None] | None = None  # the lease of requests on its way


def _today() -> tuple[str, float]:
    """Today's UTC date and the seconds until it ends."""
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return now.date().isoformat(), (tomorrow - now).total_seconds()


_MINUTE = "%Y-%m-%dT%H:%M"
_LEASE_REQUESTS = (
    "INSERT INTO rate_windows (key_id, window_start, taken) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (key_id, window_start) DO UPDATE SET taken = rate_windows.taken + ?3"
    " WHERE rate_windows.taken < ?4 RETURNING taken"
)
# What a key spent in all and today (the ledger's running totals per day: a pending task's
# hold counts until the task ends).
_SPENT = (
    "SELECT COALESCE(SUM(spent_micros), 0),"
    " COALESCE(SUM(CASE WHEN day = ? THEN spent_micros END), 0)"
    " FROM key_spend WHERE key_id = ?"
)
_OTHERS = (
    "SELECT COALESCE(SUM(amount_micros), 0) FROM spend_leases"
    " WHERE key_id = ? AND holder <> ? AND expires_at > ?"
)
_GRANT = (
    "INSERT INTO spend_leases (key_id, holder, amount_micros, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key_id, holder) DO UPDATE SET amount_micros = excluded.amount_micros,"
    " expires_at = excluded.expires_at"
)


def _minute() -> tuple[str, float]:
    """This clock minute (UTC) and the seconds until it ends."""
    now = time.time()
    return time.strftime(_MINUTE, time.gmtime(now)), 60 - now % 60


def lease_requests_op(c: Any, key_id: str, window: str, rpm: int) -> int:
    """Take up to a slice of the key's requests for this minute from the shared counter;
    how many (0 when the minute's ``rpm`` are all taken). One statement: the counter moves
    only while it is below ``rpm``."""
    want = max(1, rpm // 8)
    row = c.execute(_LEASE_REQUESTS, (key_id, window, want, rpm)).fetchone()
    if row is None:
        return 0
    return min(want, rpm - (row[0] - want))


def lease_spending_op(
    c: Any, account_id: str, key_id: str, holder: str, caps: KeyLimits, day: str, need: int
) -> tuple[int, str | None]:
    """Lease ``holder`` between ``need`` and ``need`` + an eighth of the room left under
    the key's caps: (the lease, None), or (0, the code of the cap that has no room)."""
    if is_postgres(c):
        # Leases of one key, one at a time (SQLite's write lock does it), under the lock
        # of the key's account: the row the ledger's writes of the account lock anyway.
        # (Two processes' batches locking two accounts in opposite orders: PostgreSQL
        # breaks the cycle, and each write of the batch is retried alone.)
        c.execute("SELECT 1 FROM accounts WHERE id = ? FOR NO KEY UPDATE", (account_id,))
    now = utcnow()
    total, today = c.execute(_SPENT, (day, key_id)).fetchone()
    others = c.execute(_OTHERS, (key_id, holder, now)).fetchone()[0]
    rooms = []
    if caps.daily_cap_micros is not None:
        rooms.append((caps.daily_cap_micros - today - others, "key_daily_cap"))
    if caps.total_cap_micros is not None:
        rooms.append((caps.total_cap_micros - total - others, "key_total_cap"))
    room, code = min(rooms)
    if room < need:
        return 0, code
    lease = min(room, need + room // 8)
    expires = datetime.now(UTC) + timedelta(seconds=LEASE_SECONDS)
    c.execute(_GRANT, (key_id, holder, lease, expires.isoformat(timespec="microseconds")))
    return lease, None


def shrink_lease_op(c: Any, key_id: str, holder: str, charged: int) -> None:
    """A charge of the holder's is committed, so in the key's running total: its lease no
    longer counts it (the other processes would count it twice)."""
    c.execute(
        "UPDATE spend_leases SET amount_micros = CASE WHEN amount_micros > ?1"
        " THEN amount_micros - ?1 ELSE 0 END WHERE key_id = ?2 AND holder = ?3",
        (charged, key_id, holder),
    )


def renew_leases_op(c: Any, holder: str, expires_at: str, idle: list[str]) -> None:
    """Keep a live process's leases (a lease must not expire under a call it covers);
    return those of its idle keys (their room goes back to the other processes)."""
    for key_id in idle:
        c.execute("DELETE FROM spend_leases WHERE key_id = ? AND holder = ?", (key_id, holder))
    c.execute("UPDATE spend_leases SET expires_at = ? WHERE holder = ?", (expires_at, holder))


def release_spending_op(c: Any, holder: str) -> int:
    """Return every spending lease of a stopping process."""
    return c.execute("DELETE FROM spend_leases WHERE holder = ?", (holder,)).rowcount


class Limiter:
    def __init__(self, ledger: GroupCommit) -> None:
        self.ledger = ledger
        self.db = ledger.ledger.db
        self.holder = f"proc_{secrets.token_hex(6)}"
        self._keys: dict[str, _KeyState] = {}
        self._renewed = time.monotonic()

    async def admit(self, principal: Principal, hold_micros: int) -> None:
        """Raise 429 when the request would break one of the key's limits; else count it
        (a request admitted is then :meth:`settled`)."""
        limits = principal.limits
        if limits is None:
            return
        state = self._keys.get(principal.key_id)
        if state is None:
            state = self._keys[principal.key_id] = _KeyState(tokens=float(limits.rpm or 0))
        window = ""
        if limits.rpm:
            window = await self._admit_request(principal.key_id, limits.rpm, state)
        if limits.caps_spending:
            try:
                while not _fits(state, limits, hold_micros):
                    await self._lease_spending(principal, state, hold_micros)
            except BaseException:
                if limits.rpm:  # refused, so not counted against the rate either
                    state.tokens += 1
                    if state.window == window:  # (a later minute's slice was not its)
                        state.slice += 1
                raise
            state.held += hold_micros
            state.used_at = time.monotonic()

    async def _admit_request(self, key_id: str, rpm: int, state: _KeyState) -> str:
        """Take a token of the key's bucket and a request of its slice for this minute
        (which it returns)."""
        now = time.monotonic()
        state.tokens = min(rpm, state.tokens + (now - state.refilled) * rpm / 60)
        state.refilled = now
        if state.tokens < 1:
            raise _rate_limited(rpm, math.ceil((1 - state.tokens) * 60 / rpm))
        state.tokens -= 1  # before any wait: the requests that wait with it see it taken
        try:
            while True:
                window, seconds_left = _minute()
                if state.window != window:
                    state.window, state.slice = window, 0
                if state.slice >= 1:
                    state.slice -= 1
                    return window
                if state.full == window:  # the processes took this minute's requests
                    raise _rate_limited(rpm, math.ceil(seconds_left))
                if state.slicing is None:  # one lease at a time per key; the others wait
                    state.slicing = asyncio.ensure_future(
                        self._lease_requests(key_id, window, rpm, state)
                    )
                await asyncio.shield(state.slicing)
        except BaseException:
            state.tokens += 1
            raise

    async def _lease_requests(self, key_id: str, window: str, rpm: int, state: _KeyState) -> None:
        try:
            granted = await self.ledger.write(lease_requests_op, key_id, window, rpm)
        finally:
            state.slicing = None
        if state.window == window:
            state.slice += granted
            if not granted:
                state.full = window

    async def _lease_spending(self, principal: Principal, state: _KeyState, hold: int) -> None:
        """Renew the key's lease to cover what this process holds and ``hold`` (one renewal
        at a time per key; a request that waited for another's tries again with its own
        hold), or raise the 429 of the cap without room."""
        need = state.held + hold
        if state.refused is not None:
            until, refused, code = state.refused
            if time.monotonic() < until and need >= refused:
                raise _capped(code)
        if state.leasing is not None:
            with contextlib.suppress(RateLimited):  # its refusal is for its own size
                await asyncio.shield(state.leasing)
            return
        state.leasing = asyncio.ensure_future(self._renew(principal, state, need))
        await asyncio.shield(state.leasing)

    async def _renew(self, principal: Principal, state: _KeyState, need: int) -> None:
        limits = principal.limits
        assert limits is not None
        day, seconds_left = _today()
        sent = time.monotonic()
        # The settles queued before this write are committed before it reads the usage
        # rows: from the grant on, their costs count there, not here.
        base, dropped = state.charged + state.pending, state.dropped
        try:
            lease, refusal = await self.ledger.write(
                lease_spending_op,
                principal.account_id,
                principal.key_id,
                self.holder,
                limits,
                day,
                need,
            )
        finally:
            state.leasing = None
        if refusal is not None:
            state.refused = (time.monotonic() + REFUSAL_SECONDS, need, refusal)
            raise _capped(refusal)
        # Answered in order, after those settles: each is in ``charged`` or ``dropped`` now.
        state.charged -= base - (state.dropped - dropped)
        state.lease, state.caps, state.refused = lease, limits, None
        state.until = sent + LEASE_SECONDS / 2
        state.day_ends = time.time() + seconds_left

    def settling(self, principal: Principal, hold_micros: int, cost_micros: int) -> None:
        """A request admitted with ``hold_micros`` ended costing ``cost_micros``; its
        settle is queued (then :meth:`committed`)."""
        state = self._spending(principal)
        if state is not None:
            state.held = max(0, state.held - hold_micros)
            state.pending += cost_micros

    def committed(self, principal: Principal, cost_micros: int, recorded: bool) -> None:
        """The settle of a request that cost ``cost_micros`` is committed (``recorded``),
        or failed."""
        state = self._spending(principal)
        if state is None:
            return
        state.pending = max(0, state.pending - cost_micros)
        if not recorded:
            state.dropped += cost_micros
            return
        state.charged += cost_micros
        if cost_micros:
            self.ledger.write(
                shrink_lease_op, principal.key_id, self.holder, cost_micros, later=True
            ).add_done_callback(_logged)

    def released(self, principal: Principal, hold_micros: int) -> None:
        """A request admitted with ``hold_micros`` was not served (nothing to settle)."""
        state = self._spending(principal)
        if state is not None:
            state.held = max(0, state.held - hold_micros)

    def spent(self, principal: Principal, hold_micros: int) -> None:
        """A task admitted with ``hold_micros`` was created: its hold counts as spent (in
        its usage row) until the task ends."""
        self.settling(principal, hold_micros, hold_micros)
        self.committed(principal, hold_micros, True)

    def _spending(self, principal: Principal) -> _KeyState | None:
        """The key's state when it has a spending cap (None otherwise)."""
        limits = principal.limits
        if limits is None or not limits.caps_spending:
            return None
        return self._keys.get(principal.key_id)

    async def maintain(self, idle_seconds: float = 5.0) -> None:
        """Keep this process's spending leases from expiring, and return those of keys idle
        for ``idle_seconds`` (called by the biller's upkeep, every second or so)."""
        now = time.monotonic()
        if now - self._renewed < LEASE_SECONDS / 4:
            return
        self._renewed = now
        idle = []
        for key_id, state in self._keys.items():
            if not state.lease:
                continue
            if (
                not state.held
                and not state.pending
                and state.leasing is None
                and now - state.used_at >= idle_seconds
            ):
                idle.append(key_id)
                state.lease, state.until = 0, -math.inf  # the next request renews it
            else:
                state.until = max(state.until, now + LEASE_SECONDS / 2)
        if not idle and not any(state.lease for state in self._keys.values()):
            return
        expires = datetime.now(UTC) + timedelta(seconds=LEASE_SECONDS)
        await self.ledger.write(
            renew_leases_op, self.holder, expires.isoformat(timespec="microseconds"), idle
        )

    def purge(self, now: datetime | None = None) -> None:
        """Forget the counters of minutes past and the leases expired (the expiry sweep)."""
        moment = now or datetime.now(UTC)
        cutoff = (moment - timedelta(minutes=2)).strftime(_MINUTE)
        self.db.execute("DELETE FROM rate_windows WHERE window_start < ?", (cutoff,))
        self.db.execute(
            "DELETE FROM spend_leases WHERE expires_at < ?",
            (moment.isoformat(timespec="microseconds"),),
        )

    def release(self) -> asyncio.Future[int]:
        """Return this process's spending leases (a clean shutdown)."""
        self._keys.clear()
        return self.ledger.write(release_spending_op, self.holder)


def _logged(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a spending lease's update failed: %s", type(future.exception()).__name__)


def _fits(state: _KeyState, limits: KeyLimits, hold: int) -> bool:
    """The key's lease covers ``hold`` too, and is still good."""
    return (
        state.held + state.pending + state.charged + hold <= state.lease
        and (state.caps is limits or state.caps == limits)
        and time.monotonic() < state.until
        and time.time() < state.day_ends
    )


def _rate_limited(rpm: int, retry_after: int) -> RateLimited:
    return RateLimited(
        f"This key is limited to {rpm} requests per minute.",
        code="key_rate_limit",
        headers={"retry-after": str(retry_after)},
    )


def _capped(code: str) -> RateLimited:
    if code == "key_daily_cap":
        return RateLimited(
            "This key has reached its daily spending cap.",
            code=code,
            headers={"retry-after": str(math.ceil(_today()[1]))},
        )
    # Retry-After: when in-flight requests of this key settle and free their holds.
    return RateLimited(
        "This key has reached its total spending cap; raise it with `apimodels keys limit`.",
        code=code,
        headers={"retry-after": "60"},
    )
