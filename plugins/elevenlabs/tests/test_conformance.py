"""The ElevenLabs plugin against the core's conformance kit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from apimodels.catalog import load_catalog
from apimodels.testing.kit import ProviderConformance


class TestConformance(ProviderConformance):
    provider = "elevenlabs"
    registry = Path(__file__).parents[3] / "registry.toml"
    inputs: ClassVar[dict[str, dict[str, Any]]] = {
        model: {"voice": "Aria"}
        for model, config in load_catalog(registry).models.items()
        if config.provider == "elevenlabs"
    }
