"""The simulator and the plugin, checked against Anthropic's published OpenAPI description
(a trimmed copy in data/, see data/SOURCE): what the simulator answers and streams, and what
the plugin sends upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import apimodels_anthropic as plugin
from apimodels import ChatRequest, Upstream
from apimodels.catalog import load_catalog
from apimodels.testing import OpenAPI

SPEC = OpenAPI.load(Path(__file__).parent / "data" / "anthropic-openapi.trimmed.json")
CATALOG = load_catalog(Path(__file__).parents[3] / "registry.toml")
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
#: A system prompt long enough to be cached (the simulator caches 1,024 tokens and more).
MANUAL = "The manual of the lighthouse, chapter after chapter. " * 100

BODIES: list[dict[str, Any]] = [
    {
        "model": "claude-sonnet-5-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
    },
    {
        "model": "claude-haiku-5-5",
        "max_tokens": 64,
        "system": [{"type": "text", "text": MANUAL, "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe it."},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            }
        ],
    },
    {
        "model": "claude-opus-5-5",
        "max_tokens": 64,
        "tools": [TOOL],
        "messages": [{"role": "user", "content": "Use get_weather for Paris."}],
    },
    {
        "model": "claude-fable-5-2",
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "Tell a story"}],
    },
]


@pytest.mark.parametrize("body", BODIES, ids=["text", "cached-image", "tool", "cut"])
def test_messages_and_their_streams_match_the_description(
    sim: httpx.Client, body: dict[str, Any]
) -> None:
    SPEC.validate_request("post", "/v1/messages", body)
    r = sim.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    SPEC.validate_response("post", "/v1/messages", 200, r.json())
    with sim.stream("POST", "/v1/messages", json=body | {"stream": True}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        raw = s.read().decode()
    names = []
    for block in raw.strip().split("\n\n"):
        event, data = block.split("\n")
        name = event.removeprefix("event: ")
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == name
        SPEC.validate_schema("MessageStreamEvent", payload)
        names.append(name)
    # Anthropic's order: start, a ping after the first block opens, blocks, delta, stop.
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) <= {"content_block_delta", "content_block_stop", "content_block_start"}


def test_count_tokens_and_errors_match_the_description(sim: httpx.Client) -> None:
    body = {"model": "claude-sonnet-5-5", "messages": [{"role": "user", "content": "Hello there"}]}
    SPEC.validate_request("post", "/v1/messages/count_tokens", body)
    r = sim.post("/v1/messages/count_tokens", json=body)
    SPEC.validate_response("post", "/v1/messages/count_tokens", 200, r.json())
    assert r.json()["input_tokens"] == 3 + 3  # the turn's framing, then 11 characters
    for status in (400, 401, 403, 404, 429, 500, 529):
        sim.post("/_sim/knobs", json={"fail": [{"kind": "error", "status": status}]})
        r = sim.post("/v1/messages", json=BODIES[0])
        assert r.status_code == status
        if status < 500:
            SPEC.validate_response("post", "/v1/messages", status, r.json())
        else:  # the description documents 4XX only; 5xx answers have the same shape
            SPEC.validate_schema("ErrorResponse", r.json())
    missing = sim.post("/v1/messages", json={"model": "claude-sonnet-5-5", "messages": []})
    assert missing.status_code == 400
    SPEC.validate_response("post", "/v1/messages", 400, missing.json())
    assert missing.json()["error"]["message"] == "max_tokens: Field required"


def test_an_error_event_mid_stream_matches_the_error_shape(sim: httpx.Client) -> None:
    sim.post("/_sim/knobs", json={"fail": [{"kind": "stream_error", "after": 2}]})
    with sim.stream("POST", "/v1/messages", json=BODIES[0] | {"stream": True}) as s:
        blocks = s.read().decode().strip().split("\n\n")
    event, data = blocks[-1].split("\n")
    assert event == "event: error"
    SPEC.validate_schema("ErrorResponse", json.loads(data.removeprefix("data: ")))
    deltas = [b for b in blocks if b.startswith("event: content_block_delta")]
    assert len(deltas) == 2


def chat(**body: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "anthropic/claude-sonnet-5-5", **body})


REQUESTS = [
    chat(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        stop=["x"],
        top_p=0.9,
    ),
    chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            }
        ],
        stream=True,
        cache_control={"type": "ephemeral"},
    ),
    chat(
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "3 C"},
        ],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": TOOL["input_schema"]},
            }
        ],
        tool_choice="auto",
        parallel_tool_calls=False,
    ),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=["system", "images-cache-stream", "tools"])
def test_what_the_plugin_sends_matches_the_description(request_: ChatRequest) -> None:
    model = CATALOG.models["anthropic/claude-sonnet-5-5"]
    upstream = Upstream("anthropic", "https://api.anthropic.com/v1", "sk-ant-x")
    built = plugin.build_request(model=model, request=request_, upstream=upstream)
    SPEC.validate_request("post", "/v1/messages", json.loads(built.content))
