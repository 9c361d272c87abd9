"""The default price of a call: usage quantities times the catalog's unit prices.

Registered as the core's own ``price_usage`` implementation (``trylast``), so a provider with
an unusual tariff can implement the hook and be asked first.
"""

from __future__ import annotations

from decimal import Decimal

from ..catalog import ModelConfig, Pricing
from ..errors import InvalidRequest
from .usage import QUANTITIES, Usage

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


def _or(price: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if price is None else price


def price_usage(pricing: Pricing, usage: Usage, model_id: str = "") -> Decimal:
    """Exact USD price of ``usage`` (not yet rounded), markup included."""
    total = Decimal(0)
    if usage.input_tokens and pricing.input_per_1m is not None:
        # Cache reads and writes are parts of the input, each at its price (the input
        # price when the catalog has none for it).
        cached, written = usage.cached_input_tokens, usage.cache_write_tokens
        total += (usage.input_tokens - cached - written) * pricing.input_per_1m / _MILLION
        total += cached * _or(pricing.cached_input_per_1m, pricing.input_per_1m) / _MILLION
        total += written * _or(pricing.cache_write_per_1m, pricing.input_per_1m) / _MILLION
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
    if usage.audio_input_tokens and pricing.audio_input_per_1m is not None:
        total += usage.audio_input_tokens * pricing.audio_input_per_1m / _MILLION
    if usage.audio_output_tokens and pricing.audio_output_per_1m is not None:
        total += usage.audio_output_tokens * pricing.audio_output_per_1m / _MILLION
    if pricing.markup:
        total += total * pricing.markup
    return total


#: Slack on a measured duration an upstream reports (it may round the length up).
_SECONDS_SLACK = Decimal(1)


def priced_quantities(pricing: Pricing) -> tuple[str, ...]:
    """The quantities a price charges (whatever an upstream says of the others costs
    nothing); a route resolves them once, at startup."""
    return tuple(
        q.name for q in QUANTITIES if any(getattr(pricing, p) is not None for p in q.prices)
    )


def usage_ceiling(
    model: ModelConfig, estimate: Usage, priced: tuple[str, ...] | None = None
) -> dict[str, int | Decimal]:
    """The most an upstream may report of each quantity the model is priced by, for a
    request whose estimate is ``estimate``.

    The estimate is already the most the request can use (``estimate_usage``: the output
    limit asked for or the model's, the images asked for, the input's characters or
    duration, the model's maxima for a job), except for input tokens (of text or
    audio, and those written to a prompt cache): images, tokenizers and audio encodings
    can make an input longer than the estimate suggests, up to the model's context window
    (``context_tokens``). So the ceiling is the estimate with its input tokens raised to
    that window, and a duration given a second of slack. No call is charged more than the
    price of its ceiling.
    """
    if priced is None:
        priced = priced_quantities(model.pricing)
    ceiling: dict[str, int | Decimal] = {name: getattr(estimate, name) for name in priced}
    for tokens in ("input_tokens", "audio_input_tokens", "cache_write_tokens"):
        if tokens in ceiling:
            ceiling[tokens] = max(getattr(estimate, tokens), model.context_tokens or 0)
    if ceiling.get("seconds"):
        ceiling["seconds"] = estimate.seconds + _SECONDS_SLACK
    return ceiling


def usage_problem(usage: Usage, ceiling: dict[str, int | Decimal]) -> str | None:
    """What makes a reported usage impossible (negative, inconsistent, above the
    ceiling), or None when it can be priced."""
    for quantity in QUANTITIES:
        value = getattr(usage, quantity.name)
        if quantity.decimal:
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                return f"{quantity.name} is {value!r}"
        elif type(value) is not int or value < 0:
            return f"{quantity.name} is {value!r}"
    if usage.cached_input_tokens + usage.cache_write_tokens > usage.input_tokens:
        return "more cached or cache-written input tokens than input tokens"
    for name, most in ceiling.items():
        if getattr(usage, name) > most:
            return f"{name} {getattr(usage, name)} is more than this request can use ({most})"
    return None
