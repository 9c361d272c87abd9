"""Several upstream keys for one provider: calls spread over them by weight, and a key the
upstream refuses (429, or its 401/403 of the gateway's key) rests a while.

A provider with one key has no pool: its calls use ``provider.upstream`` as before, at no
cost. With several, each call picks one key among those not resting, at random by weight
(``random.choices``: a few hundred nanoseconds for a handful of keys). When every key rests,
the one that wakes first is used anyway: the upstream's own answer then says whether it is
still refused.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from ..errors import APIError, RateLimited
from .types import Upstream

log = logging.getLogger("apimodels")


@dataclass(slots=True)
class PooledKey:
    """One key of a pool: the upstream it signs as, and how it has fared."""

    upstream: Upstream
    env: str  # the environment variable it came from (its name only is ever shown)
    weight: int = 1
    resting_until: float = 0.0
    calls: int = 0
    refusals: int = 0


class KeyPool:
    """A provider's keys (two or more)."""

    def __init__(self, keys: list[PooledKey], cooldown_seconds: float) -> None:
        self.keys = keys
        self.cooldown_seconds = cooldown_seconds
        self._weights = [k.weight for k in keys]

    def pick(self) -> PooledKey:
        now = time.monotonic()
        awake = [k for k in self.keys if k.resting_until <= now]
        if len(awake) == len(self.keys):
            key = random.choices(self.keys, self._weights)[0]
        elif awake:
            key = random.choices(awake, [k.weight for k in awake])[0]
        else:
            key = min(self.keys, key=lambda k: k.resting_until)
        key.calls += 1
        return key

    def refused(self, key: PooledKey, error: APIError) -> None:
        """Rest ``key`` if ``error`` is the upstream refusing it (its rate limit, or its
        rejection of the key itself): for the upstream's Retry-After, else the cooldown."""
        if not (isinstance(error, RateLimited) or error.code == "upstream_auth_error"):
            return
        seconds = self.cooldown_seconds
        retry_after = error.headers.get("retry-after", "")
        if retry_after.isdigit():
            seconds = max(seconds, float(retry_after))
        key.refusals += 1
        key.resting_until = time.monotonic() + seconds
        log.warning(
            "provider %s: the key in %s rests %.0f s (%s)",
            key.upstream.name,
            key.env,
            seconds,
            error.code,
        )

    def secrets(self) -> list[str]:
        return [k.upstream.api_key for k in self.keys if k.upstream.api_key]

    def health(self) -> list[dict[str, Any]]:
        """Each key by its variable's name: weight, calls, refusals, seconds left resting."""
        now = time.monotonic()
        return [
            {
                "env": k.env,
                "weight": k.weight,
                "calls": k.calls,
                "refusals": k.refusals,
                "resting_seconds": round(max(0.0, k.resting_until - now), 1),
            }
            for k in self.keys
        ]
