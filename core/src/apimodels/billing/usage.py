"""The billable quantities of one call: what pricing multiplies by the catalog's unit
prices, what the usage row records, and what an upstream's report is checked against."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(slots=True)
class Usage:
    """Billable quantities of one call; pricing multiplies them by the catalog's unit prices.

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
    variant: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "input_tokens",
                "cached_input_tokens",
                "output_tokens",
                "images",
                "characters",
                "outputs",
            )
            if getattr(self, k)
        }
        if self.seconds:
            out["seconds"] = str(self.seconds)
        if self.run_seconds:
            out["run_seconds"] = str(self.run_seconds)
        if self.variant:
            out["variant"] = self.variant
        return out
