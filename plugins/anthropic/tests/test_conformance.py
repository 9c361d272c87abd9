"""The Anthropic plugin against the core's conformance kit."""

from __future__ import annotations

from pathlib import Path

from apimodels.testing.kit import ProviderConformance


class TestConformance(ProviderConformance):
    provider = "anthropic"
    registry = Path(__file__).parents[3] / "registry.toml"
