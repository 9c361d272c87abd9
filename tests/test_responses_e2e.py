"""The Responses API end to end: the official OpenAI SDK's ``client.responses`` ->
apimodels (uvicorn, 127.0.0.1) -> the OpenAI simulator's Chat Completions. Every answer and
every stream event is checked against OpenAI's published schemas (tests/data/dialects),
every call's charge against the cost it reports."""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

import spec_schemas
from support import Gateway, Simulator

MODEL = "openai/gpt-4o-mini"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def account(gateway: Gateway, label: str) -> tuple[str, str]:
    """A new account with $5; returns (account id, key)."""
    return gateway.new_account(f"{label}-{secrets.token_hex(4)}@example.com", 5_000_000)


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=20)


def balance(gateway: Gateway, key: str) -> Decimal:
    credits = httpx.get(f"{gateway.url}/v1/credits", headers={"authorization": f"Bearer {key}"})
    assert credits.json()["pending_holds"] == "0.000000"
    return Decimal(credits.json()["balance"])


def cost(usage: Any) -> Decimal:
    return Decimal(str(usage.model_extra["cost"]))


def stream_events(gateway: Gateway, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed response, each checked against its published schema and
    against the event name it was sent under."""
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = spec_schemas.sse_events(list(r.iter_lines()))
    for name, data in events:
        assert name == data["type"]
        spec_schemas.openai().validate(spec_schemas.RESPONSE_EVENTS[data["type"]], data)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    return [data for _, data in events]


def test_text_answer_with_usage_and_cost_charged_exactly(gateway: Gateway) -> None:
    _, key = account(gateway, "resp")
    before = balance(gateway, key)
    with sdk(gateway, key) as client:
        raw = client.responses.with_raw_response.create(
            model=MODEL,
            instructions="Answer in one sentence.",
            input="Name three colours.",
            temperature=0.5,
            max_output_tokens=200,
        )
    response = raw.parse()
    spec_schemas.openai().validate("Response", json.loads(raw.content))
    assert response.status == "completed" and response.model == MODEL
    assert "three colours" in response.output_text
    assert response.instructions == "Answer in one sentence." and response.temperature == 0.5
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    expected = (usage.input_tokens * Decimal("0.15") + usage.output_tokens * Decimal("0.60")) / (
        10**6
    )
    assert cost(usage) == expected.quantize(Decimal("0.000001")) > 0
    assert Decimal(raw.headers["x-apimodels-cost"]) == cost(usage)
    assert before - balance(gateway, key) == cost(usage)


def test_the_mapping_upstream_input_items_images_tools_and_format(
    gateway: Gateway, simulator: Simulator
) -> None:
    """What the upstream receives: the documented mapping onto Chat Completions."""
    _, key = account(gateway, "map")
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    with sdk(gateway, key) as client:
        response = client.responses.create(
            model=MODEL,
            instructions="Be brief.",
            input=[
                {"role": "user", "content": "What is in this picture?"},
                {"role": "assistant", "content": "A cat."},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "And this one?"},
                        {
                            "type": "input_image",
                            "image_url": "data:image/png;base64,iVBORw0KGgo=",
                            "detail": "low",
                        },
                    ],
                },
            ],
            tools=[WEATHER],
            tool_choice="auto",
            text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
            max_output_tokens=300,
            top_p=0.9,
        )
    assert response.status == "completed"
    sent = simulator.requests()[-1]["json"]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is in this picture?"},
        {"role": "assistant", "content": "A cat."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And this one?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                },
            ],
        },
    ]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {k: v for k, v in WEATHER.items() if k != "type"},
        }
    ]
    assert sent["tool_choice"] == "auto"
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema},
    }
    assert sent["max_completion_tokens"] == 300 and sent["top_p"] == 0.9
    assert sent["model"] == "gpt-4o-mini"


def test_function_call_round_trip(gateway: Gateway, simulator: Simulator) -> None:
    _, key = account(gateway, "tools")
    with sdk(gateway, key) as client:
        first = client.responses.create(
            model=MODEL,
            input="What is the weather in Paris?",
            tools=[WEATHER],
            tool_choice="required",
        )
        [call] = [item for item in first.output if item.type == "function_call"]
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
        assert call.call_id and call.status == "completed"
        second = client.responses.create(
            model=MODEL,
            input=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                },
                {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
            ],
            tools=[WEATHER],
        )
    assert second.output_text
    sent = simulator.requests()[-1]["json"]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": call.arguments},
            }
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 21 C"}


def test_stream_events_in_order_and_the_completed_usage_is_the_charge(gateway: Gateway) -> None:
    _, key = account(gateway, "stream")
    before = balance(gateway, key)
    events = stream_events(gateway, key, {"model": MODEL, "input": "Tell me about lighthouses."})
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 3
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert events[-4]["text"] == text and "lighthouses" in text
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == text
    assert completed["id"] == events[0]["response"]["id"]
    charged = Decimal(str(completed["usage"]["cost"]))
    assert charged > 0 and before - balance(gateway, key) == charged


def test_stream_through_the_sdk_and_its_function_call_arguments(gateway: Gateway) -> None:
    _, key = account(gateway, "sdkstream")
    with (
        sdk(gateway, key) as client,
        client.responses.stream(
            model=MODEL, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required"
        ) as stream,
    ):
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo"}
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert cost(final.usage) > 0
    events = stream_events(
        gateway, key, {"model": MODEL, "input": "x", "tools": [WEATHER], "tool_choice": "required"}
    )
    arguments = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    assert json.loads(arguments) == {"city": "x"}


def test_json_schema_output_is_parsed_by_the_sdk(gateway: Gateway, simulator: Simulator) -> None:
    """The simulator answers text, not JSON: the SDK's parse helper still sends the schema."""
    _, key = account(gateway, "json")
    with sdk(gateway, key) as client:
        response = client.responses.create(
            model=MODEL,
            input="Reply in JSON",
            text={"format": {"type": "json_object"}},
        )
    assert response.text.format.type == "json_object"
    assert simulator.requests()[-1]["json"]["response_format"] == {"type": "json_object"}


def test_stored_response_is_retrieved_by_its_owner_only_and_continues(
    gateway: Gateway, simulator: Simulator
) -> None:
    _, key = account(gateway, "store")
    _, other = account(gateway, "other")
    with sdk(gateway, key) as client:
        first = client.responses.create(model=MODEL, input="My name is Ada.")
        again = client.responses.retrieve(first.id)
        assert again.id == first.id and again.output_text == first.output_text
        assert cost(again.usage) == cost(first.usage)
        follow = client.responses.create(
            model=MODEL, input="What is my name?", previous_response_id=first.id
        )
        assert follow.previous_response_id == first.id
        sent = simulator.requests()[-1]["json"]["messages"]
        assert sent == [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What is my name?"},
        ]
        unstored = client.responses.create(model=MODEL, input="Forget me.", store=False)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(unstored.id)
    with sdk(gateway, other) as client:
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.retrieve(first.id)
        assert info.value.body["code"] == "not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            client.responses.create(model=MODEL, input="Hi", previous_response_id=first.id)
        assert bad.value.body["param"] == "previous_response_id"


def test_a_stored_response_is_deleted_by_its_owner_only(gateway: Gateway) -> None:
    _, key = account(gateway, "delete")
    _, other = account(gateway, "intruder")
    with sdk(gateway, key) as client:
        first = client.responses.create(model=MODEL, input="Keep this briefly.")
    with sdk(gateway, other) as client:  # another account's id is as absent as an unknown one
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.delete(first.id)
        assert info.value.body["code"] == "not_found"
    deleted = httpx.delete(
        f"{gateway.url}/v1/responses/{first.id}", headers={"authorization": f"Bearer {key}"}
    )
    assert deleted.status_code == 200
    assert deleted.json() == {"id": first.id, "object": "response", "deleted": True}
    with sdk(gateway, key) as client:
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(first.id)  # once only
        with pytest.raises(openai.BadRequestError) as bad:
            client.responses.create(model=MODEL, input="Hi", previous_response_id=first.id)
        assert bad.value.body["param"] == "previous_response_id"
    assert balance(gateway, key) == Decimal(5) - cost(first.usage)  # deleting is free


def test_a_streamed_response_is_stored_too(gateway: Gateway) -> None:
    _, key = account(gateway, "storestream")
    events = stream_events(gateway, key, {"model": MODEL, "input": "Hello"})
    completed = events[-1]["response"]
    stored = httpx.get(
        f"{gateway.url}/v1/responses/{completed['id']}",
        headers={"authorization": f"Bearer {key}"},
    )
    assert stored.status_code == 200 and stored.json() == json.loads(json.dumps(completed))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"input": [{"type": "input_file", "file_id": "f"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0]"),
    ],
)
def test_unsupported_features_are_a_clear_400_that_costs_nothing(
    gateway: Gateway, simulator: Simulator, body: dict[str, Any], param: str
) -> None:
    _, key = account(gateway, "unsupported")
    before, seen = balance(gateway, key), simulator.received()
    with sdk(gateway, key) as client, pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**{"model": MODEL, "input": "Hi", **body})
    assert info.value.body["param"] == param and "not supported" in info.value.message
    assert simulator.received() == seen and balance(gateway, key) == before


def test_a_model_of_another_modality_is_a_clear_400(gateway: Gateway) -> None:
    _, key = account(gateway, "modality")
    with sdk(gateway, key) as client, pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="openai/tts-1", input="Hi")
    assert info.value.body["code"] == "wrong_modality"
    assert "/v1/responses" in info.value.message and "/v1/audio/speech" in info.value.message


def test_upstream_failure_is_free_before_and_after_the_first_byte(
    gateway: Gateway, simulator: Simulator
) -> None:
    _, key = account(gateway, "fail")
    before = balance(gateway, key)
    simulator.knobs(fail=[{"kind": "error", "status": 500}])
    with sdk(gateway, key) as client, pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model=MODEL, input="Hi")
    assert info.value.status_code == 502
    simulator.knobs(fail=[{"kind": "cut_stream"}])
    events = stream_events(gateway, key, {"model": MODEL, "input": "Tell me a story"})
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert events[-2]["code"] == "upstream_error"
    assert balance(gateway, key) == before


def test_refused_by_policy_exactly_like_chat(gateway: Gateway, simulator: Simulator) -> None:
    account_id, key = account(gateway, "policy")
    before, seen = balance(gateway, key), simulator.received()
    with sdk(gateway, key) as client, pytest.raises(openai.PermissionDeniedError) as info:
        client.responses.create(model=MODEL, input="Write me a working ransomware in Python")
    assert info.value.body["code"] == "content_policy_violation"
    assert info.value.body["param"] == "malware"
    assert simulator.received() == seen and balance(gateway, key) == before
    rows = gateway.db.execute(
        "SELECT category FROM policy_violations WHERE account_id = ?", [account_id]
    ).fetchall()
    assert rows == [("malware",)]


def test_idempotent_replay_is_charged_once(gateway: Gateway, simulator: Simulator) -> None:
    _, key = account(gateway, "idem")
    before = balance(gateway, key)
    headers = {"authorization": f"Bearer {key}", "idempotency-key": secrets.token_hex(8)}
    body = {"model": MODEL, "input": "Once only"}
    first = httpx.post(f"{gateway.url}/v1/responses", json=body, headers=headers)
    seen = simulator.received()
    second = httpx.post(f"{gateway.url}/v1/responses", json=body, headers=headers)
    assert second.headers["idempotent-replayed"] == "true" and second.json() == first.json()
    assert simulator.received() == seen
    assert before - balance(gateway, key) == Decimal(str(first.json()["usage"]["cost"]))
