"""catalog.toml: the Replicate entries parse as registry.toml entries, and the simulator
knows every model they name."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

from apimodels.catalog import parse_catalog
from apimodels_replicate.models import MODELS

CATALOG = Path(__file__).parents[1] / "catalog.toml"


def test_the_entries_are_valid_registry_entries_the_simulator_serves() -> None:
    catalog = parse_catalog(tomllib.loads(CATALOG.read_text()), str(CATALOG))
    models = catalog.served_models()
    assert {m.modality.value for m in models.values()} == {"image", "video", "speech", "chat"}
    for model in models.values():
        assert model.provider == "replicate"
        assert model.upstream in MODELS
    assert models["replicate/flux-schnell"].pricing.per_image == Decimal("0.003")
    assert models["replicate/veo-3.1-fast"].pricing.per_second == Decimal("0.15")
    assert models["replicate/speech-2.6-turbo"].pricing.per_1k_chars == Decimal("0.06")


def test_estimates_cover_the_largest_request_the_simulator_accepts() -> None:
    entries = tomllib.loads(CATALOG.read_text())["models"]
    flux = MODELS["black-forest-labs/flux-schnell"].input_schema["properties"]
    assert (
        entries["replicate/flux-schnell"]["options"]["max_outputs"]
        == flux["num_outputs"]["maximum"]
    )
    veo = MODELS["google/veo-3.1-fast"].input_schema["properties"]
    assert entries["replicate/veo-3.1-fast"]["options"]["max_duration_seconds"] == max(
        veo["duration"]["enum"]
    )
    speech = MODELS["minimax/speech-2.6-turbo"].input_schema["properties"]
    assert (
        entries["replicate/speech-2.6-turbo"]["options"]["max_chars"] == speech["text"]["maxLength"]
    )
    llama = MODELS["meta/meta-llama-3.1-405b-instruct"].input_schema["properties"]
    assert (
        entries["replicate/llama-3.1-405b-instruct"]["max_output_tokens"]
        == llama["max_tokens"]["maximum"]
    )
