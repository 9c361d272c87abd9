"""Money: decimal arithmetic, integer micro-USD at rest, one rounding rule.

Prices are decimal strings in registry.toml, parsed to ``Decimal``; costs are computed in
``Decimal`` and rounded once per request to whole micro-USD with ROUND_HALF_UP (0.5 micro-USD
and above rounds up). Floats never touch money.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_USD = 1_000_000
_MICRO = Decimal("0.000001")


def to_micros(usd: Decimal) -> int:
    """USD as a Decimal -> integer micro-USD, rounded half up (the one rounding of a request)."""
    return int(usd.quantize(_MICRO, rounding=ROUND_HALF_UP) * MICROS_PER_USD)


def from_micros(micros: int) -> Decimal:
    """Integer micro-USD -> USD as an exact Decimal with six places."""
    return (Decimal(micros) / MICROS_PER_USD).quantize(_MICRO)


def format_usd(micros: int) -> str:
    """Micro-USD as the decimal string used in responses and headers, e.g. ``"0.000135"``."""
    return str(from_micros(micros))


def usd_number(micros: int) -> Decimal:
    """Micro-USD as a JSON *number* written exactly from the decimal (``0.000135``, never
    float noise such as ``0.00013500000000000001``): a cost in a response body, where
    OpenRouter's clients and litellm read a number. ``fastjson.dumps`` writes a Decimal
    that way."""
    return from_micros(micros)
