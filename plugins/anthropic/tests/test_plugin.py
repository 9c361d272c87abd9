"""The plugin's hooks, without a server: requests mapped to Messages, Messages and stream
events mapped back, Anthropic's errors mapped to the gateway's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import apimodels_anthropic as plugin
from apimodels import (
    ChatRequest,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StreamEvent,
    Upstream,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
    Usage,
)
from apimodels.catalog import load_catalog

CATALOG = load_catalog(Path(__file__).parents[3] / "registry.toml")
MODEL = CATALOG.models["anthropic/claude-sonnet-5-5"]
UPSTREAM = Upstream("anthropic", "https://api.anthropic.com/v1", "sk-ant-test-0123456789abcdef")
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def sent(**body: Any) -> dict[str, Any]:
    request = ChatRequest.model_validate({"model": MODEL.id, **body})
    built = plugin.build_request(model=MODEL, request=request, upstream=UPSTREAM)
    assert built is not None
    assert str(built.url) == "https://api.anthropic.com/v1/messages"
    assert built.headers["x-api-key"] == UPSTREAM.api_key
    assert built.headers["anthropic-version"] == plugin.API_VERSION
    return json.loads(built.content)


def test_system_messages_become_the_system_blocks_and_max_tokens_is_always_sent() -> None:
    body = sent(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "user", "content": "Hello"},
        ],
        temperature=0.5,
        stop="END",
        user="u-42",
    )
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use French."},
    ]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    assert body["model"] == "claude-sonnet-5-5"
    assert body["max_tokens"] == MODEL.max_output_tokens  # Anthropic requires it
    assert body["temperature"] == 0.5 and body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-42"}
    assert "stream" not in body
    assert (
        sent(messages=[{"role": "user", "content": "x"}], max_completion_tokens=7)["max_tokens"]
        == 7
    )
    assert sent(messages=[{"role": "user", "content": "x"}], max_tokens=9)["max_tokens"] == 9


def test_images_by_data_url_and_by_url() -> None:
    body = sent(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    blocks = body["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    assert blocks[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
    }
    for url in ("data:image/bmp;base64,AAAA", "data:image/png,raw", "ftp://x/y.png"):
        with pytest.raises(InvalidRequest) as info:
            sent(
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ]
            )
        assert info.value.param == "messages[0].content[0]"


def test_a_tool_round_trip_maps_to_tool_use_and_tool_result_blocks() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    body = sent(
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "20 C"},
            {"role": "user", "content": "Which is warmer?"},
        ],
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assistant, results = body["messages"][1], body["messages"][2]
    assert assistant["content"][0] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    # Both results and the next user text share one user turn, as Anthropic wants.
    assert [b["type"] for b in results["content"]] == ["tool_result", "tool_result", "text"]
    assert results["content"][1] == {
        "type": "tool_result",
        "tool_use_id": "toolu_2",
        "content": [{"type": "text", "text": "20 C"}],
    }
    named = sent(
        messages=[{"role": "user", "content": "x"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert named["tool_choice"] == {"type": "tool", "name": "get_weather"}


def test_cache_control_passes_through_and_only_the_five_minute_cache_is_offered() -> None:
    part = {"type": "text", "text": "A long manual.", "cache_control": {"type": "ephemeral"}}
    body = sent(messages=[{"role": "system", "content": [part]}, {"role": "user", "content": "Q"}])
    assert body["system"] == [part]
    top = sent(messages=[{"role": "user", "content": "Q"}], cache_control={"type": "ephemeral"})
    assert top["cache_control"] == {"type": "ephemeral"}
    hour = {**part, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    with pytest.raises(InvalidRequest, match="5-minute"):
        sent(messages=[{"role": "user", "content": [hour]}])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ],
)
def test_what_would_change_the_answer_shape_is_refused(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        sent(messages=[{"role": "user", "content": "x"}], **extra)
    assert info.value.param == param and info.value.status == 400


def test_the_estimate_bounds_the_prompt_and_holds_cache_writes_only_when_asked() -> None:
    plain = ChatRequest.model_validate(
        {
            "model": MODEL.id,
            "messages": [{"role": "user", "content": "Hello there"}],
            "max_tokens": 10,
        }
    )
    usage = plugin.estimate_usage(model=MODEL, request=plain)
    assert usage == Usage(input_tokens=len("Hello there") + 8, output_tokens=10)
    cached = ChatRequest.model_validate(
        {
            "model": MODEL.id,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}
                    ],
                }
            ],
        }
    )
    held = plugin.estimate_usage(model=MODEL, request=cached)
    assert held.cache_write_tokens == held.input_tokens == 2 + 8
    assert held.output_tokens == MODEL.max_output_tokens


def message(**extra: Any) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-5-5",
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 2000,
            "cache_read_input_tokens": 3000,
            "output_tokens": 5,
        },
    } | extra


def parse(body: dict[str, Any]) -> Any:
    request = ChatRequest.model_validate(
        {"model": MODEL.id, "messages": [{"role": "user", "content": "x"}]}
    )
    response = httpx.Response(200, json=body)
    return plugin.parse_response(model=MODEL, request=request, response=response)


def test_a_message_becomes_a_chat_completion_with_every_input_token_counted() -> None:
    out = parse(message())
    choice = out.body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hi!", "refusal": None}
    assert choice["finish_reason"] == "stop" and out.body["model"] == MODEL.id
    # Anthropic's input_tokens leave the cache out; prompt_tokens counts all of it.
    assert out.body["usage"] == {
        "prompt_tokens": 5010,
        "completion_tokens": 5,
        "total_tokens": 5015,
        "prompt_tokens_details": {"cached_tokens": 3000, "cache_write_tokens": 2000},
    }
    assert out.usage == Usage(
        input_tokens=5010, cached_input_tokens=3000, cache_write_tokens=2000, output_tokens=5
    )


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("stop_sequence", "stop"),
    ],
)
def test_stop_reasons_become_finish_reasons(stop: str, finish: str) -> None:
    assert parse(message(stop_reason=stop)).body["choices"][0]["finish_reason"] == finish


def test_tool_use_blocks_become_tool_calls() -> None:
    blocks = [
        {"type": "thinking", "thinking": "hidden", "signature": "s"},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    reply = parse(message(content=blocks, stop_reason="tool_use")).body["choices"][0]["message"]
    assert reply["content"] is None
    assert reply["tool_calls"] == [
        {
            "id": "toolu_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]


def events(
    stream: list[tuple[str, dict[str, Any]]], include_usage: bool = True
) -> list[StreamEvent | None]:
    request = ChatRequest.model_validate(
        {
            "model": MODEL.id,
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "stream_options": {"include_usage": include_usage},
        }
    )
    state: dict[str, Any] = {}
    return [
        plugin.parse_stream_event(
            model=MODEL, request=request, data=json.dumps(d), event=e, state=state
        )
        for e, d in stream
    ]


START = (
    "message_start",
    {"type": "message_start", "message": message(content=[], stop_reason=None)},
)
TEXT = [
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
]
END = [
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 42},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def test_a_stream_of_named_events_becomes_chat_chunks_ending_at_message_stop() -> None:
    out = events([START, *TEXT, *END])
    assert out[0] is None  # nothing before the first content: an early error stays an HTTP error
    first = out[1 + 2]
    assert first is not None and first.chunk["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "Hel",
    }
    assert first.chunk["id"] == "msg_1" and first.chunk["object"] == "chat.completion.chunk"
    assert out[4].chunk["choices"][0]["delta"] == {"content": "lo"}
    finish = out[6]
    assert finish.chunk["choices"][0]["finish_reason"] == "stop" and finish.usage is None
    last = out[7]
    assert last.done and last.chunk["choices"] == []
    # Input and cache counts from message_start, the cumulative output from message_delta.
    assert last.usage == Usage(
        input_tokens=5010, cached_input_tokens=3000, cache_write_tokens=2000, output_tokens=42
    )
    assert last.chunk["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 3000,
        "cache_write_tokens": 2000,
    }
    unasked = events([START, *TEXT, *END], include_usage=False)[-1]
    assert unasked.chunk is None and unasked.usage is not None and unasked.done  # billing only


def test_streamed_tool_calls_count_their_own_index() -> None:
    tool = [
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_3", "name": "f", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"a": '},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "1}"},
            },
        ),
    ]
    out = events([START, *TEXT, *tool])
    assert out[-3].chunk["choices"][0]["delta"]["tool_calls"] == [
        {
            "index": 0,
            "id": "toolu_3",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        }
    ]
    pieces = [
        e.chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for e in out[-2:]
    ]
    assert "".join(pieces) == '{"a": 1}'


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("overloaded_error", UpstreamOverloaded),
        ("rate_limit_error", RateLimited),
        ("api_error", UpstreamError),
        ("invalid_request_error", InvalidRequest),
        ("something_new", UpstreamError),
    ],
)
def test_an_error_event_raises_its_error(kind: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        events([START, ("error", {"type": "error", "error": {"type": kind, "message": "m"}})])


@pytest.mark.parametrize(
    ("status", "kind", "error", "client_status"),
    [
        (400, "invalid_request_error", InvalidRequest, 400),
        (401, "authentication_error", UpstreamError, 502),
        (403, "permission_error", UpstreamError, 502),
        (402, "billing_error", UpstreamError, 502),
        (404, "not_found_error", NotFound, 404),
        (413, "request_too_large", PayloadTooLarge, 413),
        (429, "rate_limit_error", RateLimited, 429),
        (500, "api_error", UpstreamError, 502),
        (504, "timeout_error", UpstreamTimeout, 504),
        (529, "overloaded_error", UpstreamOverloaded, 503),
    ],
)
def test_error_answers_map_by_anthropic_type(
    status: int, kind: str, error: type[Exception], client_status: int
) -> None:
    body = {
        "type": "error",
        "error": {"type": kind, "message": "upstream words"},
        "request_id": "req_1",
    }
    response = httpx.Response(status, json=body, headers={"retry-after": "7"})
    mapped = plugin.parse_error(model=MODEL, response=response)
    assert isinstance(mapped, error) and mapped.status == client_status
    if client_status in (429, 503):
        assert mapped.headers == {"retry-after": "7"} and mapped.retriable
    # Only the client's own mistake carries Anthropic's words.
    assert ("upstream words" in mapped.message) == (kind == "invalid_request_error")


def test_a_bare_529_is_overloaded_and_other_shapes_are_left_to_the_core() -> None:
    assert isinstance(
        plugin.parse_error(model=MODEL, response=httpx.Response(529, text="<html>")),
        UpstreamOverloaded,
    )
    assert (
        plugin.parse_error(model=MODEL, response=httpx.Response(400, json={"detail": "x"})) is None
    )
