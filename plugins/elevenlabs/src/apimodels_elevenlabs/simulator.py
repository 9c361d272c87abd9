"""A simulator of the ElevenLabs API, for sandbox mode and the tests.

``create_app()`` serves ElevenLabs' paths with its payloads, headers and error bodies
(``{"detail": {"status", "message"}}``, and FastAPI's ``{"detail": [{loc, msg, type}]}``
for invalid input, status 422), behind the ``xi-api-key`` header:

- ``POST /v1/text-to-speech/{voice_id}`` and ``.../stream``: real audio in every
  ``output_format`` of the published description, sent in chunks: silent MPEG Layer III
  frames at the format's rate and bitrate (mp3), a sine tone as 16-bit PCM at the
  format's rate (pcm), G.711 mu-law or A-law of that tone (ulaw_8000, alaw_8000), silent
  Ogg Opus (opus), and on the full endpoint only, WAV files (wav). 15 characters a second at speed 1. Headers ``character-cost`` (the
  characters of ``text``) and ``request-id``;
- ``GET /v1/voices``: the premade voices (``voices.PREMADE``) and one cloned voice of
  the simulated account (``ACCOUNT_VOICE``);
- ``GET /v1/models``: the text-to-speech models in ``MODELS``, with their request limits.

Not simulated: real speech, timestamps, pronunciation dictionaries, request stitching,
voice cloning and the other products.

Test knobs, in ``app.state.knobs`` or as JSON to ``POST /_sim/knobs`` (merged; ``DELETE``
restores the defaults):

- ``latency``: seconds to wait before answering any ``/v1`` request;
- ``stream_delay``: seconds between two audio chunks;
- ``fail``: a queue of one-shot failures for the next matching request (``path``
  optional): ``{"kind": "error", "status": 401, "code": "quota_exceeded"}`` answers
  ElevenLabs' body for that status and ``detail.status`` (default codes: 401
  invalid_api_key, 429 too_many_concurrent_requests, 5xx internal error);
  ``{"kind": "cut_stream", "after": 2}`` drops the connection after that many audio
  chunks (0: before any byte); ``{"kind": "empty"}`` answers 200 with no audio at all (a
  broken upstream); ``{"kind": "timeout", "seconds": 60}`` waits first.

``GET /_sim/requests`` lists the last ``RECORDED`` requests under ``/v1`` (method, path,
query, headers without ``xi-api-key``, JSON body); ``DELETE`` clears it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
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

from apimodels.providers import media

from .voices import PREMADE

#: model id -> (name, most characters per request, character cost multiplier)
MODELS: dict[str, tuple[str, int, float]] = {
    "eleven_v4": ("Eleven v4", 10000, 1.0),
    "eleven_v4_turbo": ("Eleven v4 Turbo", 10000, 0.5),
    "eleven_v3": ("Eleven v3", 5000, 1.0),
    "eleven_multilingual_v2": ("Eleven Multilingual v2", 10000, 1.0),
    "eleven_flash_v2_5": ("Eleven Flash v2.5", 40000, 0.5),
    "eleven_turbo_v2_5": ("Eleven Turbo v2.5", 40000, 0.5),
    "eleven_flash_v2": ("Eleven Flash v2", 30000, 0.5),
    "eleven_turbo_v2": ("Eleven Turbo v2", 30000, 0.5),
}
DEFAULT_MODEL = "eleven_multilingual_v2"
#: A voice cloned in the simulated account (not premade), for tests of account voices.
ACCOUNT_VOICE = ("vC9sImUlAtEd0nArRaTr", "Sim Narrator")
VOICES = {id: name for id, name, *_ in PREMADE} | {ACCOUNT_VOICE[0]: ACCOUNT_VOICE[1]}
OUTPUT_FORMATS = (
    "mp3_22050_32",
    "mp3_24000_48",
    "mp3_44100_32",
    "mp3_44100_64",
    "mp3_44100_96",
    "mp3_44100_128",
    "mp3_44100_192",
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_32000",
    "pcm_44100",
    "pcm_48000",
    "ulaw_8000",
    "alaw_8000",
    "opus_48000_32",
    "opus_48000_64",
    "opus_48000_96",
    "opus_48000_128",
    "opus_48000_192",
)
#: The full (non-streaming) endpoint also makes WAV files; the streaming one does not.
WAV_FORMATS = tuple(f"wav_{rate}" for rate in (8000, 16000, 22050, 24000, 32000, 44100, 48000))
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "pcm": "audio/pcm",
    "ulaw": "audio/basic",
    "alaw": "audio/basic",
    "opus": "audio/opus",
    "wav": "audio/wav",
}
SPEED_RANGE = (0.7, 1.2)
CHARACTERS_PER_SECOND = 15
CHUNK_BYTES = 4096
RECORDED = 200
FAILURE_KINDS = ("error", "cut_stream", "empty", "timeout")
_MESSAGES = {
    "invalid_api_key": "Invalid API key",
    "needs_authorization": "Neither authorization header nor xi-api-key received, please provide one.",
    "quota_exceeded": "This request exceeds your quota of 10000. You have 12 credits remaining, "
    "while 58 credits are required for this request.",
    "too_many_concurrent_requests": "Too many concurrent requests. Your current subscription "
    "is associated with a maximum of 2 concurrent requests.",
    "system_busy": "We are experiencing heavy traffic, please try again later.",
    "internal_server_error": "An internal server error occurred.",
}
_DEFAULT_CODES = {401: "invalid_api_key", 429: "too_many_concurrent_requests", 503: "system_busy"}


class ElevenLabsError(Exception):
    """An error answered with ElevenLabs' body: raise it anywhere in a handler."""

    def __init__(
        self, status: int, detail: dict[str, Any] | list[Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(str(detail))
        self.status, self.detail, self.headers = status, detail, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, self.status, headers=self.headers)


def error(status: int, code: str, message: str | None = None) -> ElevenLabsError:
    return ElevenLabsError(status, {"status": code, "message": message or _MESSAGES[code]})


def invalid(loc: list[str | int], msg: str, type_: str) -> ElevenLabsError:
    """FastAPI's 422 for one field."""
    return ElevenLabsError(422, [{"loc": loc, "msg": msg, "type": type_}])


# --- audio ---------------------------------------------------------------------------------


def _segment(value: int, ends: tuple[int, ...]) -> int:
    return next((i for i, end in enumerate(ends) if value <= end), len(ends))


_ULAW_ENDS = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_ALAW_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _ulaw(sample: int) -> int:
    """G.711 mu-law of a 16-bit sample (the ITU/Sun reference encoder)."""
    value = sample >> 2
    mask = 0x7F if value < 0 else 0xFF
    value = min(abs(value), 8159) + 33
    seg = _segment(value, _ULAW_ENDS)
    if seg >= 8:
        return 0x7F ^ mask
    return (seg << 4 | (value >> (seg + 1)) & 0x0F) ^ mask


def _alaw(sample: int) -> int:
    """G.711 A-law of a 16-bit sample (the ITU/Sun reference encoder)."""
    value = sample >> 3
    mask = 0xD5 if value >= 0 else 0x55
    if value < 0:
        value = -value - 1
    seg = _segment(value, _ALAW_ENDS)
    if seg >= 8:
        return 0x7F ^ mask
    shift = 1 if seg < 2 else seg
    return (seg << 4 | (value >> shift) & 0x0F) ^ mask


def _g711(pcm: bytes, encode: Callable[[int], int]) -> bytes:
    samples = memoryview(pcm).cast("h")
    return bytes(encode(s) for s in samples)


def audio(text: str, output_format: str, speed: float = 1.0) -> bytes:
    """What the simulator speaks for ``text`` in ``output_format``: at least half a second."""
    seconds = max(0.5, len(text) / CHARACTERS_PER_SECOND / speed)
    codec, rate, *rest = output_format.split("_")
    if codec == "mp3":
        return media.mp3_silence_at(seconds, int(rate), int(rest[0]))
    if codec == "opus":
        return media.opus_silence(seconds)
    pcm = media.tone(seconds, int(rate), 300.0 + 100 * (len(text) % 5))
    if codec == "ulaw":
        return _g711(pcm, _ulaw)
    if codec == "alaw":
        return _g711(pcm, _alaw)
    if codec == "wav":
        return media.wav(pcm, int(rate))
    return pcm


# --- endpoints -----------------------------------------------------------------------------


def _speech_body(body: dict[str, Any]) -> tuple[str, str, float]:
    """(text, model id, speed) of a text-to-speech body, checked as ElevenLabs checks it."""
    text = body.get("text")
    if text is None:
        raise invalid(["body", "text"], "Field required", "missing")
    if not isinstance(text, str):
        raise invalid(["body", "text"], "Input should be a valid string", "string_type")
    model = body.get("model_id", DEFAULT_MODEL)
    if not isinstance(model, str):
        raise invalid(["body", "model_id"], "Input should be a valid string", "string_type")
    if model not in MODELS:
        raise error(400, "model_not_found", f"A model with model ID {model} does not exist.")
    if len(text) > MODELS[model][1]:
        raise error(
            400,
            "max_character_limit_exceeded",
            f"You are sending {len(text)} characters in a single request, over the maximum "
            f"of {MODELS[model][1]} characters for {model}.",
        )
    settings = body.get("voice_settings") or {}
    if not isinstance(settings, dict):
        raise invalid(["body", "voice_settings"], "Input should be a valid dictionary", "dict_type")
    speed = settings.get("speed", 1.0)
    if speed is None:
        speed = 1.0
    if not isinstance(speed, int | float) or isinstance(speed, bool):
        raise invalid(
            ["body", "voice_settings", "speed"], "Input should be a valid number", "float_type"
        )
    low, high = SPEED_RANGE
    if not low <= speed <= high:
        raise invalid(
            ["body", "voice_settings", "speed"],
            f"Speed must be between {low} and {high}",
            "value_error",
        )
    return text, model, float(speed)


async def text_to_speech(request: Request, body: dict[str, Any]) -> Response:
    voice = request.path_params["voice_id"]
    if voice not in VOICES:
        raise error(404, "voice_not_found", f"A voice with voice_id {voice} was not found.")
    output_format = request.query_params.get("output_format", "mp3_44100_128")
    formats = (
        OUTPUT_FORMATS if request.url.path.endswith("/stream") else OUTPUT_FORMATS + WAV_FORMATS
    )
    if output_format not in formats:
        raise invalid(
            ["query", "output_format"],
            f"Input should be {', '.join(repr(f) for f in formats)}",
            "enum",
        )
    text, _, speed = _speech_body(body)
    data = audio(text, output_format, speed)
    headers = {"character-cost": str(len(text))}
    media_type = CONTENT_TYPES[output_format.split("_")[0]]
    return _Stream(_chunks(request, data), media_type=media_type, headers=headers)


async def _chunks(request: Request, data: bytes) -> AsyncIterator[bytes]:
    delay = float(request.app.state.knobs.get("stream_delay") or 0)
    cut_after: int | None = getattr(request.state, "cut_after", None)
    for i, start in enumerate(range(0, len(data), CHUNK_BYTES)):
        if cut_after is not None and i >= cut_after:
            raise _CutStream
        if i and delay:
            await asyncio.sleep(delay)
        yield data[start : start + CHUNK_BYTES]


def voice_object(voice_id: str) -> dict[str, Any]:
    premade = {id: (accent, gender) for id, _, accent, gender in PREMADE}
    accent, gender = premade.get(voice_id, ("American", "neutral"))
    return {
        "voice_id": voice_id,
        "name": VOICES[voice_id],
        "category": "premade" if voice_id in premade else "cloned",
        "labels": {"accent": accent.lower(), "gender": gender},
        "description": None,
        "preview_url": None,
        "available_for_tiers": [],
        "high_quality_base_model_ids": ["eleven_v3", "eleven_multilingual_v2"],
        "is_legacy": False,
        "is_mixed": False,
    }


async def list_voices(request: Request, body: dict[str, Any]) -> Response:
    return JSONResponse({"voices": [voice_object(v) for v in VOICES]})


def model_object(model_id: str) -> dict[str, Any]:
    name, limit, multiplier = MODELS[model_id]
    return {
        "model_id": model_id,
        "name": name,
        "can_be_finetuned": False,
        "can_do_text_to_speech": True,
        "can_do_voice_conversion": False,
        "can_use_style": True,
        "can_use_speaker_boost": True,
        "serves_pro_voices": False,
        "token_cost_factor": multiplier,
        "description": f"{name} (simulated)",
        "requires_alpha_access": False,
        "max_characters_request_free_user": min(limit, 2500),
        "max_characters_request_subscribed_user": limit,
        "maximum_text_length_per_request": limit,
        "languages": [{"language_id": "en", "name": "English"}],
        "model_rates": {"character_cost_multiplier": multiplier},
        "concurrency_group": "standard",
    }


async def list_models(request: Request, body: dict[str, Any]) -> Response:
    return JSONResponse([model_object(m) for m in MODELS])


async def unknown_path(request: Request, body: dict[str, Any]) -> Response:
    return JSONResponse({"detail": "Not Found"}, 404)


# --- plumbing ------------------------------------------------------------------------------


class _Empty(Exception):
    """Raised before a handler to answer 200 with an empty body."""


class _CutStream(Exception):
    """Raised by a response body to drop the connection mid-response."""


class _Stream(StreamingResponse):
    """Sends each piece as its own body message; a ``_CutStream`` ends the response
    without its last message, so the server drops the connection mid-body. Stops early
    when the client leaves."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        iterator = self.body_iterator.__aiter__()
        try:
            first = await iterator.__anext__()
        except _CutStream:
            first = None
        except StopAsyncIteration:
            first = b""
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if first is None:
            return
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                await send({"type": "http.response.body", "body": first, "more_body": True})
                async for piece in iterator:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except _CutStream:
                pass
            group.cancel_scope.cancel()


Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


def default_knobs(latency: float = 0.0) -> dict[str, Any]:
    return {"latency": latency, "stream_delay": 0.0, "fail": []}


async def _pause(request: Request, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.02, left))
        if await request.is_disconnected():
            return


def _check_key(request: Request, api_key: str) -> None:
    given = request.headers.get("xi-api-key")
    if not given:
        raise error(401, "needs_authorization")
    if not secrets.compare_digest(given.encode(), api_key.encode()):
        raise error(401, "invalid_api_key")


def _take_failure(knobs: dict[str, Any], path: str) -> dict[str, Any] | None:
    for i, failure in enumerate(knobs["fail"]):
        if failure.get("path") in (None, path):
            return knobs["fail"].pop(i)
    return None


async def _fail(request: Request, path: str) -> None:
    failure = _take_failure(request.app.state.knobs, path)
    if failure is None:
        return
    kind = failure["kind"]
    if kind == "timeout":
        await _pause(request, float(failure.get("seconds", 60)))
    elif kind == "cut_stream":
        request.state.cut_after = int(failure.get("after", 2))
    elif kind == "empty":
        raise _Empty
    else:
        status = int(failure.get("status", 500))
        code = failure.get("code") or _DEFAULT_CODES.get(status, "internal_server_error")
        headers = {"retry-after": "1"} if status == 429 else None
        raise ElevenLabsError(
            status,
            {"status": code, "message": failure.get("message") or _MESSAGES.get(code, code)},
            headers,
        )


def _endpoint(handler: Handler, api_key: str | None) -> Callable[[Request], Awaitable[Response]]:
    """What every ``/v1`` request goes through: recording, latency, the key, the failure
    queue, the JSON body, then ElevenLabs' error bodies and its ``request-id`` header."""

    async def endpoint(request: Request) -> Response:
        state = request.app.state
        body: Any = {}
        raw = await request.body() if request.method == "POST" else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        state.seq += 1
        state.requests.append(
            {
                "seq": state.seq,
                "method": request.method,
                "path": request.url.path,
                "query": dict(request.query_params),
                "headers": {k: v for k, v in request.headers.items() if k != "xi-api-key"},
                "json": body,
            }
        )
        try:
            if state.knobs.get("latency"):
                await _pause(request, float(state.knobs["latency"]))
            if api_key is not None:
                _check_key(request, api_key)
            await _fail(request, request.url.path)
            if not isinstance(body, dict):
                raise invalid(
                    ["body"], "Input should be a valid dictionary", "model_attributes_type"
                )
            response = await handler(request, body)
        except ElevenLabsError as exc:
            response = exc.response()
        except _Empty:
            response = Response(b"", media_type="audio/mpeg")
        response.headers["request-id"] = secrets.token_hex(10)
        return response

    return endpoint


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
        raise ValueError(f"fail is a list of objects whose kind is one of {FAILURE_KINDS}")
    return {**update, "fail": fail}


async def knobs_endpoint(request: Request) -> Response:
    state = request.app.state
    if request.method == "DELETE":
        state.knobs = default_knobs(state.default_latency)
    elif request.method == "POST":
        try:
            update = _check_knobs(await request.json())
        except ValueError as exc:
            return JSONResponse({"detail": {"status": "invalid_knobs", "message": str(exc)}}, 400)
        state.knobs["fail"].extend(update.pop("fail"))
        state.knobs.update(update)
    return JSONResponse(state.knobs)


async def requests_endpoint(request: Request) -> Response:
    if request.method == "DELETE":
        request.app.state.requests.clear()
    return JSONResponse(list(request.app.state.requests))


ENDPOINTS: dict[str, tuple[str, Handler]] = {
    "/v1/text-to-speech/{voice_id}": ("POST", text_to_speech),
    "/v1/text-to-speech/{voice_id}/stream": ("POST", text_to_speech),
    "/v1/voices": ("GET", list_voices),
    "/v1/models": ("GET", list_models),
}


def create_app(*, api_key: str | None = None, latency: float = 0.0) -> Starlette:
    """The simulator. With ``api_key``, every ``/v1`` request must bear it in ``xi-api-key``;
    ``latency`` is the default of the ``latency`` knob."""
    routes = [
        Route(path, _endpoint(handler, api_key), methods=[method])
        for path, (method, handler) in ENDPOINTS.items()
    ]
    routes += [
        Route(
            "/v1/{rest:path}",
            _endpoint(unknown_path, api_key),
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        ),
        Route("/_sim/knobs", knobs_endpoint, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/requests", requests_endpoint, methods=["GET", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.default_latency = latency
    app.state.knobs = default_knobs(latency)
    app.state.requests = deque(maxlen=RECORDED)
    app.state.seq = 0
    return app
