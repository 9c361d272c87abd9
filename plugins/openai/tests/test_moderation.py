"""The openai-moderation policy without a gateway: the request it builds (checked against
OpenAI's published description), and how the simulator's answers map onto our categories."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from apimodels import Upstream, Verdict
from apimodels.catalog import load_catalog
from apimodels.policy import CATEGORIES, PolicyCheck
from apimodels.testing import OpenAPI
from apimodels_openai import moderation
from apimodels_openai.moderation import DEFAULT_MAPPING, OPENAI_CATEGORIES, ModerationSettings
from apimodels_openai.simulator import MODERATION_WORDS, create_app

SPEC = OpenAPI.load(Path(__file__).parent / "data" / "openai-openapi.trimmed.json")
MODEL = load_catalog(Path(__file__).parents[3] / "registry.toml").models["openai/gpt-4o-mini"]
KEY = "sk-sim-moderation-0123456789"
UPSTREAM = Upstream("openai", "http://sim.test/v1", KEY)


@pytest.fixture(scope="module")
def sim() -> Iterator[TestClient]:
    with TestClient(create_app(api_key=KEY)) as client:
        yield client


def check(settings: ModerationSettings, texts: list[str]) -> PolicyCheck:
    built = moderation.check_request(MODEL, texts, settings, UPSTREAM)
    assert isinstance(built, PolicyCheck)
    return built


def judge(sim: TestClient, settings: ModerationSettings, *texts: str) -> Verdict | None:
    """Send the policy's own request to the simulator and read the answer, as the core does."""
    built = check(settings, list(texts))
    response = sim.post(
        built.request.url.path, content=built.request.content, headers=dict(built.request.headers)
    )
    assert response.status_code == 200, response.text
    return built.read(response)


def test_the_request_matches_openais_description() -> None:
    built = check(ModerationSettings(), ["first text", "second text"])
    request = built.request
    assert request.method == "POST" and str(request.url) == "http://sim.test/v1/moderations"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(request.content)
    assert body == {"model": "omni-moderation-latest", "input": ["first text", "second text"]}
    SPEC.validate_request("post", "/moderations", body)


def test_a_long_conversation_is_packed_into_few_inputs(sim: TestClient) -> None:
    texts = [f"message {i}" for i in range(100)] + ["you loser"]
    body = json.loads(check(ModerationSettings(), texts).request.content)
    assert 1 < len(body["input"]) <= moderation.MAX_INPUTS
    assert "\n".join(body["input"]) == "\n".join(texts)
    verdict = judge(sim, ModerationSettings(), *texts)
    assert verdict is not None and verdict.category == "harassment"


def test_no_text_no_call() -> None:
    assert moderation.check_request(MODEL, [], ModerationSettings(), UPSTREAM) is None


def test_the_default_mapping_is_complete_and_valid() -> None:
    assert set(OPENAI_CATEGORIES) == set(MODERATION_WORDS)  # the 13 of the simulator
    assert set(DEFAULT_MAPPING) <= set(OPENAI_CATEGORIES)
    assert set(DEFAULT_MAPPING.values()) <= set(CATEGORIES)


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("they are vermin", "hate"),
        ("we will exterminate them", "hate"),
        ("you idiot", "harassment"),
        ("I will hunt you down", "harassment"),
        ("how to launder money", "illegal"),
        ("a pipe bomb", "illegal"),
        ("sexual content involving a child", "child_sexual_content"),
    ],
)
def test_flagged_categories_map_onto_ours(sim: TestClient, text: str, category: str) -> None:
    verdict = judge(sim, ModerationSettings(), text)
    assert verdict is not None and verdict.action == "deny"
    assert verdict.category == category and "moderation" in verdict.reason


@pytest.mark.parametrize(
    "text", ["kill the lights", "gore in horror films", "explicit sex", "end my life", "hello"]
)
def test_categories_outside_the_terms_are_allowed_by_default(sim: TestClient, text: str) -> None:
    assert judge(sim, ModerationSettings(), text) is None


def test_any_input_can_deny(sim: TestClient) -> None:
    verdict = judge(sim, ModerationSettings(), "hello", "fine", "you loser")
    assert verdict is not None and verdict.category == "harassment"


def test_thresholds_and_a_custom_mapping(sim: TestClient) -> None:
    strict = ModerationSettings(threshold=0.0001, categories={"violence": "illegal"})
    verdict = judge(sim, strict, "a quiet afternoon")  # tiny non-zero scores still reach it
    assert verdict is not None and verdict.category == "illegal"
    lenient = ModerationSettings(thresholds={"harassment": 0.99})
    assert judge(sim, lenient, "you idiot") is None
    remapped = ModerationSettings(categories={**DEFAULT_MAPPING, "sexual": "illegal"})
    assert judge(sim, remapped, "explicit sex").category == "illegal"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "settings",
    [
        {"thresholds": {"violence/cartoon": 0.5}},
        {"categories": {"hate": "rudeness"}},
        {"categories": {"spam": "fraud"}},
        {"threshold": 1.5},
        {"thresholdz": 0.5},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModerationSettings.model_validate(settings)


@pytest.mark.parametrize(
    "body", [b'{"results": []}', b'{"id": "x"}', b"not json", b'{"results": [{"flagged": true}]}']
)
def test_an_answer_that_is_not_a_moderation_raises(body: bytes) -> None:
    built = check(ModerationSettings(), ["hello"])
    with pytest.raises((ValueError, KeyError, TypeError)):
        built.read(httpx.Response(200, content=body))
