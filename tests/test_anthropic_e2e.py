"""Claude through the gateway, end to end: the official OpenAI SDK -> apimodels (uvicorn,
127.0.0.1) -> the Anthropic plugin -> the Anthropic simulator (uvicorn, 127.0.0.1). Every
call crosses two real sockets; the simulator speaks Anthropic's Messages API, named stream
events, prompt cache and errors included."""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.testing import serve
from apimodels_anthropic.simulator import create_app
from support import ANTHROPIC_KEY, SIM_KEY, Gateway, Simulator, registry_for

MODEL = "anthropic/claude-sonnet-5-5"
#: Claude Sonnet 5.5's catalog prices, USD per million tokens (registry.toml).
INPUT, CACHE_READ, CACHE_WRITE, OUTPUT = (
    Decimal("2.00"),
    Decimal("0.10"),
    Decimal("2.50"),
    Decimal("10.00"),
)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def micros(usd: Decimal) -> int:
    return int((usd * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.fixture(scope="module")
def claude() -> Iterator[Simulator]:
    with serve(create_app(api_key=ANTHROPIC_KEY)) as url:
        yield Simulator(url)


@pytest.fixture(autouse=True)
def _rest(claude: Simulator) -> Iterator[None]:
    claude.reset()
    yield
    claude.reset()


@pytest.fixture(scope="module")
def gateway(
    simulator: Simulator, claude: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("claude")
    registry = registry_for(simulator.url, tmp, anthropic=claude.url)
    environ = {"OPENAI_API_KEY": SIM_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}
    server = assemble(registry, tmp / "gateway.db", environ=environ)
    account = create_account(server.db, "claude@example.com")
    _, key = create_key(server.db, account["id"])
    server.ledger.post(account["id"], 10**9, kind="grant", reason="e2e", actor="tests")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=20
    ) as c:
        yield c


def row(gateway: Gateway, request_id: str) -> dict[str, Any]:
    [found] = gateway.db.query("SELECT * FROM usage WHERE request_id = ?", [request_id])
    return found


def test_chat_is_billed_at_the_catalog_price(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "Name three colours."},
        ],
        max_tokens=200,
    )
    completion = raw.parse()
    assert completion.model == MODEL and completion.choices[0].finish_reason == "stop"
    assert "Name three colours" in completion.choices[0].message.content
    usage = completion.usage
    assert usage.prompt_tokens == 5 + 3 + 5  # the system text, the turn, the user text
    exact = (usage.prompt_tokens * INPUT + usage.completion_tokens * OUTPUT) / 1_000_000
    assert Decimal(raw.headers["x-apimodels-cost"]) * 1_000_000 == micros(exact)
    assert Decimal(str(usage.model_extra["cost"])) == Decimal(raw.headers["x-apimodels-cost"])
    charged = row(gateway, raw.headers["x-request-id"])
    assert charged["cost_micros"] == micros(exact) and charged["status"] == "succeeded"
    assert charged["hold_micros"] >= charged["cost_micros"]
    # The bare name is an alias of the same route and price.
    alias = client.chat.completions.create(
        model="claude-sonnet-5-5", messages=[{"role": "user", "content": "Name three colours."}]
    )
    assert alias.model == MODEL


def test_the_stream_carries_usage_and_its_cost(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about lighthouses."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("This is simulated reply") and len(chunks) > 5
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and all(c.usage is None for c in chunks[:-1])
    usage = last.usage
    assert usage.completion_tokens == math.ceil(len(text) / 4)
    exact = (usage.prompt_tokens * INPUT + usage.completion_tokens * OUTPUT) / 1_000_000
    assert Decimal(str(usage.model_extra["cost"])) * 1_000_000 == micros(exact)
    charged = row(gateway, raw.headers["x-request-id"])
    assert (charged["cost_micros"], charged["status"]) == (micros(exact), "succeeded")
    assert charged["output_tokens"] == usage.completion_tokens


def test_a_tool_round_trip(client: openai.OpenAI, claude: Simulator) -> None:
    asked = [{"role": "user", "content": "Use get_weather for Paris."}]
    first = client.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == '{"city": "Paris"}'
    streamed = list(
        client.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER], stream=True)
    )
    pieces = [c.choices[0].delta.tool_calls for c in streamed if c.choices]
    arguments = "".join(p[0].function.arguments or "" for p in pieces if p)
    assert arguments == '{"city": "Paris"}' and pieces[0][0].id.startswith("toolu_")
    answered = client.chat.completions.create(
        model=MODEL,
        tools=[WEATHER],
        messages=[
            *asked,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
        ],
    )
    assert "18 C and sunny" in answered.choices[0].message.content
    sent = claude.requests()[-1]["json"]["messages"]
    assert sent[1]["content"][0]["type"] == "tool_use"
    assert sent[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": [{"type": "text", "text": "18 C and sunny"}],
    }


def test_images_by_data_url_and_by_url(client: openai.OpenAI, claude: Simulator) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            }
        ],
    )
    # The turn, the text, a 1x1 PNG (one token), a URL image (the most an image counts).
    assert completion.usage.prompt_tokens == 3 + 2 + 1 + 1600
    blocks = claude.requests()[-1]["json"]["messages"][0]["content"]
    assert [b["type"] for b in blocks] == ["text", "image", "image"]
    assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}
                    ],
                }
            ],
        )
    assert info.value.code == "invalid_image"


def test_prompt_cache_writes_and_reads_are_priced_exactly(
    client: openai.OpenAI, gateway: Gateway
) -> None:
    manual = "Chapter one of the keeper's manual, page after page. " * 120
    system = {"type": "text", "text": manual, "cache_control": {"type": "ephemeral"}}
    messages: list[Any] = [
        {"role": "system", "content": [system]},
        {"role": "user", "content": "Q"},
    ]
    prefix = math.ceil(len(manual) / 4)  # the simulator's tokens of the cached system block
    seen = []
    for expect_write, expect_read in ((prefix, 0), (0, prefix)):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=100
        )
        usage = raw.parse().usage
        details = raw.http_response.json()["usage"]["prompt_tokens_details"]
        assert details == {"cached_tokens": expect_read, "cache_write_tokens": expect_write}
        fresh = usage.prompt_tokens - expect_write - expect_read
        assert fresh == 3 + 1  # the user turn: framing and "Q"
        # By hand: fresh input, cache writes, cache reads and output, each at its price.
        exact = (
            fresh * INPUT
            + expect_write * CACHE_WRITE
            + expect_read * CACHE_READ
            + usage.completion_tokens * OUTPUT
        ) / 1_000_000
        assert Decimal(raw.headers["x-apimodels-cost"]) * 1_000_000 == micros(exact)
        charged = row(gateway, raw.headers["x-request-id"])
        assert charged["cost_micros"] == micros(exact)
        assert (charged["cache_write_tokens"], charged["cached_input_tokens"]) == (
            expect_write,
            expect_read,
        )
        assert charged["hold_micros"] >= charged["cost_micros"]  # the hold covers a write
        seen.append(charged["cost_micros"])
    assert seen[1] < seen[0]  # reading the cache is cheaper than writing it
    with pytest.raises(openai.BadRequestError, match="5-minute"):
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "system",
                    "content": [system | {"cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                },
                {"role": "user", "content": "Q"},
            ],
        )


@pytest.mark.parametrize(
    ("status", "client_status", "code"),
    [
        (400, 400, "upstream_rejected"),
        (401, 502, "upstream_auth_error"),
        (403, 502, "upstream_auth_error"),
        (404, 404, "model_not_found"),
        (413, 413, "request_too_large"),
        (429, 429, "rate_limit_exceeded"),
        (500, 502, "upstream_error"),
        (529, 503, "upstream_overloaded"),
    ],
)
def test_upstream_errors_map_honestly_and_cost_nothing(
    gateway: Gateway, claude: Simulator, status: int, client_status: int, code: str
) -> None:
    claude.knobs(fail=[{"kind": "error", "status": status}])
    headers = {"authorization": f"Bearer {gateway.key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=20)
    assert r.status_code == client_status and r.json()["error"]["code"] == code
    assert ANTHROPIC_KEY not in r.text and ANTHROPIC_KEY[-8:] not in r.text
    if client_status in (429, 503):
        assert r.headers["retry-after"] == "1"  # Anthropic's, passed on
    failed = row(gateway, r.headers["x-request-id"])
    assert failed["status"] == "failed" and failed["cost_micros"] == 0
    assert failed["hold_state"] == "released"


def test_an_error_event_mid_stream_ends_the_stream_free(
    gateway: Gateway, claude: Simulator
) -> None:
    claude.knobs(fail=[{"kind": "stream_error", "type": "overloaded_error", "after": 3}])
    headers = {"authorization": f"Bearer {gateway.key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "A story"}], "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=20
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
        request_id = r.headers["x-request-id"]
    assert len(lines) == 1 + 3  # the three deltas Anthropic sent (the role rides the first)
    assert '"upstream_overloaded"' in lines[-1] and "[DONE]" not in lines[-1]
    failed = row(gateway, request_id)
    assert failed["status"] == "failed" and failed["cost_micros"] == 0


def test_an_error_event_before_the_first_chunk_is_a_plain_http_error(
    client: openai.OpenAI, gateway: Gateway, claude: Simulator
) -> None:
    claude.knobs(fail=[{"kind": "stream_error", "type": "overloaded_error", "after": 0}])
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
    response = info.value.response
    assert response.status_code == 503 and info.value.code == "upstream_overloaded"
    failed = row(gateway, response.headers["x-request-id"])
    assert failed["status"] == "failed" and failed["cost_micros"] == 0


def test_a_claude_client_through_the_messages_api_to_claude(gateway: Gateway) -> None:
    """Both sides Anthropic-shaped: the anthropic SDK calls /v1/messages, the gateway maps
    to Chat Completions and back to Anthropic's Messages upstream, billed at the catalog."""
    import anthropic

    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=100,
        system="Answer in one line.",
        messages=[{"role": "user", "content": "Name three colours."}],
    )
    message = raw.parse()
    assert message.type == "message" and message.stop_reason == "end_turn"
    assert "Name three colours" in message.content[0].text
    usage = message.usage
    exact = (usage.input_tokens * INPUT + usage.output_tokens * OUTPUT) / 1_000_000
    assert row(gateway, raw.headers["x-request-id"])["cost_micros"] == micros(exact)
    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Stream please."}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("This is simulated reply") and final.usage.output_tokens > 0
