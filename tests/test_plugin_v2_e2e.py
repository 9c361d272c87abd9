"""A provider unlike OpenAI (tests/acme_plugin.py: NDJSON streams with no ``[DONE]``,
errors in HTTP 200 bodies and inside streams, a per-stream state) served end to end
through the official OpenAI SDK, and through the conformance kit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

import acme_plugin
import httpx
import openai
import pytest

from apimodels.plugins import pm
from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.testing import serve
from apimodels.testing.kit import ProviderConformance
from support import Gateway

REGISTRY = Path(__file__).parent / "data" / "acme_registry.toml"
MODEL = "acme/chat-1"


@pytest.fixture(scope="module")
def acme() -> Iterator[None]:
    pm.register(acme_plugin, name="acme-test")
    try:
        yield
    finally:
        pm.unregister(name="acme-test")


@pytest.fixture(scope="module")
def gateway(acme: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("acme")
    server = assemble(REGISTRY, tmp / "gateway.db", sandbox=True, environ={})
    account = create_account(server.db, "acme@example.com")
    _, key = create_key(server.db, account["id"])
    server.ledger.post(account["id"], 10_000_000, kind="grant", reason="t", actor="tests")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0)


def secret(gateway: Gateway) -> str:
    key = gateway.server.gateway.providers["acme"].upstream.api_key
    assert key
    return key


def balance(gateway: Gateway) -> int:
    return gateway.ledger.balance(gateway.account_id).balance_micros


def cost(tokens_in: int, tokens_out: int) -> int:
    """Micro-USD at the catalog's $1000 / $3000 per million tokens."""
    return tokens_in * 1000 + tokens_out * 3000


def test_a_call_is_mapped_both_ways_and_charged_exactly(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    before = balance(gateway)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "say hi please"}]
    )
    assert answer.choices[0].message.content == "Hello from acme."
    assert answer.usage is not None and answer.usage.prompt_tokens == 3
    assert before - balance(gateway) == cost(3, 4)


def test_an_ndjson_stream_ends_at_the_plugins_terminal_event(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    before = balance(gateway)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream it"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from acme."
    assert {c.id for c in chunks} == {"gen-42"}  # the start line's id, kept in the state
    usage = chunks[-1].usage
    assert usage is not None and usage.model_extra is not None
    assert Decimal(str(usage.model_extra["cost"])) == Decimal(cost(2, 4)) / 10**6
    assert before - balance(gateway) == cost(2, 4)


@pytest.mark.parametrize(
    ("prompt", "status", "code"),
    [
        ("#overloaded now", 503, "upstream_overloaded"),
        ("#quota now", 429, "rate_limit_exceeded"),
        ("#bad now", 400, "upstream_rejected"),
    ],
)
def test_an_error_in_a_200_body_is_an_error_free_and_scrubbed(
    gateway: Gateway, prompt: str, status: int, code: str
) -> None:
    before = balance(gateway)
    for stream in (False, True):  # the same error, before a stream's first chunk
        r = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {gateway.key}"},
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": prompt}],
                "stream": stream,
            },
        )
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
        assert secret(gateway) not in r.text
    assert balance(gateway) == before


def test_an_error_before_the_first_chunk_is_a_plain_http_error(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    before = balance(gateway)
    with pytest.raises(openai.InternalServerError) as caught:  # 503: the SDK's class for 5xx
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "#first"}], stream=True
        )
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "2"
    assert balance(gateway) == before


def test_an_error_inside_a_stream_ends_it_with_an_error_event_free(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    before = balance(gateway)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "#midstream"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["Hello", " from"]
    assert "overloaded" in caught.value.message and secret(gateway) not in caught.value.message
    assert balance(gateway) == before


def test_a_stream_cut_before_its_terminal_event_is_free(gateway: Gateway) -> None:
    before = balance(gateway)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "#cut"}], "stream": True}
    headers = {"authorization": f"Bearer {gateway.key}"}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers
    ) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert (
        json.loads(events[-1])["error"]["message"] == "acme ended the stream before it was complete"
    )
    assert balance(gateway) == before


@pytest.mark.usefixtures("acme")
class TestAcmeConformance(ProviderConformance):
    provider = "acme"
    registry = REGISTRY
    errors_in_2xx: ClassVar[list[bytes]] = [
        b'{"error": {"kind": "overloaded", "message": "busy, key {key}"}}'
    ]
    failing_stream = (
        b'{"type": "start", "id": "g"}\n{"type": "token", "text": "Hi"}\n'
        b'{"type": "error", "kind": "boom", "message": "the key {key} broke"}\n'
    )
    failing_stream_type = "application/x-ndjson"
