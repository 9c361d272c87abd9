"""Anthropic's official Python SDK (``anthropic``) against the simulator, over real HTTP: if
the SDK sends, streams (its event accumulator), calls tools, caches prompts and reads
errors here, the simulator speaks the Messages API as its users meet it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
MANUAL = "The manual of the lighthouse, chapter after chapter. " * 100  # 1,325 tokens


@pytest.fixture
def client(sim: httpx.Client, origin: str, key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key=key, base_url=origin, max_retries=0) as sdk:
        yield sdk


def test_create_answers_with_usage(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="claude-sonnet-5-5",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Name three colours."}],
    )
    assert message.stop_reason == "end_turn" and message.role == "assistant"
    assert "Name three colours" in message.content[0].text
    assert message.usage.input_tokens == 3 + 3 + 5  # system, the turn's framing, the text
    assert message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens == 0


def test_max_tokens_and_stop_sequences_end_the_reply(client: anthropic.Anthropic) -> None:
    short = client.messages.create(
        model="claude-haiku-5-5", max_tokens=2, messages=[{"role": "user", "content": "Hi"}]
    )
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2
    stopped = client.messages.create(
        model="claude-haiku-5-5",
        max_tokens=100,
        stop_sequences=["reply"],
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "reply"
    assert stopped.content[0].text == "This is simulated "


def test_the_stream_accumulates_into_the_same_message(client: anthropic.Anthropic) -> None:
    body: dict[str, Any] = {
        "model": "claude-opus-5-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Tell me about lighthouses."}],
    }
    whole = client.messages.create(**body)
    with client.messages.stream(**body) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == "end_turn"


def test_a_tool_round_trip(client: anthropic.Anthropic) -> None:
    asked = [{"role": "user", "content": "Use get_weather for Paris, please."}]
    first = client.messages.create(
        model="claude-sonnet-5-5", max_tokens=200, tools=[TOOL], messages=asked
    )
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    with client.messages.stream(
        model="claude-sonnet-5-5", max_tokens=200, tools=[TOOL], messages=asked
    ) as stream:
        streamed = stream.get_final_message().content[0]
    assert streamed.type == "tool_use" and streamed.input == {"city": "Paris"}
    answered = [
        *asked,
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C, sunny"}],
        },
    ]
    second = client.messages.create(
        model="claude-sonnet-5-5", max_tokens=200, tools=[TOOL], messages=answered
    )
    assert second.stop_reason == "end_turn" and "18 C, sunny" in second.content[0].text
    with pytest.raises(anthropic.BadRequestError, match="tool_result"):  # as Anthropic checks
        client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=200,
            tools=[TOOL],
            messages=[*answered[:2], {"role": "user", "content": "What did it say?"}],
        )


def test_prompt_caching_writes_then_reads(client: anthropic.Anthropic) -> None:
    system = [
        {"type": "text", "text": MANUAL + "Edition 1.", "cache_control": {"type": "ephemeral"}}
    ]
    body: dict[str, Any] = {"model": "claude-sonnet-5-5", "max_tokens": 50, "system": system}
    first = client.messages.create(**body, messages=[{"role": "user", "content": "Q1"}])
    prefix = first.usage.cache_creation_input_tokens
    assert prefix == (len(MANUAL) + len("Edition 1.") + 3) // 4  # the system block, cached
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.input_tokens == 3 + 1  # after the breakpoint: the turn
    second = client.messages.create(**body, messages=[{"role": "user", "content": "Q2"}])
    assert second.usage.cache_read_input_tokens == prefix
    assert second.usage.cache_creation_input_tokens == 0
    counted = client.messages.count_tokens(
        model="claude-sonnet-5-5", system=system, messages=[{"role": "user", "content": "Q2"}]
    )
    assert counted.input_tokens == prefix + 4
    short = client.messages.create(
        model="claude-sonnet-5-5",
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "tiny", "cache_control": {"type": "ephemeral"}}
                ],
            }
        ],
    )
    assert short.usage.cache_creation_input_tokens == 0  # under the minimum: not cached


def test_images_are_read(client: anthropic.Anthropic) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "text", "text": "What?"},
    ]
    message = client.messages.create(
        model="claude-haiku-5-5", max_tokens=50, messages=[{"role": "user", "content": content}]
    )
    assert message.usage.input_tokens == 3 + 1 + 1600 + 2  # a 1x1 PNG, a URL image, the text
    bad = [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": png}}]
    with pytest.raises(anthropic.BadRequestError, match="media_type"):
        client.messages.create(
            model="claude-haiku-5-5", max_tokens=50, messages=[{"role": "user", "content": bad}]
        )


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (529, anthropic.OverloadedError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (404, anthropic.NotFoundError),
    ],
)
def test_errors_reach_the_sdk_as_their_classes(
    client: anthropic.Anthropic, sim: httpx.Client, status: int, error: type[Exception]
) -> None:
    sim.post("/_sim/knobs", json={"fail": [{"kind": "error", "status": status}]})
    with pytest.raises(error) as info:
        client.messages.create(
            model="claude-sonnet-5-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert info.value.response.headers["request-id"].startswith("req_")  # type: ignore[attr-defined]


def test_a_wrong_key_and_an_error_event_mid_stream(
    client: anthropic.Anthropic, sim: httpx.Client, origin: str
) -> None:
    with (
        anthropic.Anthropic(api_key="sk-ant-wrong", base_url=origin, max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError),
    ):
        wrong.messages.create(
            model="claude-sonnet-5-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    sim.post("/_sim/knobs", json={"fail": [{"kind": "stream_error", "after": 3}]})
    received = ""
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        client.messages.stream(
            model="claude-sonnet-5-5", max_tokens=100, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        for text in stream.text_stream:
            received += text
    assert received.startswith("This is simulated")
