"""Chat Completions (the unified request) to Anthropic's Messages API, and back.

Pure functions over dicts: ``to_messages`` builds the body of ``POST /v1/messages`` from a
``ChatRequest``; ``to_completion`` turns a Message into a ``chat.completion``; ``usage``
reads Anthropic's usage into the core's ``Usage``.

What maps where:

- ``system`` and ``developer`` messages become the top-level ``system`` blocks (Anthropic
  has no system role), in order;
- text parts stay text blocks; ``image_url`` parts become image blocks (a ``data:`` URL as
  a base64 source, an http(s) URL as a url source);
- an assistant's ``tool_calls`` become ``tool_use`` blocks, ``tool`` messages
  ``tool_result`` blocks in a user turn; consecutive turns of one role are merged, as
  Anthropic wants tool results together;
- ``tools``, ``tool_choice`` (``required`` is Anthropic's ``any``) and
  ``parallel_tool_calls: false`` (``disable_parallel_tool_use``); ``stop`` is
  ``stop_sequences``; ``user`` is ``metadata.user_id``;
- ``cache_control`` on a content part, a tool, or the request itself is passed on
  (Anthropic's prompt caching, as OpenRouter accepts it in Chat Completions). Only the
  default five-minute cache is priced: a ``ttl`` of ``1h`` is refused;
- sampling knobs Anthropic lacks (``frequency_penalty``, ``presence_penalty``, ``seed``,
  ``logit_bias``) are left out; what would change the answer's shape (``n`` above 1, a
  ``response_format`` other than text) is refused.

Anthropic's ``input_tokens`` leave out the tokens read from or written to the cache; the
unified usage counts every input token in ``prompt_tokens`` (as OpenAI does) with the cache
reads in ``prompt_tokens_details.cached_tokens`` and the writes in
``prompt_tokens_details.cache_write_tokens`` (OpenRouter's name).
"""

from __future__ import annotations

import json
import time
from typing import Any

from apimodels import ChatRequest, InvalidRequest, ModelConfig, Usage

#: Output ceiling for a model whose catalog entry has no max_output_tokens (Anthropic
#: requires max_tokens).
DEFAULT_MAX_TOKENS = 4096
#: Image types Anthropic reads.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
#: Why a Message stopped, as a Chat Completions finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _refuse(message: str, param: str, code: str = "unsupported_parameter") -> InvalidRequest:
    return InvalidRequest(f"{message} (Anthropic models)", param=param, code=code)


def _cache_control(node: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``cache_control`` of ``node``, if any, as a dict to merge into a block."""
    control = node.get("cache_control")
    if control is None:
        return {}
    if not isinstance(control, dict) or control.get("type") != "ephemeral":
        raise _refuse('cache_control is {"type": "ephemeral"}', where, "invalid_value")
    if control.get("ttl", "5m") != "5m":
        raise _refuse("only the 5-minute prompt cache is offered: leave out ttl", where)
    return {"cache_control": control}


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest("an image_url part needs image_url.url", param=where)
    if url.startswith("data:"):
        head, comma, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not comma or encoding != "base64" or media_type not in IMAGE_TYPES:
            raise InvalidRequest(
                f"an image data URL is data:TYPE;base64,DATA with TYPE one of {', '.join(IMAGE_TYPES)}",
                param=where,
                code="invalid_image",
            )
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise InvalidRequest(
            "an image is an http(s) URL or a data URL", param=where, code="invalid_image"
        )
    return {"type": "image", "source": source, **_cache_control(part, where)}


def _blocks(content: Any, where: str, *, images: bool) -> list[dict[str, Any]]:
    """A message's content as Anthropic content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for i, part in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"], **_cache_control(part, at)})
        elif kind == "image_url" and images:
            blocks.append(_image(part, at))
        else:
            raise _refuse(f"content parts of type {kind!r} are not supported here", at)
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest("a tool call needs function.name", param=where)
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(
            "a tool call's function.arguments is a JSON object", param=where, code="invalid_value"
        )
    return {"type": "tool_use", "id": call.get("id"), "name": function["name"], "input": arguments}


def _turns(request: ChatRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages): roles mapped, consecutive turns of a role merged."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        extra = message.model_extra or {}
        if message.role in ("system", "developer"):
            system += _blocks(message.content, where, images=False)
            continue
        if message.role == "user":
            role, blocks = "user", _blocks(message.content, where, images=True)
        elif message.role == "assistant":
            role, blocks = "assistant", _blocks(message.content, where, images=False)
            for j, call in enumerate(extra.get("tool_calls") or []):
                blocks.append(_tool_use(call, f"{where}.tool_calls[{j}]"))
        elif message.role == "tool":
            tool_call_id = extra.get("tool_call_id")
            if not isinstance(tool_call_id, str) or not tool_call_id:
                raise InvalidRequest("a tool message needs tool_call_id", param=where)
            result = _blocks(message.content, where, images=True)
            role = "user"
            blocks = [{"type": "tool_result", "tool_use_id": tool_call_id, "content": result}]
        else:  # "function", OpenAI's deprecated form of tool results
            raise _refuse("function messages are not supported: use tools", f"{where}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidRequest("messages need a user message with content", param="messages")
    return system, turns


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise _refuse("only function tools are supported", f"tools[{i}]")
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        entry = {"name": function.get("name"), "input_schema": schema}
        if function.get("description"):
            entry["description"] = function["description"]
        out.append(entry | _cache_control(tool, f"tools[{i}]"))
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        mapped: dict[str, Any] | None = None if parallel is not False else {"type": "auto"}
    elif choice in ("auto", "none"):
        mapped = {"type": choice}
    elif choice == "required":
        mapped = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        mapped = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise InvalidRequest("tool_choice is auto, none, required or a function", "tool_choice")
    if mapped is not None and parallel is False and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    return mapped


def max_tokens(model: ModelConfig, request: ChatRequest) -> int:
    """The output limit sent (Anthropic requires one): the request's, else the model's."""
    asked = request.max_completion_tokens or request.max_tokens
    return asked or model.max_output_tokens or DEFAULT_MAX_TOKENS


def uses_cache(request: ChatRequest) -> bool:
    """Whether the request asks for prompt caching anywhere (it may then write the whole
    prompt to the cache, at the cache-write price)."""
    if (request.model_extra or {}).get("cache_control") is not None:
        return True
    for message in request.messages:
        if isinstance(message.content, list) and any(
            isinstance(p, dict) and p.get("cache_control") for p in message.content
        ):
            return True
    tools = (request.model_extra or {}).get("tools") or []
    return any(isinstance(t, dict) and t.get("cache_control") for t in tools)


def to_messages(model: ModelConfig, request: ChatRequest) -> dict[str, Any]:
    """The body of ``POST /v1/messages`` for a unified chat request."""
    extra = request.model_extra or {}
    if (request.n or 1) > 1:
        raise _refuse("n must be 1: Anthropic answers one choice", "n")
    response_format = extra.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise _refuse("response_format is not supported", "response_format")
    system, turns = _turns(request)
    body: dict[str, Any] = {
        "model": model.upstream,
        "max_tokens": max_tokens(model, request),
        "messages": turns,
    }
    if system:
        body["system"] = system
    if extra.get("tools"):
        body["tools"] = _tools(extra["tools"])
    choice = _tool_choice(extra.get("tool_choice"), extra.get("parallel_tool_calls"))
    if choice is not None and "tools" in body:
        body["tool_choice"] = choice
    for name in ("temperature", "top_p", "top_k"):
        if extra.get(name) is not None:
            body[name] = extra[name]
    stop = extra.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(extra.get("user"), str):
        body["metadata"] = {"user_id": extra["user"]}
    if extra.get("cache_control") is not None:
        body |= _cache_control(extra, "cache_control")
    if request.stream:
        body["stream"] = True
    return body


# --- answers ---------------------------------------------------------------------------


def usage(raw: Any) -> Usage | None:
    """Anthropic's usage as the core's: every input token in ``input_tokens``, cache reads
    and writes as parts of it. Counts are passed as sent (the core refuses what is not a
    count); None when there is no usage."""
    if not isinstance(raw, dict) or "output_tokens" not in raw:
        return None
    fresh = raw.get("input_tokens") or 0
    read = raw.get("cache_read_input_tokens") or 0
    written = raw.get("cache_creation_input_tokens") or 0
    counts = (fresh, read, written)
    total = sum(counts) if all(type(c) is int for c in counts) else fresh
    return Usage(
        input_tokens=total,
        cached_input_tokens=read,
        cache_write_tokens=written,
        output_tokens=raw["output_tokens"],
    )


def usage_body(found: Usage) -> dict[str, Any]:
    """The Chat Completions ``usage`` of a core ``Usage`` read by ``usage``."""
    return {
        "prompt_tokens": found.input_tokens,
        "completion_tokens": found.output_tokens,
        "total_tokens": found.input_tokens + found.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": found.cached_input_tokens,
            "cache_write_tokens": found.cache_write_tokens,
        },
    }


def tool_call(block: dict[str, Any], index: int | None = None) -> dict[str, Any]:
    call = {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": json.dumps(block.get("input") or {})},
    }
    return call if index is None else {"index": index, **call}


def to_completion(model: ModelConfig, message: dict[str, Any]) -> dict[str, Any]:
    """A Message as a ``chat.completion`` (thinking blocks are not shown)."""
    blocks = message["content"]
    text = "".join(b["text"] for b in blocks if b.get("type") == "text")
    calls = [tool_call(b) for b in blocks if b.get("type") == "tool_use"]
    reply: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    stop = message.get("stop_reason")
    body: dict[str, Any] = {
        "id": message["id"],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model.id,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(stop, "stop") if stop else None,
            }
        ],
    }
    found = usage(message.get("usage"))
    if found is not None:
        body["usage"] = usage_body(found)
    return body
