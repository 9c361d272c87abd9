"""Exchange rates for Alipay orders, and the USD <-> CNY conversions.

An Alipay order charges the CNY equivalent of its USD amount at the rate current when the
order is made; the order keeps that rate, its source and its time, so a refund converts back
at the same rate (never at today's). Conversions round once, half up, to the smallest unit
(the fen for CNY, the micro-dollar for USD).

Sources: ``FixedRate`` (``source = "fixed"``: a rate typed into registry.toml with the time
it was published) or any ``"package.module:factory"`` that returns an object with
``current() -> Rate``. A rate older than ``max_age_hours`` is refused (``StaleRate``): the
order is not made rather than made at a guessed price.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

from ..billing.money import MICROS_PER_USD
from ..errors import ConfigError, ServiceUnavailable
from .config import RateConfig

#: Minor units per major unit of the currencies Stripe charges here (cent, fen).
MINOR_UNITS = {"usd": 100, "cny": 100}


@dataclass(frozen=True, slots=True)
class Rate:
    """``cny_per_usd`` CNY buy one USD, as published by ``source`` at ``as_of``."""

    cny_per_usd: Decimal
    source: str
    as_of: datetime


class RateSource(Protocol):
    def current(self) -> Rate: ...


class StaleRate(ServiceUnavailable):
    default_code = "exchange_rate_unavailable"


@dataclass(frozen=True, slots=True)
class FixedRate:
    rate: Rate

    def current(self) -> Rate:
        return self.rate


def load_source(config: RateConfig) -> RateSource:
    """The configured source, built once at startup (ConfigError if it cannot be)."""
    if config.source == "fixed":
        assert config.cny_per_usd is not None and config.as_of is not None
        return FixedRate(Rate(config.cny_per_usd, "fixed", config.as_of))
    module, _, name = config.source.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
        return factory(config)
    except Exception as exc:
        raise ConfigError(
            f"topups.rate.source {config.source!r} could not be loaded: {exc}"
        ) from None


def fresh_rate(source: RateSource, max_age: timedelta, now: datetime | None = None) -> Rate:
    """The current rate, or ``StaleRate`` when it is missing, from the future or too old."""
    try:
        rate = source.current()
    except Exception:
        raise StaleRate(
            "No exchange rate is available for Alipay right now; try again later or pay by card."
        ) from None
    now = now or datetime.now(UTC)
    age = now - rate.as_of
    if not rate.cny_per_usd > 0 or age > max_age or age < -timedelta(minutes=5):
        raise StaleRate(
            "The exchange rate for Alipay is out of date, so no order can be priced in CNY "
            "right now; try again later or pay by card."
        )
    return rate


def usd_to_cny_fen(usd: Decimal, cny_per_usd: Decimal) -> int:
    """USD -> what Alipay charges, in fen: ``usd * rate``, rounded half up to the fen."""
    fen = usd * cny_per_usd * MINOR_UNITS["cny"]
    return int(fen.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def minor_to_usd_micros(part_minor: int, order_minor: int, order_usd_micros: int) -> int:
    """The USD credits behind ``part_minor`` of an order that charged ``order_minor`` for
    ``order_usd_micros``: proportional, at the order's own rate, rounded half up. A whole
    order maps back to its exact USD amount."""
    if part_minor >= order_minor:
        return order_usd_micros
    micros = Decimal(order_usd_micros) * part_minor / order_minor
    return int(micros.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd_micros_to_minor(usd_micros: int, order_minor: int, order_usd_micros: int) -> int:
    """The other way: the part of an order's charge (minor units) that ``usd_micros`` of its
    credits stand for (for refunds given in USD), rounded half up."""
    if usd_micros >= order_usd_micros:
        return order_minor
    minor = Decimal(order_minor) * usd_micros / order_usd_micros
    return int(minor.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd_cents(usd: Decimal) -> int:
    """A USD amount in whole cents (the caller checked it has no fraction of a cent)."""
    return int(usd * MINOR_UNITS["usd"])


def usd_micros(usd: Decimal) -> int:
    return int(usd * MICROS_PER_USD)
