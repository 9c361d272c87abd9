"""The plugin's hooks, sans-I/O: requests built for each quirk, answers read, errors in 2xx
bodies and streams mapped. What it sends is checked against OpenAI's published schemas."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest

import apimodels_openai_compatible as plugin
from apimodels import (
    ChatRequest,
    EmbeddingRequest,
    InvalidRequest,
    RateLimited,
    SpeechRequest,
    Upstream,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from apimodels.catalog import load_catalog
from apimodels.errors import ConfigError
from apimodels.plugins import pm
from apimodels.providers.runtime import build_gateway
from apimodels.testing import OpenAPI
from apimodels_openai_compatible import Settings

SPEC = OpenAPI.load(Path(__file__).parent / "data" / "openai-openapi.chat-embeddings.json")
CATALOG = load_catalog(Path(__file__).with_name("catalog.toml"))
CHAT, EMBED = CATALOG.models["local/llama-3.2-3b"], CATALOG.models["local/nomic-embed-text"]
PLAIN = Upstream("local", "http://127.0.0.1:11434/v1", "sk-local-0123456789abcdef")
STRICT = Settings(
    stream_usage=False,
    max_tokens_field="max_completion_tokens",
    drop_params=("logprobs", "top_logprobs", "encoding_format"),
    extra_body={"provider": {"sort": "price"}},
)


def upstream(
    settings: Settings | None = None, key: str | None = "sk-k-0123456789abcdef"
) -> Upstream:
    return Upstream("compat", "https://compat.example/v1", key, settings)


def chat(**fields: Any) -> ChatRequest:
    messages = [{"role": "user", "content": "héllo"}]
    return ChatRequest.model_validate({"model": CHAT.id, "messages": messages, **fields})


def sent(request: httpx.Request) -> dict[str, Any]:
    body = json.loads(request.content)
    path = request.url.path.removeprefix("/v1")
    # What every compatible server reads; the instance's own fields are no part of it.
    SPEC.validate_request(
        "POST", path, {k: v for k, v in body.items() if k not in STRICT.extra_body}
    )
    return body


def answer(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request("POST", "http://x"))


def test_a_plain_server_gets_the_body_as_sent_with_the_upstream_id() -> None:
    request = plugin.build_request(CHAT, chat(temperature=0.2, seed=7, max_tokens=9), PLAIN)
    assert request.url == "http://127.0.0.1:11434/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {PLAIN.api_key}"
    body = sent(request)
    assert body["model"] == "llama3.2:3b" and body["temperature"] == 0.2 and body["seed"] == 7
    assert body["max_tokens"] == 9 and "stream_options" not in body


def test_the_output_limit_goes_under_the_name_the_server_takes() -> None:
    newer = chat(max_completion_tokens=5, max_tokens=50)  # OpenAI: the newer name wins
    assert sent(plugin.build_request(CHAT, newer, upstream()))["max_tokens"] == 5
    body = sent(plugin.build_request(CHAT, chat(max_tokens=7), upstream(STRICT)))
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body


def test_streams_ask_for_usage_only_where_the_server_takes_it() -> None:
    asked = chat(stream=True, stream_options={"include_usage": False})
    assert sent(plugin.build_request(CHAT, asked, upstream()))["stream_options"] == {
        "include_usage": True
    }
    assert "stream_options" not in sent(plugin.build_request(CHAT, asked, upstream(STRICT)))


def test_refused_fields_are_dropped_and_static_fields_added() -> None:
    request = chat(logprobs=True, top_logprobs=2, provider={"sort": "latency"}, user="u1")
    body = sent(plugin.build_request(CHAT, request, upstream(STRICT)))
    assert "logprobs" not in body and "top_logprobs" not in body and body["user"] == "u1"
    assert body["provider"] == {"sort": "price"}  # the instance's word wins
    embed = EmbeddingRequest(model=EMBED.id, input="x", encoding_format="base64")
    body = sent(plugin.build_request(EMBED, embed, upstream(STRICT)))
    assert body == {"model": "nomic-embed-text", "input": "x", "provider": {"sort": "price"}}


def test_no_authorization_without_a_key_and_no_request_for_other_modalities() -> None:
    request = plugin.build_request(CHAT, chat(), upstream(key=None))
    assert "authorization" not in request.headers
    speech = SpeechRequest(model="x", input="hi", voice="alloy")
    assert plugin.build_request(CHAT, speech, upstream()) is None


def test_settings_refuse_dropping_what_a_request_needs() -> None:
    with pytest.raises(ValueError, match="cannot go without messages, model"):
        Settings(drop_params=("model", "messages", "user"))
    with pytest.raises(ValueError):
        Settings.model_validate({"max_tokens_field": "limit"})
    catalog = CATALOG.model_copy(deep=True)
    catalog.providers["strict"].settings["stream_usage"] = "sometimes"
    with pytest.raises(ConfigError, match=r"(?s)providers\.strict\.settings: .*stream_usage"):
        build_gateway(catalog, pm, environ={})


def test_chat_usage_is_read_with_deepseeks_cache_hits() -> None:
    body = {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 4}}
    output = plugin.parse_response(CHAT, chat(), answer(body))
    assert output.body["model"] == CHAT.id
    assert (output.usage.input_tokens, output.usage.output_tokens) == (30, 4)
    body["usage"] |= {"prompt_cache_hit_tokens": 20, "prompt_cache_miss_tokens": 10}
    assert plugin.parse_response(CHAT, chat(), answer(body)).usage.cached_input_tokens == 20
    assert plugin.parse_response(CHAT, chat(), answer({"choices": []})).usage is None


def vectors(encoded: str) -> tuple[float, ...]:
    raw = base64.b64decode(encoded)
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def test_base64_embeddings_are_encoded_by_the_plugin_when_the_server_sends_floats() -> None:
    floats = {"data": [{"index": 0, "embedding": [0.5, -0.25, 1.0]}], "usage": {"prompt_tokens": 3}}
    request = EmbeddingRequest(model=EMBED.id, input="abc", encoding_format="base64")
    output = plugin.parse_response(EMBED, request, answer(json.loads(json.dumps(floats))))
    assert vectors(output.body["data"][0]["embedding"]) == (0.5, -0.25, 1.0)
    assert output.usage.input_tokens == 3
    passed = {"data": [{"index": 0, "embedding": plugin.base64_embedding([0.5])}]}
    output = plugin.parse_response(EMBED, request, answer(passed))  # the server encoded it
    assert output.body["data"][0]["embedding"] == passed["data"][0]["embedding"]
    as_floats = plugin.parse_response(
        EMBED, EmbeddingRequest(model=EMBED.id, input="abc"), answer(floats)
    )
    assert as_floats.body["data"][0]["embedding"] == [0.5, -0.25, 1.0]


@pytest.mark.parametrize(
    ("error", "kind", "status"),
    [
        ({"code": 429, "message": "slow down"}, RateLimited, 429),
        ({"code": 503, "message": "no provider"}, UpstreamOverloaded, 503),
        ({"code": 408, "message": "timed out"}, UpstreamTimeout, 504),
        ({"code": 400, "message": "bad temperature"}, InvalidRequest, 400),
        ({"code": 413, "message": "too long"}, InvalidRequest, 400),
        ({"code": 502, "message": "model down"}, UpstreamError, 502),
        ({"code": "server_error", "message": "boom"}, UpstreamError, 502),
        ("an error was encountered while running the model", UpstreamError, 502),
    ],
)
def test_an_error_in_a_2xx_body_or_a_stream_is_the_error_it_means(
    error: Any, kind: type, status: int
) -> None:
    with pytest.raises(kind) as raised:
        plugin.parse_response(CHAT, chat(), answer({"error": error}))
    assert raised.value.status == status
    with pytest.raises(kind):
        plugin.parse_stream_event(CHAT, chat(stream=True), json.dumps({"error": error}))
    if status == 400:
        assert error["message"] in raised.value.message  # the client's to fix


def stream_event(request: ChatRequest, chunk: dict[str, Any]) -> Any:
    return plugin.parse_stream_event(CHAT, request, json.dumps(chunk))


def test_stream_usage_from_a_usage_chunk_a_last_chunk_or_groqs_x_groq() -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
    unasked, asked = chat(stream=True), chat(stream=True, stream_options={"include_usage": True})
    billing = stream_event(unasked, {"choices": [], "usage": usage})
    assert billing.chunk is None and billing.usage.output_tokens == 3  # not forwarded
    forwarded = stream_event(asked, {"choices": [], "usage": usage})
    assert forwarded.chunk["usage"] == usage and forwarded.chunk["model"] == CHAT.id
    mistral = stream_event(unasked, {"choices": [choice], "usage": usage})  # usage unasked
    assert mistral.usage.input_tokens == 12 and "usage" not in mistral.chunk
    groq = stream_event(asked, {"choices": [choice], "x_groq": {"usage": usage}})
    assert groq.usage.output_tokens == 3 and groq.chunk["usage"] == usage
    plain = stream_event(asked, {"choices": [choice]})
    assert plain.usage is None and plain.chunk["choices"] == [choice]


def test_the_kind_registers_without_a_base_url_so_each_instance_sets_one() -> None:
    specs: list[Any] = []
    plugin.register_providers(specs.append)
    (spec,) = specs
    assert (spec.name, spec.base_url, spec.settings) == ("openai-compatible", "", Settings)
    catalog = CATALOG.model_copy(deep=True)
    catalog.providers["local"] = catalog.providers["local"].model_copy(update={"base_url": None})
    with pytest.raises(ConfigError, match=r"providers\.local: set base_url"):
        build_gateway(catalog, pm, environ={})


def test_an_instance_without_api_key_env_reads_its_own_variable() -> None:
    catalog = CATALOG.model_copy(deep=True)
    for name in ("local", "strict"):
        catalog.providers[name] = catalog.providers[name].model_copy(update={"api_key_env": None})
    environ = {"LOCAL_API_KEY": "sk-local-key-0123456789", "OPENAI_COMPATIBLE_API_KEY": "shared"}
    gateway = build_gateway(catalog, pm, environ=environ)
    assert gateway.providers["local"].upstream.api_key == "sk-local-key-0123456789"
    strict = gateway.providers["strict"]  # never the kind's variable, shared by every instance
    assert strict.upstream.api_key is None and "STRICT_API_KEY" in (strict.unavailable or "")


def test_the_shipped_examples_are_off_and_build_once_enabled() -> None:
    shipped = load_catalog(Path(__file__).parents[3] / "registry.toml")
    examples = ("ollama", "groq")
    assert not any(shipped.providers[name].enabled for name in examples)
    enabled = shipped.model_copy(
        update={
            "providers": {
                name: shipped.providers[name].model_copy(update={"enabled": True})
                for name in examples
            },
            "models": {k: m for k, m in shipped.models.items() if m.provider in examples},
            "aliases": {},
        }
    )
    gateway = build_gateway(enabled, pm, environ={"GROQ_API_KEY": "gsk_test"})
    groq = gateway.providers["groq"]
    assert groq.upstream.base_url == "https://api.groq.com/openai/v1"
    assert groq.upstream.settings.drop_params == ("logprobs", "logit_bias", "top_logprobs")
    assert "OLLAMA_API_KEY" in (gateway.providers["ollama"].unavailable or "")
    assert (
        gateway.routes["groq/llama-3.3-70b-versatile"].model.upstream == "llama-3.3-70b-versatile"
    )
