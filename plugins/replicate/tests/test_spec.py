"""The simulator checked against Replicate's published OpenAPI description (a copy in data/,
see data/SOURCE): every request the tests send and every answer the simulator gives, for
each model and each state a prediction passes through.

Where the description is silent, the project's facts (specs NOTES.md) stand in: it documents
no error answers, so errors are checked against RFC 7807's problem object below; it declares
only ``metrics.total_time``, so ``predict_time`` and the token counts are checked here."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from apimodels.testing import OpenAPI
from apimodels_replicate.models import MODELS

DATA = Path(__file__).parent / "data"
SPEC = json.loads((DATA / "replicate-openapi.json").read_text())
# The description gives the prediction's ``version`` as oneOf(any string, "hidden"):
# "hidden" matches both, which oneOf forbids. Read it as the anyOf it means.
_version = SPEC["components"]["schemas"]["schemas_prediction_response"]["properties"]["version"]
_version["anyOf"] = _version.pop("oneOf")
CHECK = OpenAPI(SPEC)

#: RFC 7807's problem details, with the fields Replicate fills (NOTES.md).
PROBLEM = {
    "type": "object",
    "required": ["title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string", "minLength": 1},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "minLength": 1},
        "instance": {"type": "string"},
        "invalid_fields": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "field", "description"],
                "properties": {k: {"type": "string"} for k in ("type", "field", "description")},
            },
        },
    },
}

INPUTS: dict[str, dict[str, Any]] = {
    "black-forest-labs/flux-schnell": {"prompt": "a red bicycle", "num_outputs": 2},
    "google/veo-3.1-fast": {"prompt": "waves at dusk", "duration": 4},
    "google/veo-3.1": {"prompt": "a lighthouse at dawn", "duration": 6, "resolution": "720p"},
    "minimax/speech-2.6-turbo": {"text": "Hello there.", "audio_format": "wav"},
    "meta/meta-llama-3.1-405b-instruct": {"prompt": "Say hi", "max_tokens": 8},
}


def path_of(url: str) -> str:
    """A simulator URL as the description's path (its server is .../v1)."""
    return httpx.URL(url).path.removeprefix("/v1")


def check_prediction(body: dict[str, Any]) -> None:
    CHECK.validate_schema("schemas_prediction_response", body)
    if body["status"] in ("succeeded", "failed", "canceled"):
        assert isinstance(body["metrics"]["predict_time"], float | int)
        assert body["metrics"]["predict_time"] <= body["metrics"]["total_time"]


def check_problem(answer: httpx.Response) -> None:
    from jsonschema import Draft202012Validator

    assert answer.headers["content-type"] == "application/problem+json"
    Draft202012Validator(PROBLEM).validate(answer.json())
    assert answer.json()["status"] == answer.status_code


@pytest.mark.parametrize("ref", list(MODELS))
def test_every_state_of_every_model_matches_the_description(
    sim: httpx.Client, set_knobs: Any, ref: str
) -> None:
    set_knobs(step_seconds=0.08)
    request = {"input": INPUTS[ref]}
    CHECK.validate_request("post", "/models/{model_owner}/{model_name}/predictions", request)
    created = sim.post(f"/v1/models/{ref}/predictions", json=request)
    CHECK.validate_response(
        "post",
        "/models/{model_owner}/{model_name}/predictions",
        created.status_code,
        created.json(),
    )
    seen = {created.json()["status"]}
    body = created.json()
    while body["status"] not in ("succeeded", "failed", "canceled"):
        time.sleep(0.03)
        answer = sim.get(body["urls"]["get"])
        body = answer.json()
        CHECK.validate_response("get", "/predictions/{prediction_id}", answer.status_code, body)
        check_prediction(body)
        seen.add(body["status"])
    assert seen == {"starting", "processing", "succeeded"}

    by_version = {"version": f"{ref}:{MODELS[ref].version}", "input": INPUTS[ref]}
    CHECK.validate_request("post", "/predictions", by_version)
    waited = sim.post("/v1/predictions", json=by_version, headers={"prefer": "wait=10"})
    assert waited.status_code == 201
    CHECK.validate_response("post", "/predictions", 201, waited.json())
    check_prediction(waited.json())

    model = sim.get(f"/v1/models/{ref}")
    CHECK.validate_response("get", "/models/{model_owner}/{model_name}", 200, model.json())
    CHECK.validate_schema("schemas_version_response", model.json()["latest_version"])


def test_failed_and_canceled_predictions_match_the_description(
    sim: httpx.Client, set_knobs: Any
) -> None:
    failed = sim.post(
        "/v1/models/black-forest-labs/flux-schnell/predictions",
        json={"input": {"prompt": "[nsfw]"}},
        headers={"prefer": "wait"},
    ).json()
    assert failed["status"] == "failed"
    check_prediction(failed)
    set_knobs(slow_seconds=30)
    running = sim.post(
        "/v1/models/google/veo-3.1-fast/predictions", json={"input": {"prompt": "long"}}
    ).json()
    canceled = sim.post(running["urls"]["cancel"])
    assert path_of(running["urls"]["cancel"]) == f"/predictions/{running['id']}/cancel"
    CHECK.validate_response("post", "/predictions/{prediction_id}/cancel", 200, canceled.json())
    check_prediction(canceled.json())
    deadline = sim.post(
        "/v1/models/google/veo-3.1-fast/predictions",
        json={"input": {"prompt": "deadline"}},
        headers={"cancel-after": "10m"},
    ).json()
    check_prediction(deadline)
    sim.post(deadline["urls"]["cancel"])


def test_the_list_and_the_secret_match_the_description(sim: httpx.Client, set_knobs: Any) -> None:
    for _ in range(3):
        sim.post(
            "/v1/models/black-forest-labs/flux-schnell/predictions",
            json={"input": {"prompt": "listed"}},
        )
    set_knobs(page_size=2)
    page = sim.get("/v1/predictions")
    CHECK.validate_response("get", "/predictions", 200, page.json())
    CHECK.validate_schema("schemas_paginated_prediction_response", page.json())
    following = sim.get(page.json()["next"])
    CHECK.validate_response("get", "/predictions", 200, following.json())
    assert path_of(page.json()["next"]) == "/predictions"
    secret = sim.get("/v1/webhooks/default/secret")
    CHECK.validate_response("get", "/webhooks/default/secret", 200, secret.json())


def test_webhook_bodies_match_the_description(
    sim: httpx.Client, receiver: Any, wait_for: Any
) -> None:
    request = {
        "input": {"prompt": "hooked"},
        "webhook": receiver.url,
        "webhook_events_filter": ["start", "logs", "completed"],
    }
    CHECK.validate_request("post", "/models/{model_owner}/{model_name}/predictions", request)
    sim.post("/v1/models/black-forest-labs/flux-schnell/predictions", json=request)
    wait_for(lambda: len(receiver.received) == 3)
    for delivery in receiver.received:
        check_prediction(json.loads(delivery["body"]))


def test_errors_are_problem_details(sim: httpx.Client, origin: str, set_knobs: Any) -> None:
    flux = "/v1/models/black-forest-labs/flux-schnell/predictions"
    check_problem(httpx.get(f"{origin}/v1/predictions"))  # 401
    check_problem(sim.get("/v1/predictions/nope"))  # 404
    check_problem(sim.post(flux, json={"input": {"num_outputs": 0}}))  # 422
    set_knobs(fail=[{"kind": "error", "status": 429}, {"kind": "error", "status": 500}])
    check_problem(sim.get("/v1/predictions"))
    check_problem(sim.get("/v1/predictions"))
