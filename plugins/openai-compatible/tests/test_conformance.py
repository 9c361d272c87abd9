"""The OpenAI-compatible plugin against the core's conformance kit, on two instances: one
as close to OpenAI as vLLM or Ollama, one with Mistral's and Groq's quirks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from apimodels.testing.kit import ProviderConformance

CATALOG = Path(__file__).with_name("catalog.toml")


class TestConformance(ProviderConformance):
    provider = "local"
    registry = CATALOG


class TestConformanceOfAStrictServer(ProviderConformance):
    provider = "strict"
    registry = CATALOG
    # Mistral refuses stream_options but reports the usage on a stream's last chunk anyway.
    simulator_knobs: ClassVar[dict[str, Any]] = {"usage_unasked": True}
