"""Billing one call: hold the estimate, then capture the actual cost or release, once.

``Bill`` is opened after validation (so bad input costs nothing and holds nothing) and is
settled exactly once: ``succeed`` captures the price of the actual usage (with its usage
row), ``fail`` releases the hold (with a usage row saying why). A bill never settled in this
process (a crash) is released by the expiry sweep after ``gateway.hold_ttl_seconds``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .accounts import Principal
from .errors import APIError
from .ledger import Ledger
from .limits import Limiter
from .provider import Usage
from .runtime import Route

log = logging.getLogger("apimodels")


@dataclass(slots=True)
class Bill:
    ledger: Ledger
    request_id: str
    principal: Principal
    route: Route
    hold_micros: int
    stream: bool
    limiter: Limiter
    started: float = field(default_factory=time.perf_counter)
    settled: bool = False

    def _row(self, status: str, usage: Usage | None, error_code: str | None) -> dict[str, Any]:
        model = self.route.model
        row: dict[str, Any] = {
            "request_id": self.request_id,
            "account_id": self.principal.account_id,
            "key_id": self.principal.key_id,
            "model": model.id,
            "provider": model.provider,
            "modality": model.modality.value,
            "status": status,
            "stream": int(self.stream),
            "unit_prices": self.route.prices_json,
            "error_code": error_code,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
        }
        if usage is not None:
            row.update(
                input_tokens=usage.input_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                output_tokens=usage.output_tokens,
                images=usage.images,
                characters=usage.characters,
                seconds=str(usage.seconds) if usage.seconds else None,
            )
        return row

    def succeed(self, usage: Usage, cost_micros: int) -> bool:
        """Capture the actual cost. False if the hold was already settled elsewhere."""
        if self.settled:
            return False
        self.settled = True
        done = self.ledger.capture(
            self.request_id, cost_micros, self._row("succeeded", usage, None)
        )
        self.limiter.settled(self.principal, self.hold_micros, cost_micros if done else 0)
        if not done:
            log.warning("request %s: hold already settled, not charged", self.request_id)
        return done

    def fail(self, error: BaseException | None, usage: Usage | None = None) -> bool:
        """Release the hold: the call costs nothing."""
        if self.settled:
            return False
        self.settled = True
        self.limiter.settled(self.principal, self.hold_micros, 0)
        code = (
            error.code
            if isinstance(error, APIError)
            else "client_disconnected"
            if error is None
            else "internal_error"
        )
        return self.ledger.release(self.request_id, self._row("failed", usage, code))


class Biller:
    """Opens bills for one gateway: one ledger, one hold lifetime, the keys' limits."""

    def __init__(self, ledger: Ledger, hold_ttl: timedelta, limiter: Limiter) -> None:
        self.ledger = ledger
        self.hold_ttl = hold_ttl
        self.limiter = limiter

    def open(
        self, request_id: str, principal: Principal, route: Route, hold_micros: int, *, stream: bool
    ) -> Bill:
        """Check the key's limits (429), then reserve ``hold_micros`` (402 when short)."""
        self.limiter.admit(principal, hold_micros)
        try:
            self.ledger.hold(
                request_id, principal.account_id, principal.key_id, hold_micros, self.hold_ttl
            )
        except BaseException:
            self.limiter.settled(principal, hold_micros, 0)
            raise
        return Bill(self.ledger, request_id, principal, route, hold_micros, stream, self.limiter)
