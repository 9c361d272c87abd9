"""OpenAI's Responses API (``POST /v1/responses``) over the chat pipeline.

The mapping (docs/api.md, "Responses API"):

- ``instructions`` -> a first ``system`` message; ``input`` as a string -> one ``user``
  message; as a list of items: messages (``input_text`` -> ``text``, ``input_image`` ->
  ``image_url``, an assistant's ``output_text``/``refusal`` -> its text), ``function_call``
  items -> an assistant message's ``tool_calls`` (consecutive calls in one message),
  ``function_call_output`` -> a ``tool`` message;
- ``previous_response_id`` -> the stored conversation before the new input;
- function ``tools`` and ``tool_choice`` -> Chat Completions' function tools; ``text.format``
  -> ``response_format``; ``max_output_tokens`` -> ``max_completion_tokens``;
  ``temperature``, ``top_p``, ``parallel_tool_calls``, ``reasoning.effort`` as they are;
- the answer: the message's text -> a ``message`` item with one ``output_text`` part (a
  refusal -> a ``refusal`` part), each tool call -> a ``function_call`` item; finish reason
  ``length`` -> status ``incomplete`` (``max_output_tokens``), ``content_filter`` ->
  ``incomplete`` (``content_filter``); usage -> ``input_tokens``, ``output_tokens`` and
  their details, plus ``cost`` (a JSON number, USD).

Anything else the API defines (built-in tools, ``background``, ``conversation``, file
inputs...) is refused with a 400 naming it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import fastjson
from ..errors import APIError, InvalidRequest
from ..providers.dispatch import StreamResult
from ..schemas import MAX_OUTPUT_TOKENS, ChatRequest
from ..store.responses import StoredResponses
from . import Dialect, DialectStream, Exchange, named_event, read_model

API = "Responses API"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class FunctionTool(_Strict):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(_Strict):
    type: Literal["text", "json_schema", "json_object"]
    name: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    description: str | None = None
    strict: bool | None = None


class TextParam(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class CreateResponse(_Strict):
    """``CreateResponse`` of OpenAI's description: the fields this gateway serves, and the
    harmless ones it accepts and echoes (``metadata``, ``user``...)."""

    model: Annotated[str, Field(min_length=1)]
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    reasoning: Reasoning | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    store: bool = True
    background: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = None


# --- request -------------------------------------------------------------------------


def _unsupported(what: str, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"{what} is not supported by this gateway's {API} (see docs/api.md).",
        param=param,
        code="unsupported_parameter",
    )


def _part(part: Any, param: str) -> dict[str, Any]:
    """One content part of an input message, as a Chat Completions part."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise _unsupported("An image by file_id (rather than image_url)", param)
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind in ("input_file", "input_audio"):
        raise _unsupported(f"An '{kind}' part", param)
    raise InvalidRequest(f"Invalid content part at '{param}'.", param=param, code="invalid_value")


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(
            f"Invalid value for '{param}.role': expected user, assistant, system or developer.",
            param=f"{param}.role",
            code="invalid_value",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Missing or invalid '{param}.content'.", param=f"{param}.content", code="invalid_value"
        )
    parts = [_part(p, f"{param}.content[{i}]") for i, p in enumerate(content)]
    if role == "assistant" or role in ("system", "developer"):  # text only in chat
        return {"role": role, "content": "".join(p.get("text", "") for p in parts)}
    return {"role": role, "content": parts}


def _tool_output(output: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return [_part(p, f"{param}.output[{i}]") for i, p in enumerate(output)]
    raise InvalidRequest(f"Invalid '{param}.output'.", param=f"{param}.output")


def input_messages(items: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The input as Chat Completions messages."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            if not all(isinstance(v, str) for v in (call["id"], *call["function"].values())):
                raise InvalidRequest(
                    f"'{param}' needs call_id, name and arguments (strings).", param=param
                )
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequest(f"'{param}.call_id' is required.", param=f"{param}.call_id")
            output = _tool_output(item.get("output"), param)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "reasoning":
            continue  # the model's own notes from an earlier turn: nothing a chat model reads
        else:
            raise _unsupported(f"An input item of type '{kind}'", f"{param}.type")
    return messages


def _tools(request: CreateResponse) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.tools:
        tools = []
        for i, raw in enumerate(request.tools):
            if raw.get("type") != "function":
                raise _unsupported(f"The built-in tool '{raw.get('type')}'", f"tools[{i}].type")
            tool = read_model(FunctionTool, raw, API)
            function = tool.model_dump(exclude={"type"}, exclude_none=True)
            tools.append({"type": "function", "function": function})
        out["tools"] = tools
    choice = request.tool_choice
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequest(
                "Invalid value for 'tool_choice': expected auto, none or required.",
                param="tool_choice",
            )
        out["tool_choice"] = choice
    elif isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise _unsupported(f"tool_choice of type '{choice.get('type')}'", "tool_choice")
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    if request.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = request.parallel_tool_calls
    return out


def _response_format(text: TextParam | None) -> dict[str, Any] | None:
    fmt = text.format if text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if not fmt.name or fmt.schema_ is None:
        raise InvalidRequest(
            "text.format of type json_schema needs a name and a schema.", param="text.format"
        )
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


# --- answer --------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage_object(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """A Chat Completions usage (with ``cost``) as the Responses API's."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
        "cost": usage.get("cost"),
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": parts,
    }


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


#: How a Chat Completions finish reason ends a response: (status, incomplete reason).
_ENDINGS: dict[str | None, tuple[str, str | None]] = {
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}


class ResponsesExchange(Exchange):
    def __init__(
        self,
        request: CreateResponse,
        chat: ChatRequest,
        history: list[dict[str, Any]],
        keep: Callable[[str, dict[str, Any], list[dict[str, Any]]], None] | None,
    ) -> None:
        self.request = request
        self.chat = chat
        self.history = history  # the conversation before the answer, without instructions
        self.keep = keep  # stores an answer (store: true)
        self.id = new_id("resp")
        self.created_at = int(time.time())

    def envelope(self, status: str) -> dict[str, Any]:
        """The Response object's fields that echo the request."""
        r = self.request
        fmt = r.text.format if r.text and r.text.format else None
        body = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": None,
            "error": None,
            "incomplete_details": None,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "model": self.chat.model,
            "output": [],
            "parallel_tool_calls": r.parallel_tool_calls is not False,
            "previous_response_id": r.previous_response_id,
            "reasoning": r.reasoning.model_dump() if r.reasoning else None,
            "store": r.store,
            "temperature": r.temperature,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True)}
            if fmt
            else {"format": {"type": "text"}},
            "tool_choice": r.tool_choice if r.tool_choice is not None else "auto",
            "tools": [
                {
                    "type": "function",
                    "name": t.get("name"),
                    "description": t.get("description"),
                    "parameters": t.get("parameters"),
                    "strict": t.get("strict"),
                }
                for t in r.tools or []
            ],
            "top_p": r.top_p,
            "truncation": "disabled",
            "metadata": r.metadata or {},
        }
        if r.user is not None:
            body["user"] = r.user
        return body

    def finish(
        self,
        body: dict[str, Any],
        finish_reason: str | None,
        reply: dict[str, Any],
    ) -> dict[str, Any]:
        """Complete the Response ``body`` (its output set) and keep it if asked."""
        status, reason = _ENDINGS.get(finish_reason, ("completed", None))
        body["status"] = status
        body["completed_at"] = int(time.time())
        if reason is not None:
            body["incomplete_details"] = {"reason": reason}
        if self.keep is not None:
            self.keep(self.id, body, [*self.history, reply])
        return body

    def answer(self, completion: dict[str, Any]) -> dict[str, Any]:
        choices = completion.get("choices") or [{}]
        message = choices[0].get("message") or {}
        output: list[dict[str, Any]] = []
        text, refusal = message.get("content"), message.get("refusal")
        if text or refusal:
            part = _text_part(text) if text else {"type": "refusal", "refusal": refusal}
            output.append(_message_item(new_id("msg"), [part], "completed"))
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            output.append(
                _call_item(
                    new_id("fc"),
                    call.get("id") or new_id("call"),
                    fn.get("name", ""),
                    fn.get("arguments", ""),
                    "completed",
                )
            )
        body = self.envelope("completed")
        body["output"] = output
        if (usage := usage_object(completion.get("usage"))) is not None:
            body["usage"] = usage
        reply = {"role": "assistant", "content": text}
        if message.get("tool_calls"):
            reply["tool_calls"] = message["tool_calls"]
        return self.finish(body, choices[0].get("finish_reason"), reply)

    def stream(self) -> ResponsesStream:
        return ResponsesStream(self)


def _failure_code(error: APIError) -> str:
    """A failed response's ``error.code``, one of the API's ``ResponseErrorCode`` (the
    ``error`` event before it carries the gateway's own code)."""
    if error.status == 429:
        return "rate_limit_exceeded"
    if error.status == 403:
        return "invalid_prompt"
    return "server_error"


class ResponsesStream(DialectStream):
    """The Responses API's typed events from Chat Completions chunks, each with its
    ``sequence_number``: ``response.created`` and ``response.in_progress`` with the first
    chunk; per output item ``response.output_item.added``, its deltas and its ``.done``
    events; ``response.completed`` (or ``response.incomplete``) with the usage and cost at
    the end, or ``error`` then ``response.failed`` if the stream fails after its start."""

    def __init__(self, exchange: ResponsesExchange) -> None:
        self.exchange = exchange
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # items, finished or open
        self.open: dict[str, Any] | None = None  # the item being written
        self.text = ""  # of the open message item
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its item
        self.finish_reason: str | None = None
        self.chat_usage: dict[str, Any] | None = None
        self.started = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return named_event(kind, fastjson.dumps(payload))

    def _start(self) -> bytes:
        self.started = True
        body = self.exchange.envelope("in_progress")
        return self._event("response.created", response=body) + self._event(
            "response.in_progress", response=body
        )

    def _close(self) -> bytes:
        """The ``.done`` events of the open item."""
        item, self.open = self.open, None
        if item is None:
            return b""
        index = self.output.index(item)
        out = b""
        if item["type"] == "message":
            part = _text_part(self.text)
            out += self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=self.text,
                logprobs=[],
            )
            out += self._event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
            item["content"] = [part]
        else:
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                name=item["name"],
                output_index=index,
                arguments=item["arguments"],
            )
        item["status"] = "completed"
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def _add(self, item: dict[str, Any]) -> bytes:
        out = self._close()
        self.output.append(item)
        self.open = item
        shown = {**item, "content": []} if item["type"] == "message" else {**item, "arguments": ""}
        return out + self._event(
            "response.output_item.added", output_index=len(self.output) - 1, item=shown
        )

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.started else self._start()
        if isinstance(chunk.get("usage"), dict):
            self.chat_usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # one output: n > 1 has no Responses shape
            delta = choice.get("delta") or {}
            content = delta.get("content") or delta.get("refusal")
            if content:
                if self.open is None or self.open["type"] != "message":
                    out += self._add(_message_item(new_id("msg"), [], "in_progress"))
                    out += self._event(
                        "response.content_part.added",
                        item_id=self.open["id"],  # type: ignore[index]
                        output_index=len(self.output) - 1,
                        content_index=0,
                        part=_text_part(""),
                    )
                    self.text = ""
                self.text += content
                out += self._event(
                    "response.output_text.delta",
                    item_id=self.open["id"],  # type: ignore[index]
                    output_index=len(self.output) - 1,
                    content_index=0,
                    delta=content,
                    logprobs=[],
                )
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        fn = call.get("function") or {}
        out = b""
        item = self.calls.get(index)
        if item is None:
            item = _call_item(
                new_id("fc"),
                call.get("id") or new_id("call"),
                fn.get("name") or "",
                "",
                "in_progress",
            )
            self.calls[index] = item
            out += self._add(item)
        pieces = fn.get("arguments") or ""
        if pieces:
            item["arguments"] += pieces
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=self.output.index(item),
                delta=pieces,
            )
        return out

    def end(self, result: StreamResult) -> bytes:
        out = b"" if self.started else self._start()
        if result.error is not None:
            out += self._close()
            error = result.error.body()["error"]
            out += self._event(
                "error", code=error["code"], message=error["message"], param=error["param"]
            )
            body = self.exchange.envelope("failed")
            body["output"] = self.output
            body["error"] = {"code": _failure_code(result.error), "message": error["message"]}
            return out + self._event("response.failed", response=body)
        out += self._close()
        body = self.exchange.envelope("completed")
        body["output"] = self.output
        if (usage := usage_object(self.charged_usage(self.chat_usage))) is not None:
            body["usage"] = usage
        calls = [
            {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            for item in self.output
            if item["type"] == "function_call"
        ]
        reply: dict[str, Any] = {"role": "assistant", "content": self._text() or None}
        if calls:
            reply["tool_calls"] = calls
        body = self.exchange.finish(body, self.finish_reason, reply)
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, response=body)

    def _text(self) -> str:
        return "".join(
            part.get("text", "")
            for item in self.output
            if item["type"] == "message"
            for part in item["content"]
        )


class ResponsesAPI(Dialect):
    """``POST /v1/responses``; answers kept in ``store`` when the request says ``store``."""

    def __init__(self, store: StoredResponses | None) -> None:
        self.store = store

    def read(self, body: dict[str, Any], account_id: str) -> ResponsesExchange:
        request = read_model(CreateResponse, body, API)
        if request.background:
            raise _unsupported("Running a response in the background", "background")
        history: list[dict[str, Any]] = []
        if request.previous_response_id is not None:
            found = self.store.get(request.previous_response_id, account_id) if self.store else None
            if found is None:
                raise InvalidRequest(
                    f"Previous response with id '{request.previous_response_id}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            history = found[1]
        history += input_messages(request.input)
        if not history:
            raise InvalidRequest(
                "Missing required parameter: 'input'.",
                param="input",
                code="missing_required_parameter",
            )
        messages = list(history)
        if request.instructions:
            messages.insert(0, {"role": "system", "content": request.instructions})
        fields: dict[str, Any] = {"model": request.model, "messages": messages, **_tools(request)}
        for name in ("temperature", "top_p"):
            if (value := getattr(request, name)) is not None:
                fields[name] = value
        if request.max_output_tokens is not None:
            fields["max_completion_tokens"] = request.max_output_tokens
        if (response_format := _response_format(request.text)) is not None:
            fields["response_format"] = response_format
        if request.reasoning is not None and request.reasoning.effort is not None:
            fields["reasoning_effort"] = request.reasoning.effort
        if request.stream:
            fields["stream"] = True
            fields["stream_options"] = {"include_usage": True}
        chat = read_model(ChatRequest, fields, API)
        keep = None
        if request.store and self.store is not None:
            store = self.store

            def keep(response_id: str, answer: dict[str, Any], convo: list[Any]) -> None:
                store.put(response_id, account_id, fastjson.dumps(answer), fastjson.dumps(convo))

        return ResponsesExchange(request, chat, history, keep)
