"""Billing one call: admit it against credits set aside, then record what it cost, once.

Each server process sets credits aside per account (a *reservation*, in the ledger like a
hold, so every other process sees them as taken) and admits requests against it in memory:
no database write stands between a request and its upstream. When the reservation is short,
the request waits for it to grow (one transaction for many requests; 402 when the account
cannot cover even this request). A request that ends is written once, whole: its usage
row, its charge and what it takes from the reservation, batched with its neighbours
(``ledger.GroupCommit``). A failed request costs nothing.

Reservations grow to up to twice what is in flight and what was spent since they last grew
(taking at most half of what the account has left, so other processes can serve it too),
return to the account once it has had nothing in flight for
``gateway.reserve_idle_seconds`` (0: at once), and are renewed while the process lives; a
crashed process's reservations expire after ``gateway.hold_ttl_seconds``. A request in
flight when its process is killed leaves no usage row and costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import APIError, InsufficientCredits
from ..store.accounts import Principal
from ..store.db import utcnow
from .ledger import GroupCommit, Settlement
from .limits import Limiter
from .usage import NO_QUANTITIES, Usage, usage_values

if TYPE_CHECKING:  # an annotation only: billing sits below the providers
    from ..providers.runtime import Route

log = logging.getLogger("apimodels")


@dataclass(slots=True)
class Reservation:
    """Credits this process set aside for one account's requests."""

    id: str
    account_id: str
    #: As the ledger has it, or less: what a request takes is subtracted before it commits.
    amount: int = 0
    in_flight: int = 0  # the holds of this account's requests now running here
    spent: int = 0  # what requests took from it since it last grew
    waiting: int = 0  # requests waiting for it to grow: it must not be returned meanwhile
    idle_since: float = field(default_factory=time.monotonic)
    growing: asyncio.Task[None] | None = None


@dataclass(slots=True)
class Bill:
    biller: Biller
    request_id: str
    principal: Principal
    reservation: Reservation
    hold_micros: int
    billed_as: tuple[str, str, str, str]  # Route.billed_as
    stream: bool  # a streamed call (its usage row says so)
    created_at: str = field(default_factory=utcnow)
    started: float = field(default_factory=time.perf_counter)
    settled: bool = False
    cost_micros: int = 0  # what it is charged, once settled

    def succeed(self, usage: Usage, cost_micros: int) -> asyncio.Future[bool] | None:
        """Charge the actual cost (a future of whether it was charged); None if settled."""
        if self.settled:
            return None
        return self.biller._settle(self, usage_values(usage), cost_micros, None)

    def fail(
        self, error: BaseException | None, usage: Usage | None = None
    ) -> asyncio.Future[bool] | None:
        """The call costs nothing; its usage row records why."""
        if self.settled:
            return None
        if isinstance(error, APIError):
            code = error.code
        else:
            code = "client_disconnected" if error is None else "internal_error"
        quantities = usage_values(usage) if usage is not None else NO_QUANTITIES
        return self.biller._settle(self, quantities, 0, code)

    def committed(self, recorded: bool, error: BaseException | None) -> None:
        """What follows the write of this bill's settle (its ``Settlement.on_commit``)."""
        # The key's spending grows by what was actually charged.
        charged = self.cost_micros if recorded else 0
        self.biller.limiter.committed(self.principal, self.cost_micros, recorded)
        if charged and self.biller.on_charge is not None:  # the charged-credits metric
            self.biller.on_charge(self.billed_as, charged)
        if error is not None:  # the call is then free
            log.error("request %s: settling failed: %s", self.request_id, type(error).__name__)
        elif not recorded:
            log.warning("request %s: already settled; not charged again", self.request_id)


@dataclass(slots=True)
class FreeBill:
    """The bill of a gateway that runs with ``gateway.billing = false``: nothing is held,
    charged or recorded."""

    hold_micros: int = 0

    def succeed(self, usage: Usage, cost_micros: int) -> None:
        return None

    def fail(self, error: BaseException | None, usage: Usage | None = None) -> None:
        return None


class Biller:
    """Opens bills for one gateway process: its reservations, the keys' limits."""

    def __init__(
        self,
        ledger: GroupCommit,
        hold_ttl: timedelta,
        limiter: Limiter,
        *,
        enabled: bool = True,
        idle_seconds: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.hold_ttl = hold_ttl
        self.limiter = limiter
        self.enabled = enabled
        self.idle_seconds = idle_seconds
        self.process = f"proc_{secrets.token_hex(6)}"
        #: Told of each committed charge: (``Route.billed_as``, micro-USD).
        self.on_charge: Callable[[tuple[str, str, str, str], int], None] | None = None
        self._reservations: dict[str, Reservation] = {}
        self._renewed = time.monotonic()

    async def open(
        self, request_id: str, principal: Principal, route: Route, hold_micros: int, *, stream: bool
    ) -> Bill | FreeBill:
        """Check the key's limits (429), then set ``hold_micros`` aside (402 when short)."""
        if not self.enabled:
            return FreeBill()
        if principal.limits is not None:
            await self.limiter.admit(principal, hold_micros)
        account_id = principal.account_id
        reservation = self._reservations.get(account_id)
        if reservation is None:
            reservation = self._reservations[account_id] = Reservation(
                f"{self.process}:{account_id}", account_id
            )
        try:
            if reservation.amount - reservation.in_flight < hold_micros:
                reservation.waiting += 1
                try:
                    await self._grow(reservation, hold_micros)
                finally:
                    reservation.waiting -= 1
        except BaseException:
            self.limiter.released(principal, hold_micros)
            raise
        reservation.in_flight += hold_micros
        return Bill(self, request_id, principal, reservation, hold_micros, route.billed_as, stream)

    async def _grow(self, reservation: Reservation, hold: int) -> None:
        """Wait until ``hold`` fits in the reservation, growing it (one grow at a time per
        account; 402 when the account cannot cover this request)."""
        while reservation.amount - reservation.in_flight < hold:
            growing = reservation.growing
            if growing is None:
                need = hold + reservation.in_flight - reservation.amount
                # Twice what is in flight and what was spent since the last growth: under a
                # steady load the time between growths doubles, and requests rarely wait.
                want = 2 * (reservation.in_flight + hold + reservation.spent) - reservation.amount
                reservation.spent = 0
                growing = reservation.growing = asyncio.ensure_future(
                    self._reserve(reservation, need, want)
                )
                await asyncio.shield(growing)  # its 402 is this request's
            else:
                # Too little for that request would maybe be enough for this one: try again.
                with contextlib.suppress(InsufficientCredits):
                    await asyncio.shield(growing)

    async def _reserve(self, reservation: Reservation, need: int, want: int) -> None:
        try:
            granted = await self.ledger.reserve(
                reservation.id, reservation.account_id, self.process, need, want, self._expiry()
            )
            # Not ``amount += await ...``: that reads ``amount`` before the await, and would
            # write back what calls settled meanwhile took from it (an overdraft).
            reservation.amount += granted
        finally:
            reservation.growing = None

    def _expiry(self) -> str:
        return (datetime.now(UTC) + self.hold_ttl).isoformat(timespec="microseconds")

    def _settle(
        self, bill: Bill, quantities: tuple[Any, ...], cost_micros: int, error_code: str | None
    ) -> asyncio.Future[bool]:
        bill.settled = True
        bill.cost_micros = cost_micros
        self.limiter.settling(bill.principal, bill.hold_micros, cost_micros)
        reservation = bill.reservation
        reservation.in_flight -= bill.hold_micros
        taken = min(cost_micros, max(reservation.amount, 0))
        reservation.amount -= taken
        reservation.spent += taken
        settlement = Settlement(
            request_id=bill.request_id,
            account_id=bill.principal.account_id,
            reservation_id=reservation.id,
            hold_micros=bill.hold_micros,
            cost_micros=cost_micros,
            taken_micros=taken,
            succeeded=error_code is None,
            key_id=bill.principal.key_id,
            billed_as=bill.billed_as,
            stream=int(bill.stream),
            created_at=bill.created_at,
            quantities=quantities,
            error_code=error_code,
            # To the microsecond (round() with digits costs microseconds itself).
            latency_ms=int((time.perf_counter() - bill.started) * 1e6) / 1000,
            on_commit=bill.committed,
        )
        # An answered call's charge, a stream's too, may wait a moment to be committed with
        # others' (a capped key counts its cost meanwhile: Limiter.settling); a failed
        # call's error waits for its row.
        if error_code is not None:
            future = self.ledger.settle(settlement)
        else:
            future = self.ledger.settle_later(settlement)
        if reservation.in_flight == 0:
            reservation.idle_since = time.monotonic()
            if self.idle_seconds <= 0:
                self._return(reservation)
        return future

    def _return(self, reservation: Reservation) -> bool:
        """Give a reservation's credits back to its account (queued after every settle),
        unless a request waits for it to grow."""
        if reservation.growing is not None or reservation.waiting:
            return False
        reservation.amount = 0
        self.ledger.unreserve(reservation.id).add_done_callback(_logged("unreserve"))
        return True

    async def maintain(self) -> None:
        """Return the reservations of idle accounts; renew the others while this process
        lives, and the keys' spending leases likewise (called about every second)."""
        now = time.monotonic()
        for account_id, reservation in list(self._reservations.items()):
            idle = reservation.in_flight == 0 and now - reservation.idle_since >= self.idle_seconds
            if idle and self._return(reservation):
                del self._reservations[account_id]
        await self.limiter.maintain()
        if now - self._renewed >= min(10.0, self.hold_ttl.total_seconds() / 4):
            self._renewed = now
            kept = await self.ledger.renew(self.process, self._expiry())
            for reservation in self._reservations.values():
                if reservation.id not in kept and reservation.growing is None:
                    reservation.amount = 0  # expired elsewhere: what it held is free again

    async def aclose(self) -> None:
        """Commit what is queued and return every reservation and spending lease (a clean
        shutdown)."""
        futures = [self.ledger.unreserve(r.id) for r in self._reservations.values()]
        futures.append(self.limiter.release())
        self._reservations.clear()
        self.ledger.commit()
        await asyncio.gather(*futures, return_exceptions=True)


def _logged(what: str) -> Callable[[asyncio.Future[Any]], None]:
    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("%s failed: %s", what, type(future.exception()).__name__)

    return done
