"""Billing one call: hold the estimate, then capture the actual cost or release, once.

A ``Bill`` is opened after validation (so bad input costs nothing and holds nothing) and is
settled exactly once: ``succeed`` captures the price of the actual usage, ``fail`` releases
the hold; either completes the request's usage row. Ledger writes go through the group
commit (``ledger.GroupCommit``). A bill never settled in this process (a crash) is released
by the expiry sweep after ``gateway.hold_ttl_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .accounts import Principal
from .errors import APIError
from .ledger import GroupCommit
from .limits import Limiter
from .provider import Usage
from .runtime import Route

log = logging.getLogger("apimodels")


def _settled(request_id: str, future: asyncio.Future[bool]) -> None:
    """Log a settle that could not be written (the hold then expires: the call is free)."""
    if future.cancelled():
        return
    if future.exception() is not None:
        log.error("request %s: settling failed: %s", request_id, type(future.exception()).__name__)
    elif not future.result():
        log.warning("request %s: hold was already settled; not charged again", request_id)


def usage_fields(usage: Usage) -> dict[str, Any]:
    """A usage as the columns of its request's usage row."""
    return {
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "images": usage.images,
        "characters": usage.characters,
        "seconds": str(usage.seconds) if usage.seconds else None,
        "outputs": usage.outputs or None,
        "run_seconds": str(usage.run_seconds) if usage.run_seconds else None,
    }


@dataclass(slots=True)
class Bill:
    ledger: GroupCommit
    limiter: Limiter
    request_id: str
    principal: Principal
    route: Route
    hold_micros: int
    running: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)
    settled: bool = False

    def _fields(self, usage: Usage | None, error_code: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "error_code": error_code,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
        }
        if usage is not None:
            fields.update(usage_fields(usage))
        return fields

    def succeed(self, usage: Usage, cost_micros: int) -> asyncio.Future[bool] | None:
        """Capture the actual cost (a future of whether it was charged); None if settled."""
        if self.settled:
            return None
        self.settled = True
        self.running.discard(self.request_id)
        future = self.ledger.capture(self.request_id, cost_micros, self._fields(usage, None))
        future.add_done_callback(lambda f: _settled(self.request_id, f))
        future.add_done_callback(self._count_spend(cost_micros))
        return future

    def _count_spend(self, cost_micros: int) -> Callable[[asyncio.Future[bool]], None]:
        """A key's spending grows by what was actually charged, once the charge is saved."""

        def count(future: asyncio.Future[bool]) -> None:
            charged = not future.cancelled() and future.exception() is None and future.result()
            self.limiter.settled(self.principal, self.hold_micros, cost_micros if charged else 0)

        return count

    def fail(
        self, error: BaseException | None, usage: Usage | None = None
    ) -> asyncio.Future[bool] | None:
        """Release the hold: the call costs nothing."""
        if self.settled:
            return None
        self.settled = True
        self.running.discard(self.request_id)
        self.limiter.settled(self.principal, self.hold_micros, 0)
        if isinstance(error, APIError):
            code = error.code
        else:
            code = "client_disconnected" if error is None else "internal_error"
        future = self.ledger.release(self.request_id, self._fields(usage, code))
        future.add_done_callback(lambda f: _settled(self.request_id, f))
        return future


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
    """Opens bills for one gateway: one ledger, one hold lifetime, the keys' limits."""

    def __init__(
        self, ledger: GroupCommit, hold_ttl: timedelta, limiter: Limiter, *, enabled: bool = True
    ) -> None:
        self.ledger = ledger
        self.hold_ttl = hold_ttl
        self.limiter = limiter
        self.enabled = enabled
        #: Requests holding credits in this process: the expiry sweep leaves them alone.
        self.running: set[str] = set()

    async def open(
        self, request_id: str, principal: Principal, route: Route, hold_micros: int, *, stream: bool
    ) -> Bill | FreeBill:
        """Check the key's limits (429), then reserve ``hold_micros`` (402 when short)."""
        if not self.enabled:
            return FreeBill()
        self.limiter.admit(principal, hold_micros)
        model = route.model
        request = {
            "key_id": principal.key_id,
            "model": model.id,
            "provider": model.provider,
            "modality": model.modality.value,
            "stream": int(stream),
            "unit_prices": route.prices_json,
        }
        try:
            await self.ledger.hold(
                request_id, principal.account_id, hold_micros, self.hold_ttl, request
            )
        except BaseException:
            self.limiter.settled(principal, hold_micros, 0)
            raise
        self.running.add(request_id)
        return Bill(
            self.ledger, self.limiter, request_id, principal, route, hold_micros, self.running
        )
