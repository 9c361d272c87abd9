"""A simulator of an OpenAI-compatible server, for sandbox mode and the tests.

``create_app(api_key=..., settings=...)`` serves, under whatever path the instance's base URL
has (``/v1``, ``/openai/v1``, none), with OpenAI's payloads and error bodies:

- ``POST .../chat/completions``: the OpenAI simulator's templated reply to any model id (a
  self-hosted server serves whatever it loaded), with ``max_tokens`` (finish_reason
  ``length``), streaming, and ``stream_options.include_usage`` adding the final usage
  chunk; ``n`` other than 1 is refused, as Groq refuses it;
- ``POST .../embeddings``: the OpenAI simulator's unit vectors, 256 dimensions (or
  ``dimensions``), as floats or base64 float32.

It acts out the instance's quirks (:class:`~apimodels_openai_compatible.Settings`) the way
the servers that have them do:

- ``stream_usage = false``: ``stream_options`` refused with Mistral's 422 "Extra inputs are
  not permitted";
- ``max_tokens_field``: the other name of the output limit refused the same way (Mistral
  refuses ``max_completion_tokens``);
- ``drop_params``: each field refused with Groq's 400 (``encoding_format`` among them: the
  server then has no base64);
- ``extra_body`` is accepted (what arrived is in the request log).

Test knobs, as JSON to ``POST /_sim/knobs`` (merged; ``DELETE`` restores the defaults):

- ``stream_delay``: seconds between two chunks of a stream;
- ``usage_unasked``: the last content chunk of a stream carries the usage, asked or not
  (Mistral's streams do);
- ``fail``: a queue of one-shot failures, each used by the next request:
  ``{"kind": "error", "status": 429}`` answers that status with OpenAI's error body;
  ``{"kind": "error_in_body", "status": 429}`` answers HTTP 200 with OpenRouter's
  ``{"error": {"code": 429, "message": ...}}``; ``{"kind": "error_in_stream", "status": 502}``
  streams a few chunks, then such an error event, and ends (a request that does not
  stream gets the error in its body).

``GET /_sim/requests`` lists the last requests received (method, path, headers without
``authorization``, JSON body), so tests can check what the gateway sent; ``DELETE`` clears it.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apimodels_openai.simulator import (
    OpenAIError,
    _check_key,
    _check_messages,
    _embedding_inputs,
    _prompt_tokens,
    _read_body,
    _reply,
    _sse,
    _Stream,
    _vector,
    canned_error,
    tokens,
)

from . import base64_embedding
from .settings import DEFAULT, Settings

#: The length of the simulated embeddings unless ``dimensions`` asks for fewer.
EMBEDDING_DIMENSIONS = 256
#: How many requests ``GET /_sim/requests`` remembers.
RECORDED = 200
#: Chunks a stream sends before an ``error_in_stream`` failure.
CHUNKS_BEFORE_ERROR = 2


class Failure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["error", "error_in_body", "error_in_stream"]
    status: int = 500


class Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream_delay: float = 0.0
    usage_unasked: bool = False
    fail: list[Failure] = []


def _extra_input(name: str, value: Any) -> OpenAIError:
    """Mistral's answer to a field it does not take (its API forbids unknown fields), in
    Mistral's own shape: a top-level error whose message is pydantic's detail."""
    error = OpenAIError(422, "Extra inputs are not permitted", param=name)
    detail = {"type": "extra_forbidden", "loc": ["body", name], "msg": str(error), "input": value}
    error.body = {
        "object": "error",
        "message": {"detail": [detail]},
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    return error


#: The other name of the output limit, which a server taking one refuses.
_OTHER_LIMIT = {"max_tokens": "max_completion_tokens", "max_completion_tokens": "max_tokens"}


def _check_quirks(settings: Settings, body: dict[str, Any]) -> None:
    """Refuse what the server behind this instance refuses."""
    if not settings.stream_usage and "stream_options" in body:
        raise _extra_input("stream_options", body["stream_options"])
    other = _OTHER_LIMIT[settings.max_tokens_field]
    if other in body:
        raise _extra_input(other, body[other])
    for name in settings.drop_params:
        if name in body:  # Groq's wording
            raise OpenAIError(400, f"'{name}' : property '{name}' is unsupported", param=name)


def _limit(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise OpenAIError(400, f"'{name}' must be a positive integer", param=name)
    return value


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "you must provide a model parameter", param="model")
    return model


async def chat(request: Request, body: dict[str, Any]) -> Response:
    settings: Settings = request.app.state.settings
    model = _model(body)
    messages = _check_messages(body)
    if body.get("n") not in (None, 1):
        raise OpenAIError(400, "'n' : number must be at most 1", param="n")
    limit = _limit(body, settings.max_tokens_field)
    text, finish = _reply(messages, 0), "stop"
    if limit is not None and tokens(text) > limit:
        text, finish = text[: limit * 4], "length"  # 4 characters a token
    prompt, completion = _prompt_tokens(body, messages), tokens(text)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage["total_tokens"] = prompt + completion
    head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": model}
    if body.get("stream") is True:
        asked = (body.get("stream_options") or {}).get("include_usage") is True
        failure = getattr(request.state, "stream_failure", None)
        events = _events(request.app.state.knobs, head, text, finish, usage, asked, failure)
        return _Stream(events, media_type="text/event-stream")
    message = {"role": "assistant", "content": text, "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    body = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
    return JSONResponse(body)


async def _events(
    knobs: Knobs,
    head: dict[str, Any],
    text: str,
    finish: str,
    usage: dict[str, Any],
    asked: bool,
    failure: Failure | None,
) -> AsyncIterator[bytes]:
    """A chat stream, ``stream_delay`` apart: OpenAI's usage chunk when asked, Mistral's usage
    on the last content chunk with ``usage_unasked``, OpenRouter's error event on failure."""

    def chunk(delta: dict[str, Any], finish: str | None, **more: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**head, "object": "chat.completion.chunk", "choices": [choice], **more})

    yield chunk({"role": "assistant", "content": ""}, None)
    for i, piece in enumerate(re.findall(r"\s*\S+", text)):
        if failure is not None and i == CHUNKS_BEFORE_ERROR:
            message = f"The upstream model failed (simulated status {failure.status})."
            yield _sse({"error": {"code": failure.status, "message": message}})
            return
        await asyncio.sleep(knobs.stream_delay)
        yield chunk({"content": piece}, None)
    await asyncio.sleep(knobs.stream_delay)
    yield chunk({}, finish, **({"usage": usage} if knobs.usage_unasked and not asked else {}))
    if asked:
        yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    yield _sse("[DONE]")


async def embeddings(request: Request, body: dict[str, Any]) -> Response:
    model = _model(body)
    items = _embedding_inputs(body.get("input"))
    dims = _limit(body, "dimensions") or EMBEDDING_DIMENSIONS
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise OpenAIError(400, f"Invalid value: '{fmt}'.", param="encoding_format")
    data, used = [], 0
    for i, item in enumerate(items):
        seed = item if isinstance(item, str) else ",".join(map(str, item))
        used += tokens(item) if isinstance(item, str) else len(item)
        vector: Any = _vector(f"{model}/{seed}", max(dims, EMBEDDING_DIMENSIONS), dims)
        if fmt == "base64":
            vector = base64_embedding(vector)
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": used, "total_tokens": used}
    return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})


Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]
#: The endpoints, by the end of their path (whatever the instance's prefix).
ENDPOINTS: dict[str, Handler] = {"/chat/completions": chat, "/embeddings": embeddings}


def _failure_answer(failure: Failure, request: Request, body: dict[str, Any]) -> Response | None:
    """The queued failure's answer, or None when the handler acts it out (a stream)."""
    if failure.kind == "error":
        raise canned_error(failure.status, request)
    if failure.kind == "error_in_stream" and body.get("stream") is True:
        request.state.stream_failure = failure
        return None
    message = f"The upstream model failed (simulated status {failure.status})."
    return JSONResponse({"error": {"code": failure.status, "message": message}})


def _endpoint(api_key: str | None) -> Callable[[Request], Awaitable[Response]]:
    """Every request: recorded, its key checked, its quirks and queued failure acted out."""

    async def endpoint(request: Request) -> Response:
        state, path = request.app.state, request.url.path
        body, logged = await _read_body(request)
        headers = {k: v for k, v in request.headers.items() if k != "authorization"}
        state.requests.append({"method": request.method, "path": path, "headers": headers} | logged)
        handler = next((h for end, h in ENDPOINTS.items() if path.endswith(end)), None)
        try:
            if api_key is not None:
                _check_key(request, api_key)
            if handler is None or request.method != "POST":
                raise OpenAIError(404, f"Invalid URL ({request.method} {path})")
            if body is None:
                raise OpenAIError(400, "We could not parse the JSON body of your request.")
            _check_quirks(state.settings, body)
            failure = state.knobs.fail.pop(0) if state.knobs.fail else None
            answer = _failure_answer(failure, request, body) if failure else None
            return answer or await handler(request, body)
        except OpenAIError as error:
            return error.response()

    return endpoint


async def knobs_endpoint(request: Request) -> Response:
    state = request.app.state
    if request.method == "DELETE":
        state.knobs = Knobs()
    elif request.method == "POST":
        try:
            update = await request.json()
            merged = state.knobs.model_dump() | update
            merged["fail"] = state.knobs.model_dump()["fail"] + update.get("fail", [])
            state.knobs = Knobs.model_validate(merged)
        except (ValueError, TypeError, ValidationError) as error:
            return JSONResponse({"error": {"message": str(error)}}, 400)
    return JSONResponse(state.knobs.model_dump())


async def requests_endpoint(request: Request) -> Response:
    if request.method == "DELETE":
        request.app.state.requests.clear()
    return JSONResponse(list(request.app.state.requests))


def create_app(*, api_key: str | None = None, settings: Settings | None = None) -> Starlette:
    """The simulator of one instance. With ``api_key``, every request must bear it as a
    Bearer token; ``settings`` are the instance's quirks to act out."""
    app = Starlette(
        routes=[
            Route("/_sim/knobs", knobs_endpoint, methods=["GET", "POST", "DELETE"]),
            Route("/_sim/requests", requests_endpoint, methods=["GET", "DELETE"]),
            Route("/{path:path}", _endpoint(api_key), methods=["GET", "POST"]),
        ]
    )
    app.state.settings = settings or DEFAULT
    app.state.knobs = Knobs()
    app.state.requests = deque(maxlen=RECORDED)
    return app
