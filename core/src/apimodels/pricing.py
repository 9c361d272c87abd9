"""The default price of a call: usage quantities times the catalog's unit prices.

Registered as the core's own ``price_usage`` implementation (``trylast``), so a provider with
an unusual tariff can implement the hook and be asked first.
"""

from __future__ import annotations

from decimal import Decimal

from .catalog import Pricing
from .errors import InvalidRequest
from .provider import Usage

_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1_000)
_SIXTY = Decimal(60)


def image_unit_price(pricing: Pricing, variant: str | None, model_id: str) -> Decimal:
    table = pricing.per_image
    if table is None:
        raise InvalidRequest(f"model {model_id} has no per-image price")
    if isinstance(table, Decimal):
        return table
    if variant in table:
        return table[variant]
    if "default" in table:
        return table["default"]
    options = ", ".join(sorted(table))
    raise InvalidRequest(
        f"model {model_id} has no price for {variant!r}; priced variants: {options}",
        param="size",
    )


def price_usage(pricing: Pricing, usage: Usage, model_id: str = "") -> Decimal:
    """Exact USD price of ``usage`` (not yet rounded), markup included."""
    total = Decimal(0)
    uncached = usage.input_tokens - usage.cached_input_tokens
    if usage.input_tokens and pricing.input_per_1m is not None:
        total += uncached * pricing.input_per_1m / _MILLION
        cached_price = pricing.cached_input_per_1m
        if cached_price is None:
            cached_price = pricing.input_per_1m
        total += usage.cached_input_tokens * cached_price / _MILLION
    if usage.output_tokens and pricing.output_per_1m is not None:
        total += usage.output_tokens * pricing.output_per_1m / _MILLION
    if usage.images and pricing.per_image is not None:
        total += usage.images * image_unit_price(pricing, usage.variant, model_id)
    if usage.characters and pricing.per_1k_chars is not None:
        total += usage.characters * pricing.per_1k_chars / _THOUSAND
    if usage.seconds:
        if pricing.per_second is not None:
            total += usage.seconds * pricing.per_second
        elif pricing.per_minute is not None:
            total += usage.seconds * pricing.per_minute / _SIXTY
    if usage.outputs and pricing.per_output is not None:
        total += usage.outputs * pricing.per_output
    if usage.run_seconds and pricing.per_run_second is not None:
        total += usage.run_seconds * pricing.per_run_second
    if pricing.markup:
        total += total * pricing.markup
    return total
