"""Anthropic's stream (server-sent events with names) as Chat Completions chunks.

A Messages stream is ``message_start`` (the id and the input usage), then per content block
``content_block_start``, ``content_block_delta``\\s and ``content_block_stop``, then
``message_delta`` (the stop reason and the cumulative usage) and ``message_stop``; ``ping``
may come anywhere, and an ``error`` event ends a stream that failed. There is no
``[DONE]``: ``message_stop`` is the terminal event.

Nothing is forwarded before the first content arrives: an error Anthropic reports right
after ``message_start`` (it is overloaded) is still a plain HTTP error for the client. The
role goes out with the first content; tool calls keep their own index among the tool calls
(Anthropic's index counts every block). The finish reason goes out at ``message_delta``;
the usage (with its cost, added by the core) at ``message_stop``, in a chunk of its own
with no choices, as OpenAI sends it when ``stream_options.include_usage`` asks.
"""

from __future__ import annotations

import time
from typing import Any

from apimodels import ChatRequest, ModelConfig, StreamEvent, UnifiedRequest, UpstreamError, fastjson

from . import errors, messages


def _chunk(
    model: ModelConfig, state: dict[str, Any], delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    if not state.get("began"):  # the first chunk names the role
        state["began"] = True
        delta = {"role": "assistant", **delta}
    return {
        "id": state.get("id", ""),
        "object": "chat.completion.chunk",
        "created": state.setdefault("created", int(time.time())),
        "model": model.id,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _usage_wanted(request: UnifiedRequest) -> bool:
    options = request.stream_options if isinstance(request, ChatRequest) else None
    return options is not None and options.include_usage


def event(
    model: ModelConfig, request: UnifiedRequest, data: str, name: str | None, state: dict[str, Any]
) -> StreamEvent | None:
    """One event of the stream, normalized (None: nothing to forward)."""
    payload = fastjson.loads(data)
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    kind = name or payload.get("type")
    if kind == "error":
        raise errors.from_error(payload.get("error")) or UpstreamError(
            f"{errors.PROVIDER} reported an error while streaming"
        )
    if kind == "message_start":
        message = payload["message"]
        state["id"] = message["id"]
        state["usage"] = dict(message.get("usage") or {})
        return None
    if kind == "content_block_start":
        block = payload["content_block"]
        if block.get("type") == "tool_use":
            tools = state.setdefault("tools", {})
            tools[payload["index"]] = index = len(tools)
            return StreamEvent(_chunk(model, state, {"tool_calls": [_tool_start(block, index)]}))
        if block.get("type") == "text" and block.get("text"):
            return StreamEvent(_chunk(model, state, {"content": block["text"]}))
        return None
    if kind == "content_block_delta":
        delta = payload["delta"]
        if delta.get("type") == "text_delta":
            return StreamEvent(_chunk(model, state, {"content": delta["text"]}))
        if delta.get("type") == "input_json_delta":
            index = state["tools"][payload["index"]]
            arguments = {"index": index, "function": {"arguments": delta["partial_json"]}}
            return StreamEvent(_chunk(model, state, {"tool_calls": [arguments]}))
        return None  # thinking, signatures, citations: not shown
    if kind == "message_delta":
        # Cumulative counts: what it says replaces what message_start said.
        given = payload.get("usage") or {}
        state["usage"].update({k: v for k, v in given.items() if v is not None})
        stop = (payload.get("delta") or {}).get("stop_reason")
        finish = messages.FINISH_REASONS.get(stop, "stop") if stop else "stop"
        return StreamEvent(_chunk(model, state, {}, finish))
    if kind == "message_stop":
        found = messages.usage(state.get("usage"))
        chunk = None
        if found is not None and _usage_wanted(request):
            chunk = _chunk(model, state, {}) | {"choices": [], "usage": messages.usage_body(found)}
        return StreamEvent(chunk, found, done=True)
    return None  # ping, content_block_stop, and event types Anthropic may add


def _tool_start(block: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "index": index,
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": ""},
    }
