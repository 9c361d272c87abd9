"""The simulator over a real socket: its answers checked against OpenAI's published schemas
(data/SOURCE), and the quirks it acts out for an instance's settings."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apimodels.testing import OpenAPI, serve
from apimodels_openai_compatible import Settings
from apimodels_openai_compatible.simulator import EMBEDDING_DIMENSIONS, create_app

SPEC = OpenAPI.load(Path(__file__).parent / "data" / "openai-openapi.chat-embeddings.json")
KEY = "sk-sim-compat-0123456789"
MESSAGES = [{"role": "user", "content": "Tell me about lighthouses."}]
#: A server with every quirk: Mistral's refusals, Groq's, no base64.
STRICT = Settings(
    stream_usage=False, drop_params=("logit_bias", "encoding_format"), extra_body={"safe": True}
)


@pytest.fixture(scope="module")
def origins() -> Iterator[dict[str, str]]:
    with (
        serve(create_app(api_key=KEY)) as plain,
        serve(create_app(api_key=KEY, settings=STRICT)) as strict,
        serve(
            create_app(api_key=KEY, settings=Settings(max_tokens_field="max_completion_tokens"))
        ) as new,
    ):
        yield {"plain": plain, "strict": strict, "new": new}


def client(origin: str, prefix: str = "/v1") -> httpx.Client:
    httpx.delete(f"{origin}/_sim/knobs").raise_for_status()
    headers = {"authorization": f"Bearer {KEY}"}
    return httpx.Client(base_url=origin + prefix, headers=headers, timeout=10)


def events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line]


def test_chat_matches_the_published_schema(origins: dict[str, str]) -> None:
    with client(origins["plain"]) as sim:
        body = {"model": "llama-3.3-70b", "messages": MESSAGES, "max_tokens": 5}
        SPEC.validate_request("POST", "/chat/completions", body)
        r = sim.post("/chat/completions", json=body)
    assert r.status_code == 200, r.text
    SPEC.validate_response("POST", "/chat/completions", 200, r.json())
    assert r.json()["model"] == "llama-3.3-70b"  # any model id: the server serves what it has
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 5


def test_a_stream_with_usage_matches_the_published_schema(origins: dict[str, str]) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with client(origins["plain"]) as sim, sim.stream("POST", "/chat/completions", json=body) as r:
        data = events(r)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for chunk in chunks:
        SPEC.validate_schema("CreateChatCompletionStreamResponse", chunk)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text.split() and chunks[-1]["usage"]["completion_tokens"] == -(-len(text) // 4)


def test_served_under_any_prefix_errors_in_openai_shape(origins: dict[str, str]) -> None:
    with client(origins["plain"], "/openai/v1") as sim:
        assert sim.post("/chat/completions", json={"model": "m", "messages": MESSAGES}).is_success
        missing = sim.post("/chat/completions", json={"model": "m"})
        unknown = sim.post("/completions", json={"model": "m"})
        anonymous = httpx.post(f"{origins['plain']}/v1/embeddings", json={"model": "m"})
    for r, status in ((missing, 400), (unknown, 404), (anonymous, 401)):
        assert r.status_code == status
        SPEC.validate_schema("ErrorResponse", r.json())


def test_embeddings_in_float_and_base64_carry_the_same_vector(origins: dict[str, str]) -> None:
    body = {"model": "nomic-embed-text", "input": ["one", "two"]}
    SPEC.validate_request("POST", "/embeddings", body)
    with client(origins["plain"]) as sim:
        floats = sim.post("/embeddings", json=body).json()
        encoded = sim.post("/embeddings", json=body | {"encoding_format": "base64"}).json()
    SPEC.validate_response("POST", "/embeddings", 200, floats)
    assert len(floats["data"]) == 2
    vector = floats["data"][1]["embedding"]
    assert len(vector) == EMBEDDING_DIMENSIONS
    decoded = struct.unpack(f"<{len(vector)}f", base64.b64decode(encoded["data"][1]["embedding"]))
    assert decoded == pytest.approx(vector, rel=1e-6)


def test_quirks_are_refused_as_the_servers_that_have_them_refuse(origins: dict[str, str]) -> None:
    base = {"model": "m", "messages": MESSAGES, "stream": True}
    with client(origins["strict"]) as strict, client(origins["new"]) as new:
        options = strict.post(
            "/chat/completions", json=base | {"stream_options": {"include_usage": True}}
        )
        newer_limit = strict.post("/chat/completions", json=base | {"max_completion_tokens": 5})
        bias = strict.post("/chat/completions", json=base | {"logit_bias": {"1": 2}})
        base64_asked = strict.post(
            "/embeddings", json={"model": "m", "input": "x", "encoding_format": "base64"}
        )
        older_limit = new.post("/chat/completions", json=base | {"max_tokens": 5})
        taken = new.post("/chat/completions", json=base | {"max_completion_tokens": 5})
    for r in (options, newer_limit, older_limit):  # Mistral's 422, in Mistral's shape
        assert r.status_code == 422
        assert r.json()["message"]["detail"][0]["type"] == "extra_forbidden"
    for r in (bias, base64_asked):  # Groq's 400
        assert r.status_code == 400 and "unsupported" in r.json()["error"]["message"]
    assert taken.status_code == 200


def test_a_strict_stream_has_no_usage_unless_the_server_sends_it_unasked(
    origins: dict[str, str],
) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with client(origins["strict"]) as sim:
        with sim.stream("POST", "/chat/completions", json=body) as r:
            plain = [json.loads(d) for d in events(r)[:-1]]
        httpx.post(f"{origins['strict']}/_sim/knobs", json={"usage_unasked": True})
        with sim.stream("POST", "/chat/completions", json=body) as r:
            unasked = [json.loads(d) for d in events(r)[:-1]]
    assert all("usage" not in c for c in plain)
    assert [c["choices"][0]["finish_reason"] for c in unasked][-1] == "stop"
    assert unasked[-1]["usage"]["prompt_tokens"] > 0  # on the last content chunk, as Mistral
    SPEC.validate_schema("CreateChatCompletionStreamResponse", unasked[-1])


def test_failures_in_a_body_and_in_a_stream(origins: dict[str, str]) -> None:
    origin = origins["plain"]
    fail = [
        {"kind": "error_in_body", "status": 429},
        {"kind": "error_in_stream", "status": 502},
        {"kind": "error", "status": 503},
    ]
    with client(origin) as sim:
        httpx.post(f"{origin}/_sim/knobs", json={"fail": fail}).raise_for_status()
        in_body = sim.post("/chat/completions", json={"model": "m", "messages": MESSAGES})
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        with sim.stream("POST", "/chat/completions", json=body) as r:
            streamed = [json.loads(d) for d in events(r)]
        plain = sim.post("/embeddings", json={"model": "m", "input": "x"})
        refused = httpx.post(f"{origin}/_sim/knobs", json={"fail": [{"kind": "nonsense"}]})
    assert in_body.status_code == 200 and in_body.json()["error"]["code"] == 429
    assert streamed[0]["choices"] and streamed[-1]["error"]["code"] == 502
    assert plain.status_code == 503
    assert refused.status_code == 400


def test_requests_are_recorded_without_the_key(origins: dict[str, str]) -> None:
    origin = origins["strict"]
    httpx.delete(f"{origin}/_sim/requests")
    with client(origin) as sim:
        sim.post(
            "/embeddings", json={"model": "m", "input": "x", "safe": True}, headers={"x-a": "1"}
        )
    (seen,) = httpx.get(f"{origin}/_sim/requests").json()
    assert seen["path"] == "/v1/embeddings" and seen["headers"]["x-a"] == "1"
    assert seen["json"]["safe"] is True
    assert KEY not in json.dumps(seen)
