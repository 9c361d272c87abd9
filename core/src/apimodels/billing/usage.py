"""The billable quantities of one call: what pricing multiplies by the catalog's unit
prices, what the usage row records, and what an upstream's report is checked against.

``QUANTITIES`` is the one table of them. A new pricing unit is a row there, a field of
``Usage``, a price of the catalog's ``Pricing`` and a column of the usage table (a
migration); the row's column lists, the receipts, the ceiling on what an upstream may
report and the JSON forms all follow from the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter
from typing import Any


@dataclass(slots=True)
class Usage:
    """Billable quantities of one call; pricing multiplies them by the catalog's unit prices.

    ``input_tokens`` counts every input token the model read; ``cached_input_tokens`` (read
    from a prompt cache) and ``cache_write_tokens`` (written to one) are parts of it, each
    priced at its own rate, the rest at the input price.

    ``variant`` selects a row of a per-image price table (for example ``"hd/1024x1024"``).
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    characters: int = 0
    seconds: Decimal = field(default_factory=Decimal)
    outputs: int = 0  # files a task produced (videos, songs), for ``per_output`` prices
    run_seconds: Decimal = field(default_factory=Decimal)  # upstream hardware time of a job
    audio_input_tokens: int = 0  # audio a model reads as tokens (``input_tokens``: text)
    #: Input tokens written to the provider's prompt cache (Anthropic's cache creation),
    #: part of ``input_tokens`` like ``cached_input_tokens`` (the ones read from it).
    cache_write_tokens: int = 0
    #: Audio a model writes as tokens (gpt-4o-mini-tts's speech; ``output_tokens``: text).
    audio_output_tokens: int = 0
    variant: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The quantities it has (decimals as strings), and its variant."""
        out = {q.name: q.json(v) for q, v in zip(QUANTITIES, _values(self), strict=True) if v}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True, slots=True)
class Quantity:
    """One billable quantity: its ``Usage`` field and usage-row column, how the row stores
    it, and the catalog prices that charge it (none: priced through another, as cached input
    tokens are at the cached-input price)."""

    name: str
    stored: Callable[[Any], Any]
    prices: tuple[str, ...]
    decimal: bool = False  # a duration (Decimal), not a count

    def json(self, value: Any) -> Any:
        return str(value) if self.decimal else value


def _as_is(value: int) -> int:
    return value


def _or_none(value: Any) -> Any:
    return value or None


def _decimal(value: Decimal) -> str | None:
    return str(value) if value else None


#: Every quantity, in the order of the usage row's columns.
QUANTITIES = (
    Quantity("input_tokens", _as_is, ("input_per_1m",)),
    Quantity("cached_input_tokens", _as_is, ()),
    Quantity("output_tokens", _as_is, ("output_per_1m",)),
    Quantity("images", _as_is, ("per_image",)),
    Quantity("characters", _as_is, ("per_1k_chars",)),
    Quantity("seconds", _decimal, ("per_second", "per_minute"), decimal=True),
    Quantity("outputs", _or_none, ("per_output",)),
    Quantity("run_seconds", _decimal, ("per_run_second",), decimal=True),
    Quantity("audio_input_tokens", _as_is, ("audio_input_per_1m",)),
    Quantity("cache_write_tokens", _as_is, ("cache_write_per_1m",)),
    Quantity("audio_output_tokens", _as_is, ("audio_output_per_1m",)),
)
#: The usage row's quantity columns.
QUANTITY_FIELDS = tuple(q.name for q in QUANTITIES)
NO_QUANTITIES: tuple[None, ...] = (None,) * len(QUANTITY_FIELDS)
_values = attrgetter(*QUANTITY_FIELDS)
#: Only these are converted; the others are stored as they are (0.4 µs a request, not 1.4).
_CONVERTED = tuple((i, q.stored) for i, q in enumerate(QUANTITIES) if q.stored is not _as_is)


def usage_values(usage: Usage) -> tuple[Any, ...]:
    """A usage as its request's usage row records it, in ``QUANTITY_FIELDS`` order."""
    values = list(_values(usage))
    for i, stored in _CONVERTED:
        values[i] = stored(values[i])
    return tuple(values)


def usage_fields(usage: Usage) -> dict[str, Any]:
    """A usage as the columns of its request's usage row."""
    return dict(zip(QUANTITY_FIELDS, usage_values(usage), strict=True))
