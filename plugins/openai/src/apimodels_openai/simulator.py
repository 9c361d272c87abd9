"""A simulator of the OpenAI API, for sandbox mode and the tests.

Serves OpenAI's paths under ``/v1`` with OpenAI's payloads and error bodies: models, chat
completions (with streaming), embeddings, image generation (real PNG files), speech (real
WAV / PCM / FLAC tones, MP3 silence), transcriptions and moderations. Outputs are
deterministic functions of the input; usage counts one token per 4 characters (at least 1).

What it does not simulate: real language (the replies are templates), tools and function
calls, vision input, the opus and aac speech formats (400 saying so), organizations and
projects, and any rate limiting but the one you ask for.

Knobs for tests, as JSON to ``POST /_sim/knobs`` (``DELETE`` resets them):

- ``latency``: seconds before any ``/v1`` answer;
- ``stream_delay``: seconds between stream chunks;
- ``fail``: a queue of one-shot failures for the next ``/v1`` requests (matching ``path``
  when given), each ``{"kind": ..., "status": ...}`` where kind is ``error`` (OpenAI's error
  body for ``status``; 429 with ``retry-after`` and ``x-ratelimit-*`` headers),
  ``malformed`` (200 with a truncated JSON body), ``cut_stream`` (a few chunks, then the
  connection closes mid-response) or ``timeout`` (no answer for 60 s).

``GET /_sim/requests`` lists the last 100 requests received (headers without
``authorization``), so tests can check what an upstream client sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import struct
import time
from collections import deque
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import media

CHAT_MODELS = (
    "gpt-5",
    "gpt-5-mini",
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
)
EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
IMAGE_SIZES = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "gpt-image-1": ("1024x1024", "1536x1024", "1024x1536", "auto"),
}
SPEECH_MODELS = ("tts-1", "tts-1-hd")
TRANSCRIPTION_MODELS = ("whisper-1",)
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
SPEECH_FORMATS = {"mp3": "audio/mpeg", "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
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
)
MODERATION_WORDS = {
    "hate": ("hate", "vermin"),
    "hate/threatening": ("exterminate",),
    "harassment": ("idiot", "loser"),
    "harassment/threatening": ("hunt you down",),
    "illicit": ("counterfeit", "launder"),
    "illicit/violent": ("pipe bomb",),
    "self-harm": ("hurt myself",),
    "self-harm/intent": ("end my life",),
    "self-harm/instructions": ("how to self-harm",),
    "sexual": ("explicit sex",),
    "sexual/minors": ("child sexual",),
    "violence": ("kill", "stab"),
    "violence/graphic": ("gore", "dismember"),
}
CREATED = 1_700_000_000


def tokens(text: str) -> int:
    """The simulator's tokenizer: one token per 4 characters, at least 1."""
    return max(1, math.ceil(len(text) / 4))


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status, headers=headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return error(400, message, "invalid_request_error", code, param)


def unknown_model(model: Any) -> JSONResponse:
    return error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )


def canned_error(status: int) -> JSONResponse:
    """OpenAI's error body for a status, as the ``error`` knob sends it."""
    if status == 401:
        return error(
            401,
            "Incorrect API key provided: sk-sim***. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )
    if status == 404:
        return unknown_model("gpt-unknown")
    if status == 429:
        return error(
            429,
            "Rate limit reached for requests. Please try again in 1s.",
            "requests",
            "rate_limit_exceeded",
            headers={
                "retry-after": "1",
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1s",
            },
        )
    if status == 400:
        return invalid(
            "Invalid value for 'temperature': must be between 0 and 2.",
            "temperature",
            "invalid_value",
        )
    if status == 503:
        return error(
            503, "The engine is currently overloaded, please try again later.", "server_error"
        )
    return error(
        status,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
    )


# --- endpoints -----------------------------------------------------------------------------


def _reply(messages: list[dict[str, Any]]) -> str:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1])
    content = last.get("content")
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    text = str(content or "")
    words = re.findall(r"\w+", text)[:12]
    n = _digest(text) % 1000
    return (
        f"This is simulated reply {n} to your message about {' '.join(words) or 'nothing'}. "
        "The simulator repeats a few words of what it was sent and counts tokens as OpenAI would bill them."
    )


def _truncate(text: str, limit: int | None) -> tuple[str, str]:
    if limit is not None and tokens(text) > limit:
        return text[: limit * 4], "length"
    return text, "stop"


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(tokens(json.dumps(m.get("content"))) + 4 for m in messages) + 3


async def chat(request: Request, body: dict[str, Any]) -> Response:
    model = body.get("model")
    if model not in CHAT_MODELS:
        return unknown_model(model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    text, finish = _truncate(_reply(messages), limit)
    prompt, completion = _prompt_tokens(messages), tokens(text)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    ident = f"chatcmpl-sim{_digest(text) % 10**12:012d}"
    if body.get("stream"):
        return await _chat_stream(request, body, ident, model, text, finish, usage)
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_sim",
        }
    )


async def _chat_stream(
    request: Request,
    body: dict[str, Any],
    ident: str,
    model: str,
    text: str,
    finish: str,
    usage: dict[str, Any],
) -> Response:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    cut = request.state.failure == "cut_stream"
    delay = request.app.state.knobs["stream_delay"]

    def chunk(delta: dict[str, Any], reason: str | None) -> bytes:
        data: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
        }
        if include_usage:
            data["usage"] = None
        return f"data: {json.dumps(data)}\n\n".encode()

    pieces = re.findall(r"\S+\s*", text)

    async def events() -> Any:
        yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
        for i, piece in enumerate(pieces):
            if delay:
                await asyncio.sleep(delay)
            if cut and i == 3:
                raise _CutStream
            yield chunk({"content": piece}, None)
        yield chunk({}, finish)
        if include_usage:
            final = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "system_fingerprint": "fp_sim",
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(final)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return _Cuttable(events(), media_type="text/event-stream")


class _CutStream(Exception):
    """Raised inside a response body to drop the connection mid-response."""


class _Cuttable(StreamingResponse):
    """A streaming response that ends the connection uncleanly on ``_CutStream``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for piece in self.body_iterator:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except _CutStream:
            return  # no final body message: the server closes the connection mid-response
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def embeddings(request: Request, body: dict[str, Any]) -> Response:
    model = body.get("model")
    if model not in EMBEDDING_DIMENSIONS:
        return unknown_model(model)
    raw = body.get("input")
    if raw is None or raw == "" or raw == []:
        return invalid(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    items = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    dims = body.get("dimensions") or EMBEDDING_DIMENSIONS[model]
    data, used = [], 0
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        used += tokens(text) if isinstance(item, str) else len(item)
        seed = _digest(text)
        vector = [math.sin(seed % 997 + k * 0.37) for k in range(dims)]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        vector = [v / norm for v in vector]
        if body.get("encoding_format") == "base64":
            encoded: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        else:
            encoded = vector
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }
    )


async def images(request: Request, body: dict[str, Any]) -> Response:
    model = body.get("model") or "dall-e-2"
    if model not in IMAGE_SIZES:
        return unknown_model(model)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return invalid(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    size = body.get("size") or ("auto" if model == "gpt-image-1" else "1024x1024")
    if size not in IMAGE_SIZES[model]:
        return invalid(
            f"Invalid size '{size}' for {model}. Supported: {', '.join(IMAGE_SIZES[model])}.",
            "size",
            "invalid_size",
        )
    n = int(body.get("n") or 1)
    if model == "dall-e-3" and n != 1:
        return invalid("dall-e-3 supports n=1 only.", "n", "invalid_value")
    fmt = "b64_json" if model == "gpt-image-1" else body.get("response_format") or "url"
    files = request.app.state.files
    data = []
    for i in range(n):
        png = media.png(64, 64, _digest(f"{prompt}/{i}"))  # small: sizes are billed, not drawn
        if fmt == "b64_json":
            data.append({"b64_json": base64.b64encode(png).decode()})
        else:
            name = f"img-{_digest(f'{prompt}/{i}/{time.time_ns()}') % 10**12:012d}.png"
            files[name] = png
            data.append({"url": f"{str(request.base_url).rstrip('/')}/_sim/files/{name}"})
        if model == "dall-e-3":
            data[-1]["revised_prompt"] = prompt
    out: dict[str, Any] = {"created": int(time.time()), "data": data}
    if model == "gpt-image-1":
        quality = body.get("quality") or "auto"
        out.update(
            size="1024x1024" if size == "auto" else size,
            quality="medium" if quality == "auto" else quality,
            background="opaque",
            output_format="png",
            usage={
                "input_tokens": tokens(prompt),
                "output_tokens": 1056 * n,
                "total_tokens": tokens(prompt) + 1056 * n,
                "input_tokens_details": {"text_tokens": tokens(prompt), "image_tokens": 0},
            },
        )
    return JSONResponse(out)


async def speech(request: Request, body: dict[str, Any]) -> Response:
    model = body.get("model")
    if model not in SPEECH_MODELS:
        return unknown_model(model)
    text = body.get("input")
    if not isinstance(text, str) or not text:
        return invalid(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    if len(text) > 4096:
        return invalid(
            "'input' is longer than 4096 characters.", "input", "string_above_max_length"
        )
    if body.get("voice") not in VOICES:
        return invalid(
            f"Invalid value for 'voice': {body.get('voice')!r}.", "voice", "invalid_value"
        )
    fmt = body.get("response_format") or "mp3"
    if fmt not in SPEECH_FORMATS:
        return invalid(
            f"The simulator produces {', '.join(SPEECH_FORMATS)} audio, not {fmt!r}.",
            "response_format",
            "unsupported_format",
        )
    seconds = min(30.0, 0.06 * len(text) / float(body.get("speed") or 1.0)) + 0.2
    samples = media.tone(seconds, 24000, 220 + _digest(text) % 440)
    audio = {
        "mp3": lambda: media.mp3_silence(seconds),
        "flac": lambda: media.flac(samples),
        "wav": lambda: media.wav(samples),
        "pcm": lambda: media.pcm(samples),
    }[fmt]()

    async def chunks() -> Any:
        for start in range(0, len(audio), 4096):
            yield audio[start : start + 4096]

    return StreamingResponse(chunks(), media_type=SPEECH_FORMATS[fmt])


def _duration(data: bytes) -> float:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            import io
            import wave

            with wave.open(io.BytesIO(data)) as w:
                return w.getnframes() / w.getframerate()
        except (wave.Error, EOFError):
            pass
    return len(data) / 16000  # as if 128 kbit/s MP3


async def transcriptions(request: Request, form: dict[str, Any]) -> Response:
    model = form.get("model")
    if model not in TRANSCRIPTION_MODELS:
        return unknown_model(model)
    upload = form.get("file")
    if not isinstance(upload, bytes):
        return invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    duration = round(_duration(upload), 2)
    name = form.get("filename") or "audio"
    segments, start, sid = [], 0.0, 0
    while start < duration or not segments:
        end = min(duration, start + 10.0)
        segments.append(
            {
                "id": sid,
                "seek": int(start * 100),
                "start": start,
                "end": end,
                "text": f" Simulated speech from {name}, second {start:.0f} to {end:.0f}.",
                "tokens": [50364, 50414],
                "temperature": 0.0,
                "avg_logprob": -0.2,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            }
        )
        start, sid = end, sid + 1
        if end >= duration:
            break
    text = "".join(s["text"] for s in segments).strip()
    fmt = form.get("response_format") or "json"
    if fmt == "text":
        return Response(text + "\n", media_type="text/plain")
    if fmt in ("srt", "vtt"):
        return Response(
            "WEBVTT\n\n" + text if fmt == "vtt" else "1\n00:00:00,000 --> 00:00:01,000\n" + text,
            media_type="text/plain",
        )
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if fmt == "verbose_json":
        return JSONResponse(
            {
                "task": "transcribe",
                "language": form.get("language") or "english",
                "duration": duration,
                "text": text,
                "segments": segments,
                "usage": usage,
            }
        )
    return JSONResponse({"text": text, "usage": usage})


async def moderations(request: Request, body: dict[str, Any]) -> Response:
    model = body.get("model") or "omni-moderation-latest"
    if model not in MODERATION_MODELS:
        return unknown_model(model)
    raw = body.get("input")
    items = raw if isinstance(raw, list) else [raw]
    results = []
    for item in items:
        text = (item if isinstance(item, str) else json.dumps(item)).lower()
        scores = {
            c: (0.91 if any(w in text for w in words) else 0.0001)
            for c, words in MODERATION_WORDS.items()
        }
        flags = {c: s >= 0.5 for c, s in scores.items()}
        results.append(
            {
                "flagged": any(flags.values()),
                "categories": flags,
                "category_scores": scores,
                "category_applied_input_types": {c: ["text"] for c in scores},
            }
        )
    return JSONResponse(
        {"id": f"modr-sim{_digest(str(raw)) % 10**9}", "model": model, "results": results}
    )


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model(m) for m in MODELS]})


async def get_model(request: Request) -> Response:
    model = request.path_params["model"]
    return JSONResponse(_model(model)) if model in MODELS else unknown_model(model)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "system"}


# --- plumbing ------------------------------------------------------------------------------

_JSON_ENDPOINTS = {
    "/v1/chat/completions": chat,
    "/v1/embeddings": embeddings,
    "/v1/images/generations": images,
    "/v1/audio/speech": speech,
    "/v1/moderations": moderations,
}


async def _pause(request: Request, seconds: float) -> None:
    """Sleep, but stop early when the client has gone (so servers shut down promptly)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.05, left))
        if await request.is_disconnected():
            return


def _masked(key: str) -> str:
    return f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"


def create_app(*, api_key: str | None = None, latency: float = 0.0) -> Starlette:
    """The simulator app. With ``api_key``, every ``/v1`` call must bear it."""

    async def v1(request: Request) -> Response:
        state = request.app.state
        path = request.url.path
        if api_key is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if given != api_key:
                return error(
                    401,
                    f"Incorrect API key provided: {_masked(given)}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
        if path == "/v1/audio/transcriptions":
            body: dict[str, Any] = {}
            async with request.form() as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        body[key], body["filename"] = await value.read(), value.filename
                    else:
                        body[key] = value
            logged: Any = {k: v for k, v in body.items() if k != "file"}
        else:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return invalid("We could not parse the JSON body of your request.")
            logged = body
        headers = {k: v for k, v in request.headers.items() if k != "authorization"}
        state.requests.append(
            {"method": request.method, "path": path, "headers": headers, "json": logged}
        )
        failure = _next_failure(state.knobs, path)
        request.state.failure = failure and failure["kind"]
        if state.knobs["latency"]:
            await _pause(request, state.knobs["latency"])
        if failure is not None:
            kind = failure["kind"]
            if kind == "error":
                return canned_error(int(failure.get("status", 500)))
            if kind == "malformed":
                return Response(
                    b'{"id": "chatcmpl-broken", "choices": [{"mess', media_type="application/json"
                )
            if kind == "timeout":
                await _pause(request, 60)
                return canned_error(504)
            if kind == "cut_stream" and not body.get("stream"):
                return _Cuttable(_cut_body(), media_type="application/json")
        if path == "/v1/audio/transcriptions":
            return await transcriptions(request, body)
        return await _JSON_ENDPOINTS[path](request, body)

    async def knobs(request: Request) -> Response:
        state = request.app.state
        if request.method == "DELETE":
            state.knobs = _default_knobs(latency)
        elif request.method == "POST":
            update = await request.json()
            fail = update.pop("fail", None)
            state.knobs.update(update)
            if fail:
                state.knobs["fail"].extend(fail)
        return JSONResponse(state.knobs)

    async def recorded(request: Request) -> Response:
        return JSONResponse(list(request.app.state.requests))

    async def files(request: Request) -> Response:
        data = request.app.state.files.get(request.path_params["name"])
        return Response(data, media_type="image/png") if data else Response(status_code=404)

    app = Starlette(
        routes=[
            *(
                Route(p, v1, methods=["POST"])
                for p in (*_JSON_ENDPOINTS, "/v1/audio/transcriptions")
            ),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model}", get_model, methods=["GET"]),
            Route("/_sim/knobs", knobs, methods=["GET", "POST", "DELETE"]),
            Route("/_sim/requests", recorded, methods=["GET"]),
            Route("/_sim/files/{name}", files, methods=["GET"]),
        ]
    )
    app.state.knobs = _default_knobs(latency)
    app.state.requests = deque(maxlen=100)
    app.state.files = {}
    return app


async def _cut_body() -> Any:
    yield b'{"id": "chatcmpl-cut", "object": "chat.completion", "choices": ['
    raise _CutStream


def _default_knobs(latency: float) -> dict[str, Any]:
    return {"latency": latency, "stream_delay": 0.0, "fail": []}


def _next_failure(knobs: dict[str, Any], path: str) -> dict[str, Any] | None:
    for i, failure in enumerate(knobs["fail"]):
        if failure.get("path") in (None, path):
            return knobs["fail"].pop(i)
    return None
