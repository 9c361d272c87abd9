"""registry.toml's Replicate entries: valid, served by the simulator, and with holds that
cover the largest request each model accepts."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from apimodels.catalog import load_catalog
from apimodels_replicate.models import MODELS

REGISTRY = Path(__file__).parents[3] / "registry.toml"


def _replicate_models() -> dict:
    catalog = load_catalog(REGISTRY)
    return {k: m for k, m in catalog.served_models().items() if m.provider == "replicate"}


def test_the_entries_are_valid_and_the_simulator_serves_them() -> None:
    models = _replicate_models()
    assert {m.modality.value for m in models.values()} == {"image", "video", "speech", "chat"}
    for model in models.values():
        assert model.upstream in MODELS
    assert models["replicate/flux-schnell"].pricing.per_image == Decimal("0.003")
    assert models["replicate/veo-3.1-fast"].pricing.per_second == Decimal("0.15")
    assert models["replicate/veo-3.1"].pricing.per_second == Decimal("0.40")
    assert models["replicate/speech-2.6-turbo"].pricing.per_1k_chars == Decimal("0.06")


def test_holds_cover_the_largest_request_the_models_accept() -> None:
    models = _replicate_models()
    flux = MODELS["black-forest-labs/flux-schnell"].input_schema["properties"]
    assert models["replicate/flux-schnell"].max_outputs == flux["num_outputs"]["maximum"]
    veo = MODELS["google/veo-3.1-fast"].input_schema["properties"]
    assert models["replicate/veo-3.1-fast"].max_output_seconds == max(veo["duration"]["enum"])
    veo_full = MODELS["google/veo-3.1"].input_schema["properties"]
    assert models["replicate/veo-3.1"].max_output_seconds == max(veo_full["duration"]["enum"])
    llama = MODELS["meta/meta-llama-3.1-405b-instruct"].input_schema["properties"]
    assert (
        models["replicate/llama-3.1-405b-instruct"].max_output_tokens
        == llama["max_tokens"]["maximum"]
    )
