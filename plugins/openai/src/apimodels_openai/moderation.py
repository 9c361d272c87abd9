"""The ``openai-moderation`` policy: OpenAI's moderation endpoint judges every request.

A separate plugin (entry point ``openai-moderation``) that calls the ``openai`` provider's
upstream with its key and connection pool. Sans-I/O like the provider: ``check_request``
returns the moderation request and how to read its answer; the core sends it under the
policy's ``timeout`` and applies its ``fail`` setting when the call fails.

OpenAI's 13 categories are mapped onto the Terms' categories (``settings.categories``);
a mapped category denies when its score reaches its threshold (``settings.thresholds``,
else ``settings.threshold``). Self-harm, adult sexual content and violence are not
prohibited uses of the Terms, so they are not mapped by default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from apimodels import ModelConfig, Upstream, Verdict, hookimpl
from apimodels.policy import CATEGORIES, PolicyCheck, PolicySpec

NAME = "openai-moderation"

#: OpenAI's moderation categories (omni-moderation).
OPENAI_CATEGORIES = (
    "hate",
    "hate/threatening",
    "harassment",
    "harassment/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
#: OpenAI category -> the Terms' category it denies as.
DEFAULT_MAPPING = {
    "hate": "hate",
    "hate/threatening": "hate",
    "harassment": "harassment",
    "harassment/threatening": "harassment",
    "illicit": "illegal",
    "illicit/violent": "illegal",
    "sexual/minors": "child_sexual_content",
}

#: The most inputs sent in one moderation request (a conservative bound: OpenAI's
#: description sets none).
MAX_INPUTS = 32

Score = Annotated[float, Field(ge=0, le=1)]


def _known(names: dict[str, object]) -> None:
    unknown = set(names) - set(OPENAI_CATEGORIES)
    if unknown:
        raise ValueError(
            f"unknown OpenAI categories {sorted(unknown)}; one of {', '.join(OPENAI_CATEGORIES)}"
        )


class ModerationSettings(BaseModel):
    """``[policies.openai-moderation.settings]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "omni-moderation-latest"
    threshold: Score = 0.5
    thresholds: dict[str, Score] = Field(default_factory=dict)  # per OpenAI category
    categories: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MAPPING))

    @field_validator("thresholds")
    @classmethod
    def _threshold_names(cls, value: dict[str, float]) -> dict[str, float]:
        _known(value)
        return value

    @field_validator("categories")
    @classmethod
    def _mapping(cls, value: dict[str, str]) -> dict[str, str]:
        _known(value)
        for ours in value.values():
            if ours not in CATEGORIES:
                raise ValueError(f"unknown category {ours!r}; one of {', '.join(CATEGORIES)}")
        return value

    def limit(self, category: str) -> float:
        return self.thresholds.get(category, self.threshold)


@hookimpl
def register_policies(register: Callable[[PolicySpec], None]) -> None:
    register(
        PolicySpec(
            NAME,
            settings=ModerationSettings,
            provider="openai",
            description="OpenAI's moderation endpoint, mapped onto the Terms' categories",
        )
    )


@hookimpl
def check_request(
    model: ModelConfig, texts: list[str], settings: ModerationSettings, upstream: Upstream
) -> PolicyCheck | None:
    if not texts:
        return None
    request = upstream.json_request(
        "POST",
        "/moderations",
        {"model": settings.model, "input": _packed(texts)},
        {"authorization": f"Bearer {upstream.api_key}"},
    )
    return PolicyCheck(request, partial(verdict, settings))


def _packed(texts: list[str]) -> list[str]:
    """At most ``MAX_INPUTS`` inputs: a long conversation's texts joined in runs."""
    if len(texts) <= MAX_INPUTS:
        return texts
    size = -(-len(texts) // MAX_INPUTS)
    return ["\n".join(texts[i : i + size]) for i in range(0, len(texts), size)]


def verdict(settings: ModerationSettings, response: httpx.Response) -> Verdict | None:
    """The deny of the highest mapped score at or over its threshold, across all inputs.

    Raises on a body that is not a moderation answer (the core then applies ``fail``).
    """
    results = json.loads(response.content)["results"]
    if not isinstance(results, list) or not results:
        raise ValueError("no moderation results")
    worst: tuple[float, str] | None = None
    for result in results:
        scores = result["category_scores"]
        for theirs in settings.categories:
            score = float(scores.get(theirs, 0.0))
            if score >= settings.limit(theirs) and (worst is None or score > worst[0]):
                worst = (score, theirs)
    if worst is None:
        return None
    score, theirs = worst
    return Verdict.deny(
        settings.categories[theirs], f"flagged by moderation ({theirs}, score {score:.2f})"
    )
