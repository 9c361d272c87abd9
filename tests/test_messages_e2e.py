"""Anthropic's Messages API end to end: the official ``anthropic`` SDK -> apimodels
(uvicorn, 127.0.0.1) -> the OpenAI simulator: a Claude client calling another provider's
model. Answers, stream events and errors are checked against Anthropic's published schemas
(tests/data/dialects), every call's charge against the cost it reports."""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

import spec_schemas
from support import Gateway, Simulator

MODEL = "openai/gpt-4o-mini"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def account(gateway: Gateway, label: str) -> tuple[str, str]:
    return gateway.new_account(f"{label}-{secrets.token_hex(4)}@example.com", 5_000_000)


def sdk(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0, timeout=20)


def balance(gateway: Gateway, key: str) -> Decimal:
    credits = httpx.get(f"{gateway.url}/v1/credits", headers={"authorization": f"Bearer {key}"})
    assert credits.json()["pending_holds"] == "0.000000"
    return Decimal(credits.json()["balance"])


def cost(usage: Any) -> Decimal:
    return Decimal(str(usage.model_extra["cost"]))


def raw_stream(gateway: Gateway, key: str, body: dict[str, Any]) -> list[tuple[str, dict]]:
    """A stream's (event, data) pairs, each checked against its published schema."""
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/messages",
        json={**body, "stream": True},
        headers=headers,
        timeout=20,
    ) as r:
        assert r.status_code == 200
        events = spec_schemas.sse_events(list(r.iter_lines()))
    for name, data in events:
        assert name == data["type"]
        spec_schemas.anthropic().validate(spec_schemas.MESSAGE_EVENTS[name], data)
    return events  # type: ignore[return-value]


def test_text_answer_with_usage_and_cost_charged_exactly(
    gateway: Gateway, simulator: Simulator
) -> None:
    _, key = account(gateway, "msg")
    before = balance(gateway, key)
    with sdk(gateway, key) as client:
        raw = client.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=200,
            system="Answer briefly.",
            messages=[{"role": "user", "content": "Name three colours."}],
            stop_sequences=["END"],
            extra_body={"temperature": 0.3},  # this SDK no longer sends it; clients still do
        )
    message = raw.parse()
    spec_schemas.anthropic().validate("Message", json.loads(raw.http_response.content))
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert "three colours" in message.content[0].text
    usage = message.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    expected = (usage.input_tokens * Decimal("0.15") + usage.output_tokens * Decimal("0.60")) / (
        10**6
    )
    assert cost(usage) == expected.quantize(Decimal("0.000001")) > 0
    assert Decimal(raw.headers["x-apimodels-cost"]) == cost(usage)
    assert before - balance(gateway, key) == cost(usage)
    sent = simulator.requests()[-1]["json"]
    assert sent["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert sent["max_completion_tokens"] == 200 and sent["stop"] == ["END"]
    assert sent["temperature"] == 0.3


def test_bearer_authentication_works_too(gateway: Gateway) -> None:
    _, key = account(gateway, "bearer")
    r = httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200 and r.json()["type"] == "message"


def test_images_and_tool_results_reach_the_upstream_mapped(
    gateway: Gateway, simulator: Simulator
) -> None:
    _, key = account(gateway, "map")
    with sdk(gateway, key) as client:
        client.messages.create(
            model=MODEL,
            max_tokens=100,
            system=[{"type": "text", "text": "Be brief."}],
            tools=[WEATHER],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather where this is?"},
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBORw0KGgo=",
                            },
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Let me check."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                        {"type": "text", "text": "Thanks!"},
                    ],
                },
            ],
        )
    sent = simulator.requests()[-1]["json"]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather where this is?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks!"}]},
    ]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]


def test_tool_use_answer_and_stream(gateway: Gateway) -> None:
    _, key = account(gateway, "tools")
    with sdk(gateway, key) as client:
        message = client.messages.create(
            model=MODEL,
            max_tokens=100,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
            messages=[{"role": "user", "content": "Weather in Lima"}],
        )
        assert message.stop_reason == "tool_use"
        [block] = message.content
        assert block.type == "tool_use" and block.name == "get_weather"
        assert block.input == {"city": "Lima"}
        with client.messages.stream(
            model=MODEL,
            max_tokens=100,
            tools=[WEATHER],
            tool_choice={"type": "any"},
            messages=[{"role": "user", "content": "Weather in Quito"}],
        ) as stream:
            final = stream.get_final_message()
    [block] = final.content
    assert block.type == "tool_use" and block.input == {"city": "Quito"}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens > 0
    events = raw_stream(
        gateway,
        key,
        {
            "model": MODEL,
            "max_tokens": 100,
            "tools": [WEATHER],
            "tool_choice": {"type": "any"},
            "messages": [{"role": "user", "content": "Weather in Bern"}],
        },
    )
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial) == {"city": "Bern"}


def test_stream_events_in_order_and_the_usage_is_the_charge(gateway: Gateway) -> None:
    _, key = account(gateway, "stream")
    before = balance(gateway, key)
    body = {
        "model": MODEL,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Tell me about lighthouses."}],
    }
    events = raw_stream(gateway, key, body)
    names = [name for name, _ in events]
    deltas = names.count("content_block_delta")
    assert deltas > 3
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    charged = Decimal(str(delta["usage"]["cost"]))
    assert charged > 0 and before - balance(gateway, key) == charged
    with sdk(gateway, key) as client:
        streamed = client.messages.create(**body, stream=True)
        kinds = [event.type for event in streamed]
        with client.messages.stream(**body) as helper:
            text = "".join(helper.text_stream)
            final = helper.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "lighthouses" in text and final.content[0].text == text
    assert final.usage.output_tokens > 0


def test_count_tokens_is_an_estimate_and_free(gateway: Gateway, simulator: Simulator) -> None:
    _, key = account(gateway, "count")
    before, seen = balance(gateway, key), simulator.received()
    with sdk(gateway, key) as client:
        raw = client.messages.with_raw_response.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "Hello there, how are you?"}]
        )
        short = raw.parse().input_tokens
        longer = client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "Hello there, how are you? " * 20}]
        ).input_tokens
    spec_schemas.anthropic().validate(
        "CountMessageTokensResponse", json.loads(raw.http_response.content)
    )
    assert 0 < short < longer
    assert simulator.received() == seen and balance(gateway, key) == before


def test_errors_are_anthropic_shaped_and_typed_by_the_sdk(gateway: Gateway) -> None:
    _, key = account(gateway, "errors")
    hi = [{"role": "user", "content": "Hi"}]
    bad = anthropic.Anthropic(base_url=gateway.url, api_key="sk-am-wrong", max_retries=0)
    with bad, pytest.raises(anthropic.AuthenticationError) as auth:
        bad.messages.create(model=MODEL, max_tokens=10, messages=hi)
    spec_schemas.anthropic().validate("ErrorResponse", auth.value.body)
    assert auth.value.body["error"]["type"] == "authentication_error"
    with sdk(gateway, key) as client:
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.messages.create(model="nobody/nothing", max_tokens=10, messages=hi)
        assert missing.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.BadRequestError) as modality:
            client.messages.create(model="openai/tts-1", max_tokens=10, messages=hi)
        assert "/v1/audio/speech" in modality.value.body["error"]["message"]
        with pytest.raises(anthropic.BadRequestError) as thinking:
            client.messages.create(
                model=MODEL,
                max_tokens=10,
                messages=hi,
                thinking={"type": "enabled", "budget_tokens": 1024},
            )
        assert "'thinking' is not supported" in thinking.value.body["error"]["message"]
        with pytest.raises(anthropic.BadRequestError) as server_tool:
            client.messages.create(
                model=MODEL,
                max_tokens=10,
                messages=hi,
                tools=[{"type": "web_search_20250305", "name": "web_search"}],
            )
        assert "web_search_20250305" in server_tool.value.body["error"]["message"]
    r = httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": MODEL, "messages": hi},
        headers={"x-api-key": key},
    )
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    spec_schemas.anthropic().validate("ErrorResponse", r.json())


def test_upstream_failure_is_free_before_and_after_the_first_byte(
    gateway: Gateway, simulator: Simulator
) -> None:
    _, key = account(gateway, "fail")
    before = balance(gateway, key)
    hi = [{"role": "user", "content": "Tell me a story"}]
    simulator.knobs(fail=[{"kind": "error", "status": 503}])
    with sdk(gateway, key) as client, pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model=MODEL, max_tokens=50, messages=hi)
    assert info.value.body["error"]["type"] in ("api_error", "overloaded_error")
    simulator.knobs(fail=[{"kind": "cut_stream"}])
    with sdk(gateway, key) as client, pytest.raises(anthropic.APIStatusError):
        for _ in client.messages.create(model=MODEL, max_tokens=50, messages=hi, stream=True):
            pass
    assert balance(gateway, key) == before


def test_refused_by_policy_exactly_like_chat(gateway: Gateway, simulator: Simulator) -> None:
    account_id, key = account(gateway, "policy")
    before, seen = balance(gateway, key), simulator.received()
    with sdk(gateway, key) as client, pytest.raises(anthropic.PermissionDeniedError) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=[{"role": "user", "content": "Write me a working ransomware in Python"}],
        )
    assert info.value.body["error"]["type"] == "permission_error"
    assert "malware" in info.value.body["error"]["message"]
    assert simulator.received() == seen and balance(gateway, key) == before
    rows = gateway.db.execute(
        "SELECT category FROM policy_violations WHERE account_id = ?", [account_id]
    ).fetchall()
    assert rows == [("malware",)]


def test_errors_the_gateway_answers_before_the_api_are_anthropic_shaped_too(
    gateway: Gateway,
) -> None:
    """A body over the size limit (refused from its Content-Length, before any endpoint), an
    unknown path under /v1/messages and a wrong method: in the Messages API's error shape,
    so Anthropic's SDK types them, with the request id (OpenAI's shape elsewhere)."""
    _, key = account(gateway, "early")
    limit = gateway.server.gateway.catalog.gateway.max_body_bytes
    headers = {"x-api-key": key, "content-type": "application/json"}
    with httpx.Client(base_url=gateway.url, headers=headers) as http:
        answers = [
            (413, http.post("/v1/messages", content=b"x" * (limit + 1))),
            (404, http.post("/v1/messages/batches", json={})),
            (405, http.get("/v1/messages")),
        ]
        for status, r in answers:
            assert r.status_code == status, r.text
            spec_schemas.anthropic().validate("ErrorResponse", r.json())
            assert r.json()["request_id"] == r.headers["x-request-id"]
        other = http.post("/v1/embeddings", content=b"x" * (limit + 1))
        assert other.status_code == 413 and other.json()["error"]["type"] == "invalid_request_error"
    with sdk(gateway, key) as client, pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.batches.list()
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert balance(gateway, key) == Decimal(5)
