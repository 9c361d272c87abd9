"""``[topups]`` in registry.toml: how users buy credits (amount bounds, Stripe, exchange rates).

Secrets never live in the file: it names the environment variables that hold Stripe's secret
key and the webhook endpoint's signing secret.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f'write amounts and rates as decimal strings, e.g. "7.1" (got {value!r})')
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {value!r}") from None
    if not number.is_finite() or number <= 0:
        raise ValueError(f"must be a finite number > 0 (got {value!r})")
    return number


Positive = Annotated[Decimal, BeforeValidator(_decimal)]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("give the time with its zone, e.g. 2026-11-25T08:00:00Z")
    return value


class RateConfig(BaseModel):
    """``[topups.rate]``: where the USD -> CNY rate for Alipay orders comes from.

    ``source = "fixed"`` uses ``cny_per_usd`` as published at ``as_of``; any other value is
    ``"package.module:factory"``, called once at startup with this table, returning an object
    with a ``current() -> Rate`` method (see ``apimodels.topups.rates``). A rate older than
    ``max_age_hours`` refuses new Alipay orders.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    source: str = "fixed"
    cny_per_usd: Positive | None = None
    as_of: Annotated[datetime, AfterValidator(_aware)] | None = None
    max_age_hours: Annotated[float, Field(gt=0)] = 24.0

    @model_validator(mode="after")
    def _fixed_needs_a_rate(self) -> RateConfig:
        if self.source == "fixed" and (not self.cny_per_usd or self.as_of is None):
            raise ValueError("a fixed rate needs cny_per_usd (> 0) and as_of")
        return self


class TopupsConfig(BaseModel):
    """``[topups]``: buying USD credits through Stripe Checkout (card) and Alipay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    min_usd: Positive = Decimal(5)
    max_usd: Positive = Decimal(10_000)
    methods: tuple[str, ...] = ("card", "alipay")
    success_url: str = "http://127.0.0.1:8000/topups/success?session_id={CHECKOUT_SESSION_ID}"
    cancel_url: str = "http://127.0.0.1:8000/topups/cancel"
    stripe_api_base: str = "https://api.stripe.com"
    secret_key_env: str = "STRIPE_SECRET_KEY"
    webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"
    webhook_tolerance_seconds: Annotated[int, Field(ge=1, le=3600)] = 300
    product_name: str = "apimodels credits"
    rate: RateConfig | None = None

    @model_validator(mode="after")
    def _coherent(self) -> TopupsConfig:
        if not Decimal(0) < self.min_usd <= self.max_usd:
            raise ValueError("need 0 < min_usd <= max_usd")
        unknown = set(self.methods) - {"card", "alipay"}
        if unknown:
            raise ValueError(f"unknown payment methods {sorted(unknown)}: use card, alipay")
        if self.enabled and "alipay" in self.methods and self.rate is None:
            raise ValueError("alipay needs an exchange rate: add a [topups.rate] table")
        return self
