"""A simulator of the OpenAI API, for sandbox mode and the tests.

``create_app()`` serves OpenAI's paths under ``/v1`` with OpenAI's payloads, headers and
error bodies (``{"error": {"message", "type", "param", "code"}}``):

- ``GET /v1/models``, ``GET /v1/models/{model}``: the models in ``MODELS``;
- ``POST /v1/chat/completions``: a templated reply that quotes the last user message, with
  ``n``, ``max_tokens`` / ``max_completion_tokens`` (finish_reason ``length``) and
  streaming (``stream_options.include_usage`` adds the final usage chunk);
- ``POST /v1/embeddings``: unit vectors drawn from a hash of the input (truncated and
  renormalised for ``dimensions``, as OpenAI does), as floats or base64 float32;
- ``POST /v1/images/generations``: real PNG files, 64 pixels on the short side whatever the
  requested size (the size is checked and reported, not drawn), as ``b64_json`` or as URLs
  the simulator itself serves under ``/_sim/files/``;
- ``POST /v1/audio/speech``: real audio, streamed in chunks: a sine tone for wav, pcm and
  flac; silent frames for mp3, opus and aac (see ``media``). 15 characters a second;
  gpt-4o-mini-tts also takes ``instructions`` and ``stream_format: "sse"``: the same audio
  in ``speech.audio.delta`` events, then a ``speech.audio.done`` event with the usage
  (the input's and the instructions' text tokens in, 20 audio tokens a second out), the
  only place the API reports it;
- ``POST /v1/audio/transcriptions``: a templated transcript whose length follows the
  audio's real duration (read from its headers, else guessed from its size), in every
  ``response_format``; the gpt-4o transcription models answer json only, with a
  token usage (10 audio tokens a second, the prompt's and the transcript's text tokens);
- ``POST /v1/moderations``: scores for the 13 categories from keyword lists
  (``MODERATION_WORDS``).

Parameters are checked as OpenAI checks them, with its 400 ``invalid_request_error`` bodies:
numeric ones against the bounds of its OpenAPI description (``temperature`` 0-2, ``top_p``
0-1, penalties -2 to 2, ``n`` 1-128, ``speed`` 0.25-4 ...) whatever the number's size, and
bodies as strict JSON (no ``NaN`` or ``Infinity``).

Outputs are deterministic functions of the input (ids and timestamps aside). Usage comes
from ``tokens()``: one token per 4 characters, rounded up.

A request whose ``tool_choice`` obliges a call (``"required"``: the first tool; or a named
function) is answered with a call to that function (finish_reason ``tool_calls``, streamed
as ``tool_calls`` deltas), its arguments filled from the schema's required properties;
with ``"auto"`` the reply is text.

Not simulated: real language, tools called by choice, logprobs,
vision and audio understanding, image edits and variations, output formats other than PNG,
the Responses, Files, Batch and other APIs, organizations and projects, and rate limits
other than the ones you ask for.

Test knobs, in ``app.state.knobs`` or as JSON to ``POST /_sim/knobs`` (merged into the
current state; ``DELETE`` restores the defaults):

- ``latency``: seconds to wait before answering any ``/v1`` request;
- ``stream_delay``: seconds between two chunks of a stream (chat chunks, audio chunks);
- ``fail``: a queue of one-shot failures, each used by the next ``/v1`` request whose path
  matches its ``path`` (any path when absent): ``{"kind": "error", "status": 429}`` answers
  OpenAI's error body for that status (429 with ``retry-after`` and ``x-ratelimit-*``
  headers; ``message``, ``type``, ``code`` and ``param`` keys override the body);
  ``{"kind": "malformed"}`` a 200 whose JSON body is cut short; ``{"kind": "cut_stream"}``
  drops the connection mid-body (a chat stream after a few chunks, before its
  finish_reason, usage and ``[DONE]``); ``{"kind": "timeout"}`` waits ``seconds`` (60 by
  default, or until the client gives up) before answering normally.

``GET /_sim/requests`` lists the last ``RECORDED`` requests received under ``/v1`` (method,
path, headers without ``authorization``, the JSON body or the form fields, uploaded files'
names and sizes), so tests can check what an upstream client sent; ``DELETE`` clears it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import re
import secrets
import struct
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from apimodels.providers import media

# --- what the simulator knows ------------------------------------------------------------

CHAT_MODELS = (
    "gpt-6.1-sol",
    "gpt-6.1-terra",
    "gpt-6-luna",
    "gpt-5",
    "gpt-5-mini",
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
)
#: Reasoning models: they bill hidden reasoning tokens, take only max_completion_tokens and
#: the default temperature, like OpenAI's.
REASONING_MODELS = ("gpt-6.1-sol", "gpt-6.1-terra", "gpt-6-luna", "gpt-5", "gpt-5-mini")
EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
IMAGE_SIZES = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "gpt-image-1": ("1024x1024", "1536x1024", "1024x1536", "auto"),
    "gpt-image-2": ("1024x1024", "1536x1024", "1024x1536", "auto"),
}
IMAGE_QUALITIES = {
    "dall-e-2": ("standard", "auto"),
    "dall-e-3": ("standard", "hd", "auto"),
    "gpt-image-1": ("low", "medium", "high", "auto"),
    "gpt-image-2": ("low", "medium", "high", "auto"),
}
#: GPT Image output tokens per image, by quality and size (OpenAI's published table).
IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
#: Speech models priced per token: they take instructions, stream events (stream_format
#: "sse") and report their usage in the last one.
TOKEN_SPEECH_MODELS = ("gpt-4o-mini-tts",)
SPEECH_MODELS = ("tts-1", "tts-1-hd", *TOKEN_SPEECH_MODELS)
#: Audio tokens per second of speech (about what gpt-4o-mini-tts is billed for).
AUDIO_OUTPUT_TOKENS_PER_SECOND = 20
#: Transcription models billed per token: they answer json only, with a token usage.
TOKEN_TRANSCRIPTION_MODELS = ("gpt-4o-transcribe", "gpt-4o-mini-transcribe")
#: Audio tokens per second of input audio (OpenAI: one per 100 ms).
AUDIO_TOKENS_PER_SECOND = 10
TRANSCRIPTION_MODELS = ("gpt-transcribe", "whisper-1", *TOKEN_TRANSCRIPTION_MODELS)
MODERATION_MODELS = ("omni-moderation-latest",)
#: Every model the simulator knows, as ``GET /v1/models`` lists them.
MODELS = (
    *CHAT_MODELS,
    *EMBEDDING_DIMENSIONS,
    *IMAGE_SIZES,
    *SPEECH_MODELS,
    *TRANSCRIPTION_MODELS,
    *MODERATION_MODELS,
)
#: Speech formats and the content types OpenAI sends them with.
SPEECH_FORMATS = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
#: Words that raise a moderation category's score to about 0.9 (whole words or prefixes).
MODERATION_WORDS = {
    "hate": ("hate", "vermin"),
    "hate/threatening": ("exterminate them",),
    "harassment": ("idiot", "loser"),
    "harassment/threatening": ("hunt you down",),
    "illicit": ("counterfeit", "launder"),
    "illicit/violent": ("pipe bomb",),
    "self-harm": ("hurt myself",),
    "self-harm/intent": ("end my life",),
    "self-harm/instructions": ("how to self-harm",),
    "sexual": ("explicit sex",),
    "sexual/minors": ("sexual content involving a child",),
    "violence": ("kill", "stab"),
    "violence/graphic": ("gore", "dismember"),
}
#: Categories that omni-moderation also scores on images.
IMAGE_MODERATION_CATEGORIES = frozenset(
    (
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "violence",
        "violence/graphic",
    )
)
FAILURE_KINDS = ("error", "malformed", "cut_stream", "timeout")
#: How many requests ``GET /_sim/requests`` remembers.
RECORDED = 200
SAMPLE_RATE = 24000  # OpenAI's speech is 24 kHz mono
KEYS_URL = "https://platform.openai.com/account/api-keys"


def tokens(text: str) -> int:
    """The simulator's tokenizer: one token per 4 characters, rounded up (about what
    OpenAI's BPE tokenizers give for English prose)."""
    return math.ceil(len(text) / 4)


def mask_key(key: str) -> str:
    """An API key as OpenAI's 401 message shows it: the first 8 and last 4 characters, stars
    between (short strings, which cannot be keys, are shown as they are)."""
    return key if len(key) <= 12 else key[:8] + "*" * (len(key) - 12) + key[-4:]


def _digest(data: str | bytes) -> int:
    raw = data.encode() if isinstance(data, str) else data
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big")


def _ident(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


# --- errors --------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answered with OpenAI's body: raise it anywhere in a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, self.status, headers=self.headers)


def _invalid(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _missing(param: str) -> OpenAIError:
    return _invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _unknown_model(model: Any) -> OpenAIError:
    # OpenAI leaves param null in this one.
    message = f"The model `{model}` does not exist or you do not have access to it."
    return OpenAIError(404, message, code="model_not_found")


def _model(body: dict[str, Any], known: tuple[str, ...] | dict[str, Any], default: str = "") -> str:
    model = body.get("model") or default
    if not model:
        raise _invalid("you must provide a model parameter")
    if model not in known:
        raise _unknown_model(model)
    return str(model)


def _quoted(values: tuple[str, ...] | list[str]) -> str:
    items = [f"'{v}'" for v in values]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if value not in allowed:
        raise _invalid(
            f"Invalid value: '{value}'. Supported values are: {_quoted(allowed)}.",
            name,
            "invalid_value",
        )
    return str(value)


def _number(
    body: dict[str, Any], name: str, default: float, low: float, high: float | None = None
) -> float:
    """A decimal parameter (form fields arrive as text), checked as OpenAI checks it."""
    value = given = body.get(name)
    if value is None:
        return default
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    # NaN passes every comparison: no decimal (JSON has none; a form field can spell "nan").
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        raise _invalid(
            f"Invalid type for '{name}': expected a decimal, but got a {type(given).__name__} instead.",
            name,
            "invalid_type",
        )
    shown = _shown(value)  # compared as given: a JSON integer may be too large for a float
    if value < low:
        raise _invalid(
            f"Invalid '{name}': decimal below minimum value. Expected a value >= {low:g}, but got {shown} instead.",
            name,
            "decimal_below_min_value",
        )
    if high is not None and value > high:
        raise _invalid(
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {high:g}, but got {shown} instead.",
            name,
            "decimal_above_max_value",
        )
    return float(value)


def _shown(value: float) -> str:
    """A number for an error message, short whatever its size."""
    try:
        return f"{value:g}"
    except OverflowError:  # an int beyond float's range: JSON allows 10**400
        digits = str(abs(value))  # at most 4300: Python's JSON refuses longer integers
        return f"{'-' * (value < 0)}{digits[0]}e+{len(digits) - 1}"


def _integer(
    body: dict[str, Any], name: str, default: int | None, low: int, high: int | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(
            f"Invalid type for '{name}': expected an integer, but got a {type(value).__name__} instead.",
            name,
            "invalid_type",
        )
    if value < low:
        raise _invalid(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    if high is not None and value > high:
        raise _invalid(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
            name,
            "integer_above_max_value",
        )
    return value


def _text(body: dict[str, Any], name: str, max_length: int) -> str:
    value = body.get(name)
    if value is None:
        raise _missing(name)
    if not isinstance(value, str):
        raise _invalid(
            f"Invalid type for '{name}': expected a string, but got a {type(value).__name__} instead.",
            name,
            "invalid_type",
        )
    if not value:
        raise _invalid(
            f"Invalid '{name}': empty string. Expected a string with minimum length 1, but got an empty string instead.",
            name,
            "empty_string",
        )
    if len(value) > max_length:
        raise _invalid(
            f"Invalid '{name}': string too long. Expected a string with maximum length {max_length}, but got a string with length {len(value)} instead.",
            name,
            "string_above_max_length",
        )
    return value


def canned_error(status: int, request: Request | None = None) -> OpenAIError:
    """OpenAI's error for ``status``, as the ``error`` knob answers it."""
    model = (getattr(request.state, "model", None) if request else None) or "gpt-unknown"
    if status == 401:
        given = request.headers.get("authorization", "").partition(" ")[2] if request else ""
        return OpenAIError(
            401,
            f"Incorrect API key provided: {mask_key(given or 'sk-unknown')}. You can find your API key at {KEYS_URL}.",
            code="invalid_api_key",
        )
    if status == 403:
        return OpenAIError(
            403,
            "Country, region, or territory not supported",
            "request_forbidden",
            code="unsupported_country_region_territory",
        )
    if status == 404:
        return _unknown_model(model)
    if status == 429:
        headers = {
            "retry-after": "1",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": "199000",
            "x-ratelimit-reset-tokens": "300ms",
        }
        return OpenAIError(
            429,
            f"Rate limit reached for {model} in organization org-simulator on requests per min "
            "(RPM): Limit 500, Used 500, Requested 1. Please try again in 1s. Visit https://platform.openai.com/account/rate-limits to learn more.",
            "requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if status == 400:
        return _invalid(
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead.",
            "temperature",
            "decimal_above_max_value",
        )
    if status == 503:
        return OpenAIError(
            503, "The engine is currently overloaded, please try again later.", "server_error"
        )
    if status >= 500:
        return OpenAIError(
            status,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
        )
    return OpenAIError(status, f"The request failed (simulated status {status}).")


# --- chat completions ----------------------------------------------------------------------

ROLES = ("system", "assistant", "user", "function", "tool", "developer")


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return content if isinstance(content, str) else ""


def _check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _invalid(
            "Invalid type for 'messages': expected an array of objects.", "messages", "invalid_type"
        )
    if not messages:
        raise _invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for i, message in enumerate(messages):
        role = message.get("role")
        if role is None:
            raise _missing(f"messages[{i}].role")
        if role not in ROLES:
            raise _invalid(
                f"Invalid value: '{role}'. Supported values are: {_quoted(ROLES)}.",
                f"messages[{i}].role",
                "invalid_value",
            )
        if role != "assistant" and "content" not in message:
            raise _missing(f"messages[{i}].content")
    return messages


def _prompt_tokens(body: dict[str, Any], messages: list[dict[str, Any]]) -> int:
    """OpenAI's accounting: 3 tokens framing each message, 1 for its role, its text, 85 per
    image part (a low-detail image), 3 priming the reply; tool definitions as JSON text."""
    total = 3
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else []
        images = sum(1 for p in parts if isinstance(p, dict) and p.get("type") == "image_url")
        total += 4 + tokens(_content_text(content)) + 85 * images
        if message.get("name"):
            total += 1 + tokens(str(message["name"]))
    if body.get("tools"):
        total += tokens(json.dumps(body["tools"]))
    return total


def _reply(messages: list[dict[str, Any]], index: int) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    text = _content_text((users or messages)[-1].get("content"))
    words = re.findall(r"\w+", text)[:12]
    number = _digest(f"{index}/{text}") % 1000
    return (
        f"This is simulated reply {number} to your message about {' '.join(words) or 'nothing'}. "
        "The same messages always get the same answer, so tests can rely on it."
    )


def _reasoning_tokens(model: str, messages: list[dict[str, Any]]) -> int:
    if model not in REASONING_MODELS:
        return 0
    return 16 * (1 + _digest(json.dumps(messages, sort_keys=True)) % 4)


async def chat(request: Request, body: dict[str, Any]) -> Response:
    model = _model(body, CHAT_MODELS)
    messages = _check_messages(body)
    n = _integer(body, "n", 1, 1, 128) or 1
    _number(body, "temperature", 1.0, 0, 2)
    _number(body, "top_p", 1.0, 0, 1)
    _number(body, "presence_penalty", 0.0, -2, 2)
    _number(body, "frequency_penalty", 0.0, -2, 2)
    _integer(body, "top_logprobs", None, 0, 20)
    _integer(body, "seed", None, -(2**63), 2**63 - 1)
    limit = _integer(body, "max_completion_tokens", None, 1)
    if model in REASONING_MODELS:
        if body.get("max_tokens") is not None:
            raise _invalid(
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )
        if body.get("temperature") not in (None, 1):
            raise _invalid(
                f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. Only the default (1) value is supported.",
                "temperature",
                "unsupported_value",
            )
    else:
        limit = limit or _integer(body, "max_tokens", None, 1)
    stream = body.get("stream") is True
    if body.get("stream_options") is not None and not stream:
        raise _invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    tool = _forced_tool(body)
    if tool is not None:
        return _tool_call(request, body, model, messages, tool, stream)
    reasoning = _reasoning_tokens(model, messages)
    if limit is not None:
        reasoning = min(reasoning, limit)  # hidden reasoning counts against the limit too
    replies = []  # (text, finish_reason) per choice
    for index in range(n):
        text = _reply(messages, index)
        if limit is not None and reasoning + tokens(text) > limit:
            replies.append((text[: (limit - reasoning) * 4], "length"))  # 4 characters a token
        else:
            replies.append((text, "stop"))
    prompt = _prompt_tokens(body, messages)
    completion = sum(tokens(text) for text, _ in replies) + reasoning * n
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning * n,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    head = {
        "id": _ident("chatcmpl-"),
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_sim0001",
    }
    if stream:
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        events = _chat_events(request, head, replies, usage if include_usage else None)
        return _Stream(events, media_type="text/event-stream")
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": finish,
        }
        for i, (text, finish) in enumerate(replies)
    ]
    return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": usage})


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function a request's ``tool_choice`` obliges the model to call, if any."""
    tools = [t.get("function") or {} for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if not tools or choice in (None, "auto", "none"):
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t.get("name") == name), None)
    return tools[0]


def _arguments(tool: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    """Arguments for a call: each required property, a string from the last message's
    words, numbers 1, booleans true."""
    schema = tool.get("parameters") or {}
    words = re.findall(r"\w+", _content_text(messages[-1].get("content"))) or ["simulated"]
    samples = {"integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}
    args = {
        name: samples.get((schema.get("properties") or {}).get(name, {}).get("type"), words[-1])
        for name in schema.get("required") or []
    }
    return json.dumps(args)


def _tool_call(
    request: Request,
    body: dict[str, Any],
    model: str,
    messages: list[dict[str, Any]],
    tool: dict[str, Any],
    stream: bool,
) -> Response:
    call = {
        "id": _ident("call_"),
        "type": "function",
        "function": {"name": tool.get("name", ""), "arguments": _arguments(tool, messages)},
    }
    prompt = _prompt_tokens(body, messages)
    completion = tokens(json.dumps(call["function"]))
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}  # fmt: skip
    head = {"id": _ident("chatcmpl-"), "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_sim0001"}  # fmt: skip
    if not stream:
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        return JSONResponse(
            {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        )
    include_usage = (body.get("stream_options") or {}).get("include_usage") is True

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

    async def events() -> AsyncIterator[bytes]:
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        yield chunk({"role": "assistant", "content": None})
        first = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
        yield chunk({"tool_calls": [{"index": 0, **first}]})
        for piece in (arguments[:half], arguments[half:]):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        yield chunk({}, "tool_calls")
        if include_usage:
            yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        yield _sse("[DONE]")

    return _Stream(events(), media_type="text/event-stream")


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def _chat_events(
    request: Request,
    head: dict[str, Any],
    replies: list[tuple[str, str]],
    usage: dict[str, Any] | None,
) -> AsyncIterator[bytes]:
    """The chunks of a chat stream, ``stream_delay`` apart. With ``usage`` (asked for by
    ``stream_options.include_usage``) every chunk has ``usage: null`` and a last chunk with
    no choices carries the totals."""
    delay = float(request.app.state.knobs.get("stream_delay") or 0)
    cut = getattr(request.state, "cut", False)

    def chunk(index: int, delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        data = {**head, "object": "chat.completion.chunk", "choices": [choice]}
        if usage is not None:
            data["usage"] = None
        return _sse(data)

    for index, (text, finish) in enumerate(replies):
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None}, None)
        for i, piece in enumerate(re.findall(r"\s*\S+", text)):
            if cut and i == 2:
                raise _CutStream  # a few chunks, then the connection drops
            await asyncio.sleep(delay)
            yield chunk(index, {"content": piece}, None)
        if cut:
            raise _CutStream
        await asyncio.sleep(delay)
        yield chunk(index, {}, finish)
    if usage is not None:
        await asyncio.sleep(delay)
        yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    yield _sse("[DONE]")


class _CutStream(Exception):
    """Raised by a response body to drop the connection mid-response."""


class _Stream(StreamingResponse):
    """Sends each piece of ``content`` as its own body message, so a client sees them arrive
    one by one. A ``_CutStream`` from the body ends the response without its last message:
    the server then closes the connection mid-body (uvicorn logs "ASGI callable returned
    without completing response": that is the point). Stops early when the client leaves."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                async for piece in self.body_iterator:
                    more = {"type": "http.response.body", "more_body": True}
                    await send({**more, "body": piece})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except _CutStream:
                pass
            group.cancel_scope.cancel()


# --- embeddings ----------------------------------------------------------------------------


def _embedding_inputs(raw: Any) -> list[str | list[int]]:
    """The inputs as a list of strings or token arrays; OpenAI's message when malformed."""
    bad = _invalid(
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
    )
    if raw is None:
        raise _missing("input")
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
        items = [raw]  # one token array
    elif isinstance(raw, list) and 0 < len(raw) <= 2048:
        items = raw
    else:
        raise bad
    for item in items:
        ok_text = isinstance(item, str) and item != ""
        ok_tokens = isinstance(item, list) and bool(item) and all(isinstance(t, int) for t in item)
        if not (ok_text or ok_tokens):
            raise bad
    return items


def _vector(seed: str, full: int, dims: int) -> list[float]:
    """A unit vector from a hash of ``seed``: the first ``dims`` of a ``full``-dimension
    vector, renormalised (what OpenAI does for a smaller ``dimensions``)."""
    raw = hashlib.shake_256(seed.encode()).digest(full * 2)
    values = struct.unpack(f"<{full}h", raw)[:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


async def embeddings(request: Request, body: dict[str, Any]) -> Response:
    model = _model(body, EMBEDDING_DIMENSIONS)
    items = _embedding_inputs(body.get("input"))
    full = EMBEDDING_DIMENSIONS[model]
    dims = _integer(body, "dimensions", full, 1, full) or full
    fmt = _choice(body, "encoding_format", ("float", "base64"), "float")
    data, used = [], 0
    for i, item in enumerate(items):
        if isinstance(item, str):
            seed, used = item, used + tokens(item)
        else:
            seed, used = ",".join(map(str, item)), used + len(item)
        vector: Any = _vector(f"{model}/{seed}", full, dims)
        if fmt == "base64":  # little-endian float32, as OpenAI sends it
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": used, "total_tokens": used}
    return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})


# --- images ----------------------------------------------------------------------------------

_PROMPT_LIMITS = {"dall-e-2": 1000, "dall-e-3": 4000, "gpt-image-1": 32000, "gpt-image-2": 32000}


def _thumbnail(size: str) -> tuple[int, int]:
    """The drawn size: 64 pixels on the short side, the requested aspect ratio."""
    width, height = (int(v) for v in size.split("x"))
    scale = 64 / min(width, height)
    return round(width * scale), round(height * scale)


async def images(request: Request, body: dict[str, Any]) -> Response:
    model = _model(body, IMAGE_SIZES, default="dall-e-2")
    prompt = _text(body, "prompt", _PROMPT_LIMITS[model])
    gpt = model.startswith("gpt-image-")
    n = _integer(body, "n", 1, 1, 1 if model == "dall-e-3" else 10) or 1
    size = _choice(body, "size", IMAGE_SIZES[model], "auto" if gpt else "1024x1024")
    quality = _choice(body, "quality", IMAGE_QUALITIES[model], "auto")
    if gpt:
        fmt = "b64_json"  # GPT image models always answer base64
        _choice(body, "output_format", ("png",), "png")  # the simulator draws PNG only
        background = _choice(body, "background", ("transparent", "opaque", "auto"), "auto")
        size = "1024x1024" if size == "auto" else size
        quality = "medium" if quality == "auto" else quality
    else:
        fmt = _choice(body, "response_format", ("url", "b64_json"), "url")
        background = "opaque"
        if model == "dall-e-3":
            _choice(body, "style", ("vivid", "natural"), "vivid")
    width, height = _thumbnail(size)
    data = []
    for i in range(n):
        png = media.png(width, height, _digest(f"{prompt}/{i}"), alpha=background == "transparent")
        if fmt == "b64_json":
            image: dict[str, Any] = {"b64_json": base64.b64encode(png).decode()}
        else:
            image = {"url": _store_file(request, png)}
        if model == "dall-e-3":
            image["revised_prompt"] = f"A detailed rendering of: {prompt}"
        data.append(image)
    out: dict[str, Any] = {"created": int(time.time()), "data": data}
    if gpt:
        prompt_tokens, per_image = tokens(prompt), IMAGE_TOKENS[quality][size]
        out.update(
            background="opaque" if background == "auto" else background,
            output_format="png",
            size=size,
            quality=quality,
            usage={
                "input_tokens": prompt_tokens,
                "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0},
                "output_tokens": per_image * n,
                "output_tokens_details": {"image_tokens": per_image * n, "text_tokens": 0},
                "total_tokens": prompt_tokens + per_image * n,
            },
        )
    return JSONResponse(out)


def _store_file(request: Request, data: bytes) -> str:
    """Keep ``data`` to serve under ``/_sim/files/``; its absolute URL."""
    files: OrderedDict[str, bytes] = request.app.state.files
    name = f"img-{secrets.token_hex(12)}.png"
    files[name] = data
    while len(files) > 256:
        files.popitem(last=False)
    return f"{str(request.base_url).rstrip('/')}/_sim/files/{name}"


# --- speech ----------------------------------------------------------------------------------

_TONES_HZ = (200.0, 300.0, 400.0, 500.0, 600.0, 800.0)  # periods that divide a FLAC block


def speech_seconds(text: str, speed: float = 1.0) -> float:
    """How long the simulator speaks ``text``: 15 characters a second at ``speed`` 1, at
    least half a second."""
    return max(0.5, len(text) / 15 / speed)


def speech_audio(text: str, fmt: str, speed: float = 1.0) -> bytes:
    """The audio the simulator speaks for ``text`` (``speech_seconds`` long)."""
    seconds = speech_seconds(text, speed)
    if fmt == "mp3":
        return media.mp3_silence(seconds)
    if fmt == "opus":
        return media.opus_silence(seconds)
    if fmt == "aac":
        return media.aac_silence(seconds)
    pcm = media.tone(seconds, SAMPLE_RATE, _TONES_HZ[_digest(text) % len(_TONES_HZ)])
    if fmt == "wav":
        return media.wav(pcm, SAMPLE_RATE)
    if fmt == "flac":
        return media.flac(pcm, SAMPLE_RATE)
    return pcm


async def speech(request: Request, body: dict[str, Any]) -> Response:
    model = _model(body, SPEECH_MODELS)
    text = _text(body, "input", 4096)
    voice = body.get("voice")
    if voice is None:
        raise _missing("voice")
    if not (voice in VOICES or (isinstance(voice, dict) and isinstance(voice.get("id"), str))):
        raise _invalid(
            f"Invalid value: '{voice}'. Supported values are: {_quoted(VOICES)}.",
            "voice",
            "invalid_value",
        )
    fmt = _choice(body, "response_format", tuple(SPEECH_FORMATS), "mp3")
    speed = _number(body, "speed", 1.0, 0.25, 4.0)
    instructions = _text(body, "instructions", 4096) if "instructions" in body else ""
    sse = _choice(body, "stream_format", ("audio", "sse"), "audio") == "sse"
    if sse and model not in TOKEN_SPEECH_MODELS:
        raise _invalid(
            f"stream_format 'sse' is not supported for {model}.", "stream_format", "invalid_value"
        )
    audio = speech_audio(text, fmt, speed)
    if not sse:
        return _Stream(_audio_chunks(request, audio), media_type=SPEECH_FORMATS[fmt])
    text_tokens = tokens(text) + tokens(instructions)
    audio_tokens = math.ceil(speech_seconds(text, speed) * AUDIO_OUTPUT_TOKENS_PER_SECOND)
    usage = {
        "input_tokens": text_tokens,
        "output_tokens": audio_tokens,
        "total_tokens": text_tokens + audio_tokens,
    }
    return _Stream(_speech_events(request, audio, usage), media_type="text/event-stream")


async def _speech_events(
    request: Request, audio: bytes, usage: dict[str, int]
) -> AsyncIterator[bytes]:
    """``audio`` as speech.audio.delta events (a chunk of base64 each), then the done event
    with the usage (CreateSpeechResponseStreamEvent)."""
    async for chunk in _audio_chunks(request, audio):
        yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()})
    if getattr(request.state, "cut", False):
        raise _CutStream  # a one-chunk answer is cut before its done event
    yield _sse({"type": "speech.audio.done", "usage": usage})


async def _audio_chunks(request: Request, audio: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    delay = float(request.app.state.knobs.get("stream_delay") or 0)
    for start in range(0, len(audio), size):
        if start and getattr(request.state, "cut", False):
            raise _CutStream
        if start and delay:
            await asyncio.sleep(delay)
        yield audio[start : start + size]


# --- transcriptions --------------------------------------------------------------------------

_LANGUAGES = {
    "en": "english",
    "fr": "french",
    "de": "german",
    "es": "spanish",
    "it": "italian",
    "pt": "portuguese",
    "nl": "dutch",
    "ja": "japanese",
    "zh": "chinese",
    "ru": "russian",
}
_MAX_UPLOAD = 25 * 1024 * 1024


@dataclass
class Upload:
    """A file part of a multipart request."""

    filename: str
    content_type: str
    data: bytes


def _segments(name: str, seconds: float, seed: int) -> list[dict[str, Any]]:
    """Whisper-like segments of at most 10 s covering the audio."""
    segments, start = [], 0.0
    while start < seconds or not segments:
        end = round(min(seconds, start + 10.0), 2)
        sid = len(segments)
        words = f" This is simulated speech {seed % 1000} from {name}, part {sid + 1}."
        segments.append(
            {
                "id": sid,
                "seek": int(start * 100),
                "start": start,
                "end": end,
                "text": words,
                "tokens": [50364 + sid, *(1000 + ord(c) for c in words[:8]), 50414],
                "temperature": 0.0,
                "avg_logprob": -0.25,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            }
        )
        start = end
    return segments


def _words(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for seg in segments:
        words = seg["text"].split()
        step = (seg["end"] - seg["start"]) / len(words)
        for i, word in enumerate(words):
            start = seg["start"] + i * step
            out.append(
                {"word": word.strip(".,"), "start": round(start, 2), "end": round(start + step, 2)}
            )
    return out


def _timestamp(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    return (
        f"{ms // 3_600_000:02}:{ms // 60_000 % 60:02}:{ms // 1000 % 60:02}{separator}{ms % 1000:03}"
    )


def subtitles(segments: list[dict[str, Any]], vtt: bool) -> str:
    """SRT or WebVTT text of ``segments``."""
    lines = ["WEBVTT", ""] if vtt else []
    for i, seg in enumerate(segments, 1):
        sep = "." if vtt else ","
        if not vtt:
            lines.append(str(i))
        lines.append(f"{_timestamp(seg['start'], sep)} --> {_timestamp(seg['end'], sep)}")
        lines += [seg["text"].strip(), ""]
    return "\n".join(lines) + "\n"


async def transcriptions(request: Request, form: dict[str, Any]) -> Response:
    model = _model(form, TRANSCRIPTION_MODELS)
    upload = form.get("file")
    if not isinstance(upload, Upload):
        raise _missing("file")
    if len(upload.data) > _MAX_UPLOAD:
        raise OpenAIError(
            413,
            f"Maximum content size limit ({_MAX_UPLOAD}) exceeded ({len(upload.data)} bytes read)",
        )
    fmt = _choice(form, "response_format", TRANSCRIPTION_FORMATS, "json")
    token_priced = model in TOKEN_TRANSCRIPTION_MODELS
    if token_priced and fmt != "json":  # the spec: "only json" for these models
        raise _invalid(
            f"response_format '{fmt}' is not compatible with model '{model}'. Use 'json' instead.",
            "response_format",
            "unsupported_value",
        )
    _number(form, "temperature", 0.0, 0, 1)
    seconds = media.duration(upload.data)
    if seconds is None:
        seconds = len(upload.data) / 16000  # as if 128 kbit/s
    seconds = round(seconds, 2)
    if seconds < 0.1:
        raise _invalid(
            "Audio file is too short. Minimum audio length is 0.1 seconds.",
            "file",
            "audio_too_short",
        )
    segments = _segments(upload.filename or "audio", seconds, _digest(upload.data))
    text = "".join(s["text"] for s in segments).strip()
    usage: dict[str, Any] = {"type": "duration", "seconds": math.ceil(seconds)}
    if token_priced:  # TranscriptTextUsageTokens
        audio = math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
        prompt = tokens(str(form.get("prompt") or ""))
        output = tokens(text)
        usage = {
            "type": "tokens",
            "input_tokens": audio + prompt,
            "input_token_details": {"text_tokens": prompt, "audio_tokens": audio},
            "output_tokens": output,
            "total_tokens": audio + prompt + output,
        }
    if fmt == "text":
        return Response(text + "\n", media_type="text/plain; charset=utf-8")
    if fmt in ("srt", "vtt"):
        return Response(subtitles(segments, fmt == "vtt"), media_type="text/plain; charset=utf-8")
    if fmt == "json":
        return JSONResponse({"text": text, "usage": usage})
    language = str(form.get("language") or "en")
    verbose: dict[str, Any] = {
        "task": "transcribe",
        "language": _LANGUAGES.get(language, language),
        "duration": seconds,
        "text": text,
    }
    granularities = form.get("timestamp_granularities[]") or form.get("timestamp_granularities")
    granularities = [granularities] if isinstance(granularities, str) else granularities or []
    if "word" in granularities:
        verbose["words"] = _words(segments)
    if "segment" in granularities or not granularities:
        verbose["segments"] = segments
    verbose["usage"] = usage
    return JSONResponse(verbose)


# --- moderations -----------------------------------------------------------------------------


def _moderation_inputs(raw: Any) -> list[tuple[str, list[str]]]:
    """Each input as (its text, its image URLs)."""
    if raw is None:
        raise _missing("input")
    if isinstance(raw, str):
        return [(raw, [])]
    if isinstance(raw, list) and all(isinstance(i, str) for i in raw):
        return [(i, []) for i in raw]
    if isinstance(raw, list) and all(isinstance(i, dict) for i in raw):
        # One multi-modal input made of parts.
        texts, urls = [], []
        for part in raw:
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
                urls.append(str(part["image_url"].get("url", "")))
            else:
                raise _invalid("Invalid value for 'input'.", "input", "invalid_value")
        return [(" ".join(texts), urls)]
    raise _invalid("Invalid type for 'input'.", "input", "invalid_type")


def _moderate(text: str, urls: list[str]) -> dict[str, Any]:
    """Scores from keywords (in the text, or for images in their URLs), a little jitter."""
    lower = " ".join([text, *urls]).lower()
    scores, applied = {}, {}
    for category, words in MODERATION_WORDS.items():
        kinds = (["text"] if text or not urls else []) + (
            ["image"] if urls and category in IMAGE_MODERATION_CATEGORIES else []
        )
        jitter = _digest(f"{category}/{text}") % 1000
        hit = any(re.search(rf"\b{re.escape(w)}", lower) for w in words)
        scores[category] = (0.9 + jitter / 20000 if hit else (jitter + 1) / 1e6) if kinds else 0.0
        applied[category] = kinds
    for category, score in list(scores.items()):  # a subcategory implies its parent
        parent = category.partition("/")[0]
        if parent != category and score >= 0.5:
            scores[parent] = max(scores[parent], 0.75)
    flags = {c: s >= 0.5 for c, s in scores.items()}
    return {
        "flagged": any(flags.values()),
        "categories": flags,
        "category_scores": scores,
        "category_applied_input_types": applied,
    }


async def moderations(request: Request, body: dict[str, Any]) -> Response:
    model = _model(body, MODERATION_MODELS, default="omni-moderation-latest")
    results = [_moderate(text, urls) for text, urls in _moderation_inputs(body.get("input"))]
    return JSONResponse({"id": _ident("modr-"), "model": model, "results": results})


# --- models ----------------------------------------------------------------------------------


def model_object(name: str) -> dict[str, Any]:
    owner = "openai-internal" if name in (*SPEECH_MODELS, *TRANSCRIPTION_MODELS) else "system"
    created = 1_680_000_000 + _digest(name) % 60_000_000
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


async def list_models(request: Request, body: dict[str, Any]) -> Response:
    return JSONResponse({"object": "list", "data": [model_object(m) for m in MODELS]})


async def get_model(request: Request, body: dict[str, Any]) -> Response:
    model = request.path_params["model"]
    if model not in MODELS:
        raise _unknown_model(model)
    return JSONResponse(model_object(model))


async def unknown_path(request: Request, body: dict[str, Any]) -> Response:
    raise OpenAIError(404, f"Invalid URL ({request.method} {request.url.path})")


# --- plumbing --------------------------------------------------------------------------------

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]
_CHAT, _SPEECH = "/v1/chat/completions", "/v1/audio/speech"
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def default_knobs(latency: float = 0.0) -> dict[str, Any]:
    return {"latency": latency, "stream_delay": 0.0, "fail": []}


async def _pause(request: Request, seconds: float) -> None:
    """Sleep, but stop early when the client has gone (so servers shut down promptly)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.02, left))
        if await request.is_disconnected():
            return


def _not_json(constant: str) -> Any:
    """Python's json reads NaN and Infinity; OpenAI's parser, strict JSON, does not."""
    raise ValueError(f"{constant} is not JSON")


async def _read_body(request: Request) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The request's parameters (None when the JSON is unreadable), and what to record."""
    if request.method == "GET":
        return {}, {"json": None}
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        fields: dict[str, Any] = {}
        files: dict[str, Any] = {}
        async with request.form(max_part_size=_MAX_UPLOAD) as form:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    fields[key] = Upload(value.filename or "", value.content_type or "", data)
                    files[key] = {"filename": value.filename, "size": len(data)}
                elif key.endswith("[]"):
                    fields.setdefault(key, []).append(value)
                else:
                    fields[key] = value
        logged = {k: v for k, v in fields.items() if not isinstance(v, Upload)}
        return fields, {"json": logged, "files": files}
    raw = await request.body()
    try:
        body = json.loads(raw, parse_constant=_not_json) if raw else {}
    except ValueError:
        return None, {"json": None, "raw": raw[:1000].decode(errors="replace")}
    return (body if isinstance(body, dict) else None), {"json": body}


def _check_key(request: Request, api_key: str | frozenset[str]) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise OpenAIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or "
            "as the password field (with blank username) if you're accessing the API from "
            "your browser and are prompted for a username and password. You can obtain an API "
            f"key from {KEYS_URL}.",
        )
    if given.strip() not in (api_key if isinstance(api_key, frozenset) else {api_key}):
        raise OpenAIError(
            401,
            f"Incorrect API key provided: {mask_key(given.strip())}. You can find your API key at {KEYS_URL}.",
            code="invalid_api_key",
        )


def _take_failure(knobs: dict[str, Any], path: str) -> dict[str, Any] | None:
    for i, failure in enumerate(knobs["fail"]):
        if failure.get("path") in (None, path, path.removeprefix("/v1")):
            return knobs["fail"].pop(i)
    return None


async def _cut_json() -> AsyncIterator[bytes]:
    yield b'{"id": "chatcmpl-cut", "object": "chat.completion", "choices": [{"index": 0, '
    raise _CutStream


def _endpoint(
    handler: Handler, api_key: str | frozenset[str] | None
) -> Callable[[Request], Awaitable[Response]]:
    """Wraps an endpoint with what every ``/v1`` request goes through: recording, latency,
    the key check, the failure queue, then OpenAI's error bodies and response headers."""

    async def endpoint(request: Request) -> Response:
        state, started = request.app.state, time.monotonic()
        path = request.url.path
        try:
            body, logged = await _read_body(request)
        except MultiPartException:
            body, logged = None, {"json": None}
        state.seq += 1
        headers = {k: v for k, v in request.headers.items() if k != "authorization"}
        key = mask_key(request.headers.get("authorization", "").partition(" ")[2].strip())
        state.requests.append(
            {"seq": state.seq, "method": request.method, "path": path, "headers": headers}
            | {"key": key}
            | logged
        )
        request.state.model = body.get("model") if isinstance(body, dict) else None
        try:
            if state.knobs.get("latency"):
                await _pause(request, float(state.knobs["latency"]))
            if api_key is not None:
                _check_key(request, api_key)
            response = await _fail(request, path, body)
            if response is None:
                if body is None:
                    raise _invalid(
                        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"
                    )
                response = await handler(request, body)
        except OpenAIError as error:
            response = error.response()
        response.headers["x-request-id"] = _ident("req_")
        response.headers["openai-version"] = "2020-10-01"
        response.headers["openai-processing-ms"] = str(round((time.monotonic() - started) * 1000))
        return response

    return endpoint


async def _fail(request: Request, path: str, body: dict[str, Any] | None) -> Response | None:
    """Apply the next queued failure for ``path``, if any: a response, or None to go on."""
    failure = _take_failure(request.app.state.knobs, path)
    if failure is None:
        return None
    kind = failure["kind"]
    if kind == "error":
        error = canned_error(int(failure.get("status", 500)), request)
        for key in ("message", "type", "code", "param"):
            if key in failure:
                error.body["error"][key] = failure[key]
        raise error
    if kind == "malformed":
        partial = b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"mess'
        return Response(partial, media_type="application/json")
    if kind == "timeout":
        await _pause(request, float(failure.get("seconds", 60)))
        return None
    # cut_stream: chat streams and speech cut themselves after a few chunks
    streaming = path == _SPEECH or (path == _CHAT and (body or {}).get("stream") is True)
    if streaming:
        request.state.cut = True
        return None
    return _Stream(_cut_json(), media_type="application/json")


def _check_knobs(update: Any) -> dict[str, Any]:
    if not isinstance(update, dict) or set(update) - {"latency", "stream_delay", "fail"}:
        raise ValueError("knobs are an object with latency, stream_delay and fail")
    for key in ("latency", "stream_delay"):
        if key in update and (not isinstance(update[key], int | float) or update[key] < 0):
            raise ValueError(f"{key} is a number of seconds")
    fail = update.get("fail", [])
    fail = [fail] if isinstance(fail, dict) else fail
    if not isinstance(fail, list) or not all(
        isinstance(f, dict) and f.get("kind") in FAILURE_KINDS for f in fail
    ):
        raise ValueError(
            f"fail is a list of objects whose kind is one of {', '.join(FAILURE_KINDS)}"
        )
    return {**update, "fail": fail}


async def knobs_endpoint(request: Request) -> Response:
    state = request.app.state
    if request.method == "DELETE":
        state.knobs = default_knobs(state.default_latency)
    elif request.method == "POST":
        try:
            update = _check_knobs(await request.json())
        except ValueError as error:  # also JSON errors
            return OpenAIError(400, str(error)).response()
        state.knobs["fail"].extend(update.pop("fail"))
        state.knobs.update(update)
    return JSONResponse(state.knobs)


async def requests_endpoint(request: Request) -> Response:
    if request.method == "DELETE":
        request.app.state.requests.clear()
    return JSONResponse(list(request.app.state.requests))


async def files_endpoint(request: Request) -> Response:
    data = request.app.state.files.get(request.path_params["name"])
    if data is None:
        return Response("Not found", 404, media_type="text/plain")
    return Response(data, media_type="image/png")


ENDPOINTS: dict[str, tuple[str, Handler]] = {
    "/v1/models": ("GET", list_models),
    "/v1/models/{model:path}": ("GET", get_model),
    _CHAT: ("POST", chat),
    "/v1/embeddings": ("POST", embeddings),
    "/v1/images/generations": ("POST", images),
    _SPEECH: ("POST", speech),
    "/v1/audio/transcriptions": ("POST", transcriptions),
    "/v1/moderations": ("POST", moderations),
}


def create_app(*, api_key: str | Collection[str] | None = None, latency: float = 0.0) -> Starlette:
    """The simulator. With ``api_key`` (or several: an organization's keys), every ``/v1``
    request must bear it as a Bearer token; the request log shows which, masked as OpenAI
    masks keys. ``latency`` is the default of the ``latency`` knob."""
    keys = api_key if api_key is None or isinstance(api_key, str) else frozenset(api_key)
    routes = [
        Route(path, _endpoint(handler, keys), methods=[method])
        for path, (method, handler) in ENDPOINTS.items()
    ]
    routes += [
        Route("/v1/{rest:path}", _endpoint(unknown_path, keys), methods=_ALL_METHODS),
        Route("/_sim/knobs", knobs_endpoint, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/requests", requests_endpoint, methods=["GET", "DELETE"]),
        Route("/_sim/files/{name}", files_endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.default_latency = latency
    app.state.knobs = default_knobs(latency)
    app.state.requests = deque(maxlen=RECORDED)
    app.state.seq = 0
    app.state.files = OrderedDict()
    return app
