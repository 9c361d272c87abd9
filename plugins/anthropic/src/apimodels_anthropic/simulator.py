"""A simulator of Anthropic's Messages API, for sandbox mode and the tests.

``create_app()`` serves Anthropic's paths with its payloads, headers and error bodies
(``{"type": "error", "error": {"type", "message"}, "request_id"}``). Every ``/v1`` request
needs the key (``x-api-key``, or ``Authorization: Bearer``, which the official SDK sends)
and an ``anthropic-version`` header, as the API does:

- ``POST /v1/messages``: a templated reply that quotes the last user text, or, when the
  request offers tools and names one of them in its last user text (or ``tool_choice``
  forces one), a ``tool_use`` block whose input fills the tool's required properties; a
  reply to tool results quotes them. ``max_tokens`` (required) cuts the reply
  (``stop_reason: max_tokens``), ``stop_sequences`` end it (``stop_sequence``). Image
  blocks (base64 in the four types Anthropic reads, or URLs, never fetched) are accepted
  and counted. Tool results must answer the previous turn's tool uses, and each tool use
  must be answered, as Anthropic checks. With ``stream: true`` the answer is server-sent
  events named as Anthropic names them, in its order: ``message_start``,
  ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` or
  ``input_json_delta``), ``content_block_stop`` per block, ``message_delta`` (stop reason
  and cumulative usage), ``message_stop``;
- ``POST /v1/messages/count_tokens``: the input tokens the same body would use.

Prompt caching: ``cache_control`` breakpoints (at most 4, on tools, system blocks and
message blocks, or the top-level one on the last block) mark prefixes. A prefix of at
least ``MIN_CACHEABLE`` tokens is written to the simulator's cache (kept ``CACHE_SECONDS``,
refreshed when read); a later request whose prefix is cached reads it. Usage reports
``cache_read_input_tokens`` (the longest cached prefix), ``cache_creation_input_tokens``
(from there to the last breakpoint) and ``input_tokens`` (the rest), as Anthropic does.

Tokens: one per 4 characters of text, rounded up; a PNG image ``width * height / 750``
(at most ``IMAGE_TOKENS``), any other image ``IMAGE_TOKENS``; tools as their JSON.

Test knobs, in ``app.state.knobs`` or as JSON to ``POST /_sim/knobs`` (merged; ``DELETE``
restores the defaults):

- ``latency``: seconds to wait before answering any ``/v1`` request;
- ``stream_delay``: seconds between two stream events;
- ``fail``: one-shot failures, each used by the next ``/v1`` request: ``{"kind": "error",
  "status": 529}`` answers Anthropic's error for that status (429 and 529 with
  ``retry-after``; ``type`` and ``message`` override the body); ``{"kind": "stream_error",
  "type": "overloaded_error", "after": 2}`` sends an ``error`` event in a stream after that
  many content deltas (0: right after ``message_start``); ``{"kind": "cut_stream"}`` drops
  the connection mid-stream; ``{"kind": "malformed"}`` answers a 200 whose JSON is cut
  short; ``{"kind": "timeout", "seconds": 60}`` waits before answering.

``GET /_sim/requests`` lists the last ``RECORDED`` requests (headers without the key,
the JSON body); ``DELETE`` clears it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import re
import secrets
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

#: The models the simulator answers for (their Claude API ids).
MODELS = (
    "claude-fable-5-2",
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
)
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
#: The most tokens an image counts (Anthropic resizes larger ones to about 1.15 MP).
IMAGE_TOKENS = 1600
#: The shortest prefix Anthropic caches (tokens), and how long an entry lives.
MIN_CACHEABLE = 1024
CACHE_SECONDS = 300
MAX_BREAKPOINTS = 4
FAILURE_KINDS = ("error", "stream_error", "cut_stream", "malformed", "timeout")
RECORDED = 200
#: Anthropic's error type and default message per status.
ERRORS = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


def tokens(text: str) -> int:
    """The simulator's tokenizer: one token per 4 characters, rounded up."""
    return math.ceil(len(text) / 4)


def _ident(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")


class AnthropicError(Exception):
    """An error answered in Anthropic's shape: raise it anywhere in a handler."""

    def __init__(self, status: int, message: str | None = None, type_: str | None = None) -> None:
        default_type, default_message = ERRORS.get(status, ("api_error", "Internal server error"))
        self.status, self.type = status, type_ or default_type
        self.message = message or default_message
        super().__init__(self.message)

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        error = {"type": self.type, "message": self.message}
        return {"type": "error", "error": error, "request_id": request_id}

    def response(self, request_id: str) -> JSONResponse:
        headers = {"retry-after": "1"} if self.status in (429, 529) else None
        return JSONResponse(self.body(request_id), self.status, headers=headers)


def _invalid(message: str) -> AnthropicError:
    return AnthropicError(400, message)


# --- reading a request -------------------------------------------------------------------


def _image_tokens(block: dict[str, Any], where: str) -> int:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") not in ("base64", "url"):
        raise _invalid(f"{where}.source: Input should be a base64 or url image source")
    if source["type"] == "url":
        if not isinstance(source.get("url"), str) or not source["url"].startswith("http"):
            raise _invalid(f"{where}.source.url: Input should be an http(s) URL")
        return IMAGE_TOKENS
    if source.get("media_type") not in IMAGE_TYPES:
        raise _invalid(
            f"{where}.source.media_type: Input should be {', '.join(repr(t) for t in IMAGE_TYPES)}"
        )
    try:
        data = base64.b64decode(source.get("data") or "", validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{where}.source.data: The image data is not valid base64") from None
    if not data:
        raise _invalid(f"{where}.source.data: The image is empty")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return max(1, min(IMAGE_TOKENS, math.ceil(width * height / 750)))
    return IMAGE_TOKENS


def _block_tokens(block: Any, where: str) -> int:
    if not isinstance(block, dict):
        raise _invalid(f"{where}: Input should be an object")
    kind = block.get("type")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise _invalid(f"{where}.text: Field required")
        return tokens(block["text"])
    if kind == "image":
        return _image_tokens(block, where)
    if kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("input"), dict):
            raise _invalid(f"{where}: tool_use blocks need an id and an object input")
        return tokens(block.get("name", "") + json.dumps(block["input"]))
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, str):
            return tokens(content) + 2
        return 2 + sum(_block_tokens(b, f"{where}.content[{i}]") for i, b in enumerate(content))
    if kind in ("thinking", "redacted_thinking"):
        return tokens(str(block.get("thinking") or block.get("data") or ""))
    raise _invalid(
        f"{where}.type: Input tag '{kind}' found using 'type' does not match any of the expected tags"
    )


def _content(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _check_cache_control(node: dict[str, Any], where: str) -> bool:
    control = node.get("cache_control")
    if control is None:
        return False
    if not isinstance(control, dict) or control.get("type") != "ephemeral":
        raise _invalid(f"{where}.cache_control.type: Input should be 'ephemeral'")
    if control.get("ttl", "5m") not in ("5m", "1h"):
        raise _invalid(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return True


def _segments(body: dict[str, Any]) -> list[tuple[int, bool, str]]:
    """The prompt in Anthropic's cache order (tools, system, messages): per block, its
    tokens, whether a breakpoint ends there, and its text for the prefix hash."""
    out: list[tuple[int, bool, str]] = []
    for i, tool in enumerate(body.get("tools") or []):
        out.append(
            (tokens(json.dumps(tool)), _check_cache_control(tool, f"tools.{i}"), json.dumps(tool))
        )
    system = body.get("system")
    if isinstance(system, str):
        system = [{"type": "text", "text": system}]
    for i, block in enumerate(system or []):
        where = f"system.{i}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _invalid(f"{where}.type: Input should be 'text'")
        out.append(
            (tokens(block.get("text", "")), _check_cache_control(block, where), json.dumps(block))
        )
    for i, message in enumerate(body["messages"]):
        out.append((3, False, message["role"]))  # the turn's framing
        for j, block in enumerate(_content(message)):
            where = f"messages.{i}.content.{j}"
            count = _block_tokens(block, where)
            out.append((count, _check_cache_control(block, where), json.dumps(block)))
    if body.get("cache_control") is not None:  # top-level: on the last cacheable block
        _check_cache_control(body, "cache_control")
        count, _, text = out[-1]
        out[-1] = (count, True, text)
    return out


def _check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _invalid("messages: Field required")
    if not messages:
        raise _invalid("messages: at least one message is required")
    previous_uses: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, str | list) or (isinstance(content, list) and not content):
            raise _invalid(f"messages.{i}.content: Input should be a string or a non-empty list")
        blocks = _content(message)
        if message["role"] == "user":
            results = {
                b.get("tool_use_id")
                for b in blocks
                if isinstance(b, dict) and b.get("type") == "tool_result"
            }
            if results - previous_uses:
                raise _invalid(
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{sorted(results - previous_uses)[0]}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )
            if previous_uses - results:
                raise _invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{sorted(previous_uses - results)[0]}. Each `tool_use` block must have a corresponding `tool_result` block in the next message."
                )
            previous_uses = set()
        else:
            previous_uses = {
                b.get("id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"
            }
    return messages


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(f"{name}: range: {low:g}..{high:g}")


# --- answering ---------------------------------------------------------------------------


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            texts = [b.get("text", "") for b in _content(message) if b.get("type") == "text"]
            if texts:
                return " ".join(texts)
    return ""


def _tool_results(messages: list[dict[str, Any]]) -> list[str]:
    last = messages[-1]
    if last["role"] != "user":
        return []
    out = []
    for block in _content(last):
        if block.get("type") == "tool_result":
            content = block.get("content", "")
            if isinstance(content, list):
                content = " ".join(b.get("text", "") for b in content if b.get("type") == "text")
            out.append(str(content))
    return out


def _tool_to_use(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none" or _tool_results(body["messages"]):
        return None
    if choice.get("type") == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), None)
    text = _last_user_text(body["messages"]).lower()
    named = next((t for t in tools if t["name"].lower() in text), None)
    return named or (tools[0] if choice.get("type") == "any" else None)


def _tool_input(tool: dict[str, Any], text: str) -> dict[str, Any]:
    """Values for the tool's required properties, from the user's words where text fits."""
    schema = tool.get("input_schema") or {}
    words = re.findall(r"[A-Z][a-z]+", text) or ["Paris"]
    values: dict[str, Any] = {}
    for name in schema.get("required") or []:
        kind = (schema.get("properties") or {}).get(name, {}).get("type")
        values[name] = {"number": 1, "integer": 1, "boolean": True, "array": [], "object": {}}.get(
            kind, words[-1]
        )
    return values


def _reply(body: dict[str, Any]) -> str:
    results = _tool_results(body["messages"])
    if results:
        return f"The tool answered: {' '.join(results)[:200]}. That is all I know."
    text = _last_user_text(body["messages"])
    words = re.findall(r"\w+", text)[:12]
    number = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 1000
    return (
        f"This is simulated reply {number} to your message about {' '.join(words) or 'nothing'}. "
        "The same messages always get the same answer, so tests can rely on it."
    )


def _cache_usage(app_state: Any, segments: list[tuple[int, bool, str]]) -> tuple[int, int, int]:
    """(fresh input, cache read, cache written) tokens, updating the cache."""
    total = sum(count for count, _, _ in segments)
    cache: dict[str, float] = app_state.cache
    now = time.monotonic()
    digest, seen, prefixes = hashlib.sha256(), 0, []
    for count, breakpoint_, text in segments:
        digest.update(text.encode() + b"\0")
        seen += count
        if breakpoint_:
            prefixes.append((seen, digest.hexdigest()))
    if len(prefixes) > MAX_BREAKPOINTS:
        raise _invalid(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(prefixes)}."
        )
    # Read: the longest cached prefix. Written: from there to the last cacheable one.
    read = max((length for length, key in prefixes if cache.get(key, 0) > now), default=0)
    cacheable = [(length, key) for length, key in prefixes if length >= MIN_CACHEABLE]
    for _, key in cacheable:
        cache[key] = now + CACHE_SECONDS  # written, or refreshed when read
    written = max(0, max((length for length, _ in cacheable), default=0) - read)
    return total - read - written, read, written


def _usage(fresh: int, read: int, written: int, output: int) -> dict[str, Any]:
    return {
        "input_tokens": fresh,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "server_tool_use": None,
        "service_tier": "standard",
        "inference_geo": None,
    }


def _check_body(body: dict[str, Any]) -> tuple[str, int]:
    model = body.get("model")
    if not isinstance(model, str):
        raise _invalid("model: Field required")
    limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise _invalid("max_tokens: Field required")
    if limit < 1:
        raise _invalid("max_tokens: Input should be greater than or equal to 1")
    _check_messages(body)
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise _invalid("stop_sequences: Input should be a list of strings")
    if model not in MODELS:
        raise AnthropicError(404, f"model: {model}")
    return model, limit


async def messages(request: Request, body: dict[str, Any]) -> Response:
    model, limit = _check_body(body)
    fresh, read, written = _cache_usage(request.app.state, _segments(body))
    tool = _tool_to_use(body)
    blocks: list[dict[str, Any]]
    if tool is not None:
        call = {
            "type": "tool_use",
            "id": _ident("toolu_"),
            "name": tool["name"],
            "input": _tool_input(tool, _last_user_text(body["messages"])),
            "caller": {"type": "direct"},
        }
        blocks, stop, stop_sequence = [call], "tool_use", None
        output = tokens(json.dumps(call["input"])) + 10
        if output > limit:
            call["input"], stop, output = {}, "max_tokens", limit
    else:
        text, stop, stop_sequence = _reply(body), "end_turn", None
        for sequence in body.get("stop_sequences") or []:
            at = text.find(sequence)
            if sequence and at != -1:
                text, stop, stop_sequence = text[:at], "stop_sequence", sequence
        if tokens(text) > limit:
            text, stop = text[: limit * 4], "max_tokens"
        blocks, output = [{"type": "text", "text": text, "citations": None}], max(1, tokens(text))
    message = {
        "id": _ident("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": stop_sequence,
        "stop_details": None,
        "container": None,
        "usage": _usage(fresh, read, written, output),
    }
    if body.get("stream") is True:
        return _Stream(_events(request, message), media_type="text/event-stream")
    return JSONResponse(message)


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _events(request: Request, message: dict[str, Any]) -> AsyncIterator[bytes]:
    """Anthropic's events for ``message``, ``stream_delay`` apart (and the failures the
    request's knob asked for)."""
    delay = float(request.app.state.knobs.get("stream_delay") or 0)
    failure: dict[str, Any] | None = getattr(request.state, "stream_failure", None)
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": 1}
    yield _sse("message_start", {"type": "message_start", "message": start})
    deltas = 0

    async def fail_here() -> AsyncIterator[bytes]:
        if failure is None or deltas != int(failure.get("after", 0)):
            return
        if failure["kind"] == "cut_stream":
            raise _CutStream
        error = AnthropicError(
            529, failure.get("message"), failure.get("type") or "overloaded_error"
        )
        yield _sse("error", error.body(_ident("req_")))
        raise _Ended

    try:
        async for piece in fail_here():
            yield piece
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                opening = {"type": "text", "text": "", "citations": None}
                pieces = [
                    {"type": "text_delta", "text": p}
                    for p in re.findall(r"\s*\S+|\s+$", block["text"])
                ]
            else:
                opening = {**block, "input": {}}
                raw = json.dumps(block["input"])
                pieces = [
                    {"type": "input_json_delta", "partial_json": raw[i : i + 12]}
                    for i in range(0, len(raw), 12)
                ]
            yield _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
            if index == 0:
                yield _sse("ping", {"type": "ping"})
            for delta in pieces:
                await asyncio.sleep(delay)
                yield _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
                deltas += 1
                async for piece in fail_here():
                    yield piece
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
        await asyncio.sleep(delay)
        final = {
            "input_tokens": usage["input_tokens"],
            "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
            "cache_read_input_tokens": usage["cache_read_input_tokens"],
            "output_tokens": usage["output_tokens"],
            "server_tool_use": None,
        }
        delta = {
            "stop_reason": message["stop_reason"],
            "stop_sequence": message["stop_sequence"],
            "stop_details": None,
            "container": None,
        }
        yield _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": final})
        yield _sse("message_stop", {"type": "message_stop"})
    except _Ended:
        return


async def count_tokens(request: Request, body: dict[str, Any]) -> Response:
    body = {**body, "max_tokens": 1}
    _check_body(body)
    return JSONResponse({"input_tokens": sum(count for count, _, _ in _segments(body))})


# --- the app -------------------------------------------------------------------------------


class _CutStream(Exception):
    """Raised by a response body to drop the connection mid-response."""


class _Ended(Exception):
    """Raised by a stream's events to end the stream normally, early."""


class _Stream(StreamingResponse):
    """Sends each event as its own body message; a ``_CutStream`` ends the response
    without its last message (the server closes the connection mid-body). Stops early
    when the client leaves."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                async for piece in self.body_iterator:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except _CutStream:
                pass
            group.cancel_scope.cancel()


Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


def default_knobs(latency: float = 0.0) -> dict[str, Any]:
    return {"latency": latency, "stream_delay": 0.0, "fail": []}


async def _cut_json() -> AsyncIterator[bytes]:
    yield b'{"id": "msg_cut", "type": "message", "content": [{"type": "te'
    raise _CutStream


async def _fail(request: Request, body: dict[str, Any] | None) -> Response | None:
    """Apply the next queued failure, if any: a response, or None to go on."""
    queue = request.app.state.knobs["fail"]
    if not queue:
        return None
    failure = queue.pop(0)
    kind = failure["kind"]
    if kind == "error":
        raise AnthropicError(
            int(failure.get("status", 500)), failure.get("message"), failure.get("type")
        )
    if kind == "timeout":
        await asyncio.sleep(float(failure.get("seconds", 60)))
        return None
    if kind == "malformed":
        return Response(b'{"id": "msg_malformed", "type": "mess', media_type="application/json")
    if (body or {}).get("stream") is True:  # stream_error, cut_stream: inside the stream
        request.state.stream_failure = failure
        return None
    return _Stream(_cut_json(), media_type="application/json")


_SECRET_HEADERS = ("x-api-key", "authorization")


def _given_key(request: Request) -> str | None:
    """The key in ``x-api-key``, or as a Bearer token (which the official SDK sends)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return request.headers.get("x-api-key") or (token if scheme.lower() == "bearer" else None)


def _endpoint(handler: Handler, api_key: str | None) -> Callable[[Request], Awaitable[Response]]:
    """What every ``/v1`` request goes through: recording, latency, the headers Anthropic
    requires, the failure queue, then Anthropic's error bodies and ``request-id``."""

    async def endpoint(request: Request) -> Response:
        state, request_id = request.app.state, _ident("req_")
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        state.seq += 1
        headers = {k: v for k, v in request.headers.items() if k not in _SECRET_HEADERS}
        state.requests.append(
            {
                "seq": state.seq,
                "method": request.method,
                "path": request.url.path,
                "headers": headers,
                "json": body,
            }
        )
        try:
            if state.knobs.get("latency"):
                await asyncio.sleep(float(state.knobs["latency"]))
            if api_key is not None and _given_key(request) != api_key:
                raise AnthropicError(401, "invalid x-api-key")
            if not request.headers.get("anthropic-version"):
                raise _invalid("anthropic-version: header is required")
            response = await _fail(request, body if isinstance(body, dict) else None)
            if response is None:
                if not isinstance(body, dict):
                    raise _invalid("There was an error parsing the body of your request as JSON.")
                response = await handler(request, body)
        except AnthropicError as error:
            response = error.response(request_id)
        response.headers["request-id"] = request_id
        return response

    return endpoint


async def knobs_endpoint(request: Request) -> Response:
    state = request.app.state
    if request.method == "DELETE":
        state.knobs = default_knobs(state.default_latency)
    elif request.method == "POST":
        update = await request.json()
        fail = update.pop("fail", [])
        fail = [fail] if isinstance(fail, dict) else fail
        if set(update) - {"latency", "stream_delay"} or not all(
            isinstance(f, dict) and f.get("kind") in FAILURE_KINDS for f in fail
        ):
            message = (
                f"knobs are latency, stream_delay and fail (kinds: {', '.join(FAILURE_KINDS)})"
            )
            return AnthropicError(400, message).response(_ident("req_"))
        state.knobs["fail"].extend(fail)
        state.knobs.update(update)
    return JSONResponse(state.knobs)


async def requests_endpoint(request: Request) -> Response:
    if request.method == "DELETE":
        request.app.state.requests.clear()
    return JSONResponse(list(request.app.state.requests))


async def unknown_path(request: Request, body: dict[str, Any]) -> Response:
    raise AnthropicError(404, f"Not found: {request.method} {request.url.path}")


def create_app(*, api_key: str | None = None, latency: float = 0.0) -> Starlette:
    """The simulator. With ``api_key``, every ``/v1`` request must bear it (``x-api-key``
    or a Bearer token); ``latency`` is the default of the ``latency`` knob."""
    routes = [
        Route("/v1/messages", _endpoint(messages, api_key), methods=["POST"]),
        Route("/v1/messages/count_tokens", _endpoint(count_tokens, api_key), methods=["POST"]),
        Route(
            "/v1/{rest:path}", _endpoint(unknown_path, api_key), methods=["GET", "POST", "DELETE"]
        ),
        Route("/_sim/knobs", knobs_endpoint, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/requests", requests_endpoint, methods=["GET", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.default_latency = latency
    app.state.knobs = default_knobs(latency)
    app.state.requests = deque(maxlen=RECORDED)
    app.state.seq = 0
    app.state.cache = {}
    return app
