"""The Replicate plugin against the core's conformance kit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from apimodels.testing.kit import ProviderConformance


class TestConformance(ProviderConformance):
    provider = "replicate"
    registry = Path(__file__).parents[3] / "registry.toml"
    # The sandbox's 1 s steps, made quick.
    simulator_knobs: ClassVar[dict[str, Any]] = {"step_seconds": 0.05}
    inputs: ClassVar[dict[str, dict[str, Any]]] = {
        "replicate/veo-3.1-fast": {"duration": 4},
        "replicate/veo-3.1": {"duration": 4},
    }
