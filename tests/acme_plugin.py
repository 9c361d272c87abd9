"""A provider unlike OpenAI, written against the plugin interface alone: the test of it.

Acme serves chat as ``POST /v2/generate``; it streams newline-delimited JSON (a ``start``
line with the message id, ``token`` lines, an ``end`` line with the usage) with no
``[DONE]``, and reports errors as HTTP 200 with an ``error`` object, in the body or as a
line of the stream. Its simulator fails on demand: a prompt containing ``#overloaded``,
``#bad``, ``#first`` (an error line before any token), ``#midstream`` (after two tokens)
or ``#cut`` (the stream stops without its ``end`` line). Its error messages quote the key
it was sent, as careless upstreams do: the gateway must never pass it on.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from apimodels import (
    ChatRequest,
    InvalidRequest,
    ModelConfig,
    Output,
    ProviderSpec,
    RateLimited,
    StreamEvent,
    Upstream,
    UpstreamError,
    UpstreamOverloaded,
    Usage,
    hookimpl,
)

WORDS = ["Hello", " from", " acme", "."]


def simulator(api_key: str) -> Starlette:
    async def generate(request: Request) -> Any:
        if request.headers.get("x-acme-key") != api_key:
            return JSONResponse({"error": {"kind": "auth", "message": "bad key"}}, 401)
        body = await request.json()
        prompt = body["prompt"]
        tokens_in = len(prompt.split())
        failure = next((f for f in ("overloaded", "bad", "quota") if f"#{f}" in prompt), None)
        if failure:  # HTTP 200, as Acme does, with the key it was sent in the message
            message = f"{failure} (request signed with {api_key})"
            return JSONResponse({"error": {"kind": failure, "message": message}})
        if not body.get("stream"):
            usage = {"in": tokens_in, "out": len(WORDS)}
            return JSONResponse({"id": "gen-1", "text": "".join(WORDS), "usage": usage})

        async def lines() -> Any:
            yield json.dumps({"type": "start", "id": "gen-42"}) + "\n"
            if "#first" in prompt:
                yield json.dumps({"type": "error", "kind": "overloaded", "message": "busy"}) + "\n"
                return
            for i, word in enumerate(WORDS):
                if i == 2 and "#midstream" in prompt:
                    failed = {"type": "error", "kind": "overloaded", "message": f"{api_key} gone"}
                    yield json.dumps(failed) + "\n"
                    return
                yield "\n"  # a keep-alive
                yield json.dumps({"type": "token", "text": word}) + "\n"
            if "#cut" in prompt:
                return
            yield json.dumps({"type": "end", "usage": {"in": tokens_in, "out": len(WORDS)}})

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return Starlette(routes=[Route("/v2/generate", generate, methods=["POST"])])


@hookimpl
def register_providers(register: Any) -> None:
    register(
        ProviderSpec(
            name="acme",
            base_url="https://api.acme.test",
            api_key_env="ACME_API_KEY",
            simulator=simulator,
            stream_format="ndjson",
        )
    )


@hookimpl
def estimate_usage(model: ModelConfig, request: ChatRequest) -> Usage:
    return Usage(
        input_tokens=len(request.text().split()) + 8,
        output_tokens=request.max_tokens or model.max_output_tokens or 256,
    )


@hookimpl
def build_request(request: ChatRequest, upstream: Upstream) -> httpx.Request:
    body = {"prompt": request.text(), "stream": request.stream}
    return upstream.json_request("POST", "/v2/generate", body, {"x-acme-key": upstream.api_key})


def _error(error: dict[str, Any]) -> Exception:
    kind, message = error.get("kind"), str(error.get("message", "acme failed"))
    if kind == "overloaded":
        return UpstreamOverloaded(f"acme is overloaded: {message}", headers={"retry-after": "2"})
    if kind == "quota":
        return RateLimited(message)
    if kind == "bad":
        return InvalidRequest(message, code="upstream_rejected")
    return UpstreamError(message)


def _chunk(state: dict[str, Any], model: ModelConfig, delta: dict[str, Any], **extra: Any) -> Any:
    choice = {"index": 0, "delta": delta, "finish_reason": extra.pop("finish_reason", None)}
    return {
        "id": state["id"],
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model.id,
        "choices": [choice],
        **extra,
    }


@hookimpl
def parse_response(model: ModelConfig, response: httpx.Response) -> Output:
    body = response.json()
    if "error" in body:
        raise _error(body["error"])
    usage = body["usage"]
    message = {"role": "assistant", "content": body["text"]}
    return Output(
        {
            "id": body["id"],
            "object": "chat.completion",
            "created": 0,
            "model": model.id,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": usage["in"],
                "completion_tokens": usage["out"],
                "total_tokens": usage["in"] + usage["out"],
            },
        },
        Usage(input_tokens=usage["in"], output_tokens=usage["out"]),
    )


@hookimpl
def parse_stream_event(
    model: ModelConfig, request: ChatRequest, data: str, state: dict[str, Any]
) -> StreamEvent | None:
    line = json.loads(data)
    if "error" in line:  # a stream refused at once: the error body, as one line
        raise _error(line["error"])
    kind = line["type"]
    if kind == "start":  # the id every later chunk carries
        state["id"] = line["id"]
        return None
    if kind == "error":
        raise _error(line)
    if kind == "token":
        return StreamEvent(_chunk(state, model, {"content": line["text"]}))
    if kind == "end":
        n_in, n_out = line["usage"]["in"], line["usage"]["out"]
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        chunk = _chunk(state, model, {}, finish_reason="stop", usage=usage)
        return StreamEvent(chunk, Usage(input_tokens=n_in, output_tokens=n_out), done=True)
    return None
