"""Anthropic's Messages API (``POST /v1/messages``) over the chat pipeline, for every chat
model, whichever provider serves it.

The mapping (docs/api.md, "Anthropic Messages API"):

- ``system`` (text or text blocks) -> a first ``system`` message; each message's blocks:
  ``text`` -> ``text`` parts, ``image`` (base64 or URL source) -> ``image_url`` parts (a
  ``data:`` URL for base64), an assistant's ``tool_use`` -> its ``tool_calls`` (``input``
  as JSON ``arguments``), a user's ``tool_result`` -> a ``tool`` message before the rest
  of that turn;
- ``tools`` (custom tools: ``name``, ``description``, ``input_schema``) -> function
  tools; ``tool_choice`` ``auto``/``any``/``tool``/``none`` -> ``auto``/``required``/the
  named function/``none`` (``disable_parallel_tool_use`` -> ``parallel_tool_calls:
  false``); ``max_tokens`` -> ``max_completion_tokens``; ``stop_sequences`` -> ``stop``;
  ``temperature``, ``top_p`` as they are;
- the answer: text -> a ``text`` block, each tool call -> a ``tool_use`` block; finish
  reason ``stop`` -> ``end_turn``, ``length`` -> ``max_tokens``, ``tool_calls`` ->
  ``tool_use``, ``content_filter`` -> ``refusal``; usage -> ``input_tokens`` (not counting
  cache reads, as Anthropic counts them), ``cache_read_input_tokens``, ``output_tokens``,
  plus ``usage.cost``: the charge in USD, a JSON number (not part of Anthropic's API).

Errors are in Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``, with
the gateway's honest statuses. Server tools, extended thinking, documents, ``top_k`` and
other features the API defines are refused with a 400 naming them.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import fastjson
from ..errors import APIError, AuthenticationError, InvalidRequest
from ..providers.dispatch import StreamResult
from ..schemas import MAX_OUTPUT_TOKENS, ChatRequest
from . import Dialect, DialectStream, Exchange, named_event, read_model

log = logging.getLogger("apimodels")
API = "Messages API"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Tool(_Strict):
    type: Literal["custom"] | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class CountTokensParams(_Strict):
    """``CountMessageTokensParams``: the fields of a message request that make its input."""

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[InputMessage], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None


class CreateMessageParams(CountTokensParams):
    """``CreateMessageParams`` of Anthropic's description: the fields served here."""

    max_tokens: Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)]
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    metadata: dict[str, Any] | None = None
    service_tier: Literal["auto", "standard_only"] | None = None


# --- request -------------------------------------------------------------------------


def _unsupported(what: str, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"{what} is not supported by this gateway's {API} (see docs/api.md).",
        param=param,
        code="unsupported_parameter",
    )


def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _unsupported(f"An image source of type '{source.get('type')}'", f"{param}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _text_of(content: Any, param: str) -> str | list[dict[str, Any]]:
    """A tool result's content: text, or text and image parts."""
    if isinstance(content, str) or content is None:
        return content or ""
    parts = []
    for i, block in enumerate(content):
        if block.get("type") == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif block.get("type") == "image":
            parts.append(_image(block, f"{param}[{i}]"))
        else:
            raise _unsupported(f"A tool result block of type '{block.get('type')}'", param)
    return parts


def _system(system: str | list[dict[str, Any]] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system
    texts = []
    for i, block in enumerate(system):
        if block.get("type") != "text":
            raise _unsupported(f"A system block of type '{block.get('type')}'", f"system[{i}]")
        texts.append(str(block.get("text", "")))
    return "\n\n".join(texts)


def _turn(message: InputMessage, param: str) -> list[dict[str, Any]]:
    """One Anthropic message as Chat Completions messages (tool results come first, each
    its own ``tool`` message)."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, block in enumerate(message.content):
        where = f"{param}.content[{i}]"
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image" and message.role == "user":
            parts.append(_image(block, where))
        elif kind == "tool_use" and message.role == "assistant":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
        elif kind == "tool_result" and message.role == "user":
            content = _text_of(block.get("content"), f"{where}.content")
            if block.get("is_error") and isinstance(content, str):
                content = f"Error: {content}"
            results.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content}
            )
        else:
            raise _unsupported(f"A {message.role} content block of type '{kind}'", where)
    out = results
    if message.role == "assistant":
        text = "".join(p["text"] for p in parts)
        reply: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            reply["tool_calls"] = calls
        out.append(reply)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _tools(request: CountTokensParams) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.tools:
        tools = []
        for i, raw in enumerate(request.tools):
            if raw.get("type") not in (None, "custom"):
                raise _unsupported(f"The server tool '{raw.get('type')}'", f"tools[{i}].type")
            tool = read_model(Tool, raw, API)
            function = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description is not None:
                function["description"] = tool.description
            tools.append({"type": "function", "function": function})
        out["tools"] = tools
    choice = request.tool_choice
    if choice is not None:
        if choice.type == "tool":
            if not choice.name:
                raise InvalidRequest(
                    "tool_choice of type tool needs a name.", param="tool_choice.name"
                )
            out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use and request.tools:
            out["parallel_tool_calls"] = False
    return out


def chat_request(request: CountTokensParams) -> ChatRequest:
    """The unified chat request a Messages API request reads as."""
    messages: list[dict[str, Any]] = []
    system = _system(request.system)
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(request.messages):
        messages += _turn(message, f"messages[{i}]")
    fields: dict[str, Any] = {"model": request.model, "messages": messages, **_tools(request)}
    if isinstance(request, CreateMessageParams):
        fields["max_completion_tokens"] = request.max_tokens
        if request.stop_sequences:
            fields["stop"] = request.stop_sequences
        for name in ("temperature", "top_p"):
            if (value := getattr(request, name)) is not None:
                fields[name] = value
        if request.stream:
            fields["stream"] = True
            fields["stream_options"] = {"include_usage": True}
    return read_model(ChatRequest, fields, API)


# --- answer --------------------------------------------------------------------------

#: Chat Completions' finish reasons as Anthropic's stop reasons.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def usage_object(usage: dict[str, Any] | None) -> dict[str, Any]:
    """A Chat Completions usage in Anthropic's terms, plus its ``cost`` when it has one
    (not before it is known: a stream's ``message_start``)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    out = {
        "input_tokens": prompt - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": cached,
        "cache_creation": None,
        "inference_geo": None,
        "server_tool_use": None,
        "service_tier": None,
    }
    if usage.get("cost") is not None:
        out["cost"] = usage["cost"]
    return out


def _arguments(text: str) -> dict[str, Any]:
    """A tool call's arguments as the ``input`` object Anthropic's clients expect."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        log.warning("a tool call's arguments were not JSON; answered as {}")
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _tool_use(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": call_id,
        "name": name,
        "input": arguments,
        "caller": {"type": "direct"},
    }


class MessagesExchange(Exchange):
    def __init__(self, request: CreateMessageParams, chat: ChatRequest) -> None:
        self.request = request
        self.chat = chat
        self.id = new_id("msg")

    def message(self, content: list[dict[str, Any]], model: str) -> dict[str, Any]:
        """The Message object; its usage is zero until known (``message_start``)."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": model,
            "stop_reason": None,
            "stop_sequence": None,
            "stop_details": None,
            "container": None,
            "usage": usage_object(None),
        }

    def answer(self, completion: dict[str, Any]) -> dict[str, Any]:
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        text = message.get("content") or message.get("refusal")
        if text:
            content.append({"type": "text", "text": text, "citations": None})
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            content.append(
                _tool_use(
                    call.get("id") or new_id("toolu"),
                    fn.get("name", ""),
                    _arguments(fn.get("arguments", "")),
                )
            )
        body = self.message(content, completion.get("model") or self.chat.model)
        body["stop_reason"] = STOP_REASONS.get(choice.get("finish_reason"), "end_turn")
        body["usage"] = usage_object(completion.get("usage"))
        return body

    def stream(self) -> MessagesStream:
        return MessagesStream(self)


class MessagesStream(DialectStream):
    """Anthropic's named events from Chat Completions chunks: ``message_start`` and a
    ``ping`` with the first chunk; per content block ``content_block_start``, its
    ``content_block_delta`` events (``text_delta``, ``input_json_delta``) and
    ``content_block_stop``; then ``message_delta`` (stop reason, usage and cost) and
    ``message_stop``; or an ``error`` event if the stream fails after its start."""

    def __init__(self, exchange: MessagesExchange) -> None:
        self.exchange = exchange
        self.started = False
        self.blocks = 0  # content blocks started
        self.open: str | None = None  # "text" or "tool:<chat index>", the open block
        self.finish_reason: str | None = None
        self.chat_usage: dict[str, Any] | None = None
        self.model = exchange.chat.model

    def _event(self, kind: str, **fields: Any) -> bytes:
        return named_event(kind, fastjson.dumps({"type": kind, **fields}))

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        self.model = chunk.get("model") or self.model
        message = self.exchange.message([], self.model)
        return self._event("message_start", message=message) + self._event("ping")

    def _stop(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return self._event("content_block_stop", index=self.blocks - 1)

    def _begin(self, key: str, block: dict[str, Any]) -> bytes:
        out = self._stop()
        self.open = key
        self.blocks += 1
        return out + self._event("content_block_start", index=self.blocks - 1, content_block=block)

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.started else self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self.chat_usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                if self.open != "text":
                    out += self._begin("text", {"type": "text", "text": "", "citations": None})
                out += self._event(
                    "content_block_delta",
                    index=self.blocks - 1,
                    delta={"type": "text_delta", "text": text},
                )
            for call in delta.get("tool_calls") or ():
                key = f"tool:{call.get('index', 0)}"
                fn = call.get("function") or {}
                if self.open != key:
                    block = _tool_use(call.get("id") or new_id("toolu"), fn.get("name") or "", {})
                    out += self._begin(key, block)
                if fn.get("arguments"):
                    out += self._event(
                        "content_block_delta",
                        index=self.blocks - 1,
                        delta={"type": "input_json_delta", "partial_json": fn["arguments"]},
                    )
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def end(self, result: StreamResult) -> bytes:
        if result.error is not None:
            return self._event("error", error=error_object(result.error), request_id=None)
        out = (b"" if self.started else self._start({})) + self._stop()
        usage = usage_object(self.charged_usage(self.chat_usage))
        delta = {
            "stop_reason": STOP_REASONS.get(self.finish_reason or "stop", "end_turn"),
            "stop_sequence": None,
            "stop_details": None,
            "container": None,
        }
        delta_usage = {
            "input_tokens": usage["input_tokens"],
            "output_tokens": usage["output_tokens"],
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": usage["cache_read_input_tokens"],
            "server_tool_use": None,
            "cost": usage.get("cost"),
        }
        out += self._event("message_delta", delta=delta, usage=delta_usage)
        return out + self._event("message_stop")


#: Anthropic's error type for each status the gateway answers (its ``ErrorType``).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    410: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_object(exc: APIError) -> dict[str, Any]:
    message = exc.body()["error"]["message"]  # redacted
    return {"type": ERROR_TYPES.get(exc.status, "api_error"), "message": message}


class MessagesAPI(Dialect):
    """``POST /v1/messages``."""

    def read(self, body: dict[str, Any], account_id: str) -> MessagesExchange:
        request = read_model(CreateMessageParams, body, API)
        return MessagesExchange(request, chat_request(request))

    def credentials(self, headers: Any) -> str | None:
        """Anthropic's clients send ``x-api-key``; OpenAI-style ``Authorization: Bearer``
        works too."""
        authorization = headers.get("authorization")
        if not authorization and (key := headers.get("x-api-key")):
            return f"Bearer {key}"
        if not authorization:
            raise AuthenticationError(
                "Missing API key: send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>'",
                code="missing_api_key",
            )
        return authorization

    def error_body(self, exc: APIError, request_id: str) -> dict[str, Any]:
        return {"type": "error", "error": error_object(exc), "request_id": request_id}
