"""apimodels provider plugin for ElevenLabs text to speech.

Sans-I/O: these hooks map OpenAI's speech request (``model``, ``input``, ``voice``,
``response_format``, ``speed``) to ElevenLabs' ``POST /v1/text-to-speech/{voice_id}/stream``
and read its answers; the core sends the request and relays the audio to the client as it
arrives. Every request goes to the ``/stream`` endpoint: the first audio byte comes sooner,
and the whole body is the same audio.

Mapping:

- ``voice``: a voice id or name (case-insensitive) of the premade voices (``voices.py``)
  or of the operator's own voices (``[providers.elevenlabs.settings.voices]``); the core
  refuses any other with a 400 before anything is held or sent;
- ``response_format``: ``mp3`` -> ``mp3_44100_128`` (``settings.mp3_format``), ``opus`` ->
  ``opus_48000_64``, ``pcm`` -> ``pcm_24000`` (16-bit mono, as OpenAI's pcm), ``wav`` ->
  ``pcm_24000`` in a RIFF header the plugin writes; ``aac`` and ``flac``, which ElevenLabs
  does not produce, are a 400 naming the supported formats;
- ``speed`` -> ``voice_settings.speed``; ElevenLabs takes 0.7 to 1.2, anything else is a
  400 naming that range (never clamped silently).

Billing is per character of ``input`` at the catalog's ``per_1k_chars``, known up front.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from apimodels import (
    APIError,
    AudioStream,
    InvalidRequest,
    ModelConfig,
    Output,
    ProviderSpec,
    RateLimited,
    SpeechRequest,
    UnifiedRequest,
    Upstream,
    UpstreamError,
    Usage,
    Voice,
    hookimpl,
)
from apimodels.errors import ServiceUnavailable

from .voices import PREMADE

apimodels_hook_api = ">=2,<3"  # the hook-API versions this plugin is written for
PROVIDER = "elevenlabs"
#: ElevenLabs' range for ``voice_settings.speed``.
SPEED_RANGE = (0.7, 1.2)
#: The sample rate asked for pcm and wav: 24 kHz, like OpenAI's.
PCM_RATE = 24000
#: Unified response_format -> ElevenLabs output_format (mp3 comes from the settings).
OUTPUT_FORMATS = {"opus": "opus_48000_64", "pcm": f"pcm_{PCM_RATE}", "wav": f"pcm_{PCM_RATE}"}
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "pcm": "audio/pcm", "wav": "audio/wav"}
SUPPORTED_FORMATS = ("mp3", "opus", "wav", "pcm")

Mp3Format = Literal[
    "mp3_22050_32",
    "mp3_24000_48",
    "mp3_44100_32",
    "mp3_44100_64",
    "mp3_44100_96",
    "mp3_44100_128",
    "mp3_44100_192",
]


class Settings(BaseModel):
    """``[providers.elevenlabs.settings]`` in registry.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voices: dict[str, str] = Field(
        default_factory=dict,
        description="the account's own voices (cloned, designed, library): NAME = VOICE_ID",
    )
    mp3_format: Mp3Format = Field(
        "mp3_44100_128", description="ElevenLabs' output_format for response_format mp3"
    )

    def all_voices(self) -> list[Voice]:
        premade = [
            Voice(id, name, labels={"accent": accent, "gender": gender, "category": "premade"})
            for id, name, accent, gender in PREMADE
        ]
        own = [Voice(id, name, labels={"category": "account"}) for name, id in self.voices.items()]
        return premade + own


_DEFAULT_SETTINGS = Settings()
#: Lower-cased voice id or name -> voice id, per settings object (built once each).
_INDEXES: dict[int, tuple[Settings, dict[str, str]]] = {}


def _settings(upstream: Upstream) -> Settings:
    settings = upstream.settings
    return settings if isinstance(settings, Settings) else _DEFAULT_SETTINGS


def voice_id(settings: Settings, voice: str) -> str | None:
    """The ElevenLabs voice id a request's ``voice`` (id or name, any case) stands for."""
    entry = _INDEXES.get(id(settings))
    if entry is None or entry[0] is not settings:
        index: dict[str, str] = {}
        for v in settings.all_voices():
            index.setdefault(v.name.lower(), v.id)
        index.update({v.id.lower(): v.id for v in settings.all_voices()})
        entry = _INDEXES[id(settings)] = (settings, index)
    return entry[1].get(voice.lower())


@hookimpl
def register_providers(register: Any) -> None:
    register(
        ProviderSpec(
            name=PROVIDER,
            base_url="https://api.elevenlabs.io",
            api_key_env="ELEVENLABS_API_KEY",
            simulator="apimodels_elevenlabs.simulator:create_app",  # imported only when a simulator runs
            settings=Settings,
            description="ElevenLabs: text to speech, streamed",
            data_sent="the text to speak",
        )
    )


@hookimpl
def list_voices(upstream: Upstream) -> list[Voice]:
    return _settings(upstream).all_voices()


# --- checks and estimates ----------------------------------------------------------------


def check(request: SpeechRequest) -> None:
    """Refuse what ElevenLabs cannot do, naming what it can (before any hold)."""
    if request.response_format not in SUPPORTED_FORMATS:
        raise InvalidRequest(
            f"ElevenLabs models cannot produce '{request.response_format}' audio; "
            f"use one of: {', '.join(SUPPORTED_FORMATS)}.",
            code="unsupported_value",
            param="response_format",
        )
    if request.stream_format == "sse":  # ElevenLabs streams bytes, not speech events
        raise InvalidRequest(
            "ElevenLabs models stream audio, not speech events: leave out stream_format.",
            code="unsupported_value",
            param="stream_format",
        )
    low, high = SPEED_RANGE
    if request.speed is not None and not low <= request.speed <= high:
        raise InvalidRequest(
            f"ElevenLabs models speak at a speed from {low} to {high} (got {request.speed:g}).",
            code="unsupported_value",
            param="speed",
        )


@hookimpl
def estimate_usage(model: ModelConfig, request: UnifiedRequest) -> Usage | None:
    if not isinstance(request, SpeechRequest):
        return None
    check(request)
    return Usage(characters=len(request.input))


# --- requests ----------------------------------------------------------------------------


@hookimpl
def build_request(
    model: ModelConfig, request: UnifiedRequest, upstream: Upstream
) -> httpx.Request | None:
    if not isinstance(request, SpeechRequest):
        return None
    check(request)
    settings = _settings(upstream)
    voice = voice_id(settings, request.voice)
    if voice is None:
        raise InvalidRequest(
            f"The voice '{request.voice}' does not exist at ElevenLabs.",
            code="voice_not_found",
            param="voice",
        )
    body: dict[str, Any] = {"text": request.input, "model_id": model.upstream}
    if request.speed is not None:
        body["voice_settings"] = {"speed": request.speed}
    fmt = OUTPUT_FORMATS.get(request.response_format, settings.mp3_format)
    return httpx.Request(
        "POST",
        f"{upstream.base_url}/v1/text-to-speech/{quote(voice, safe='')}/stream",
        params={"output_format": fmt},
        headers={"xi-api-key": upstream.api_key or "", "accept": "*/*"},
        json=body,
    )


# --- responses ---------------------------------------------------------------------------


def wav_header(rate: int, data_size: int = 0xFFFFFFFF) -> bytes:
    """A RIFF/WAVE header for 16-bit mono PCM. Streamed, the sizes are unknown: they are
    left at their maximum, as streaming TTS services (OpenAI's among them) do."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    riff_size = min(0xFFFFFFFF, 4 + 8 + len(fmt) + 8 + data_size)
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
    )


@hookimpl
def parse_response(
    model: ModelConfig, request: UnifiedRequest, response: httpx.Response
) -> Output | None:
    if not isinstance(request, SpeechRequest):
        return None
    audio = response.content
    if not audio:
        raise UpstreamError("elevenlabs sent no audio")
    if request.response_format == "wav":
        audio = wav_header(PCM_RATE, len(audio)) + audio
    usage = Usage(characters=len(request.input))
    return Output(audio, usage, CONTENT_TYPES[request.response_format])


@hookimpl
def parse_audio_stream(model: ModelConfig, request: UnifiedRequest) -> AudioStream | None:
    if not isinstance(request, SpeechRequest):
        return None
    fmt = request.response_format
    prefix = wav_header(PCM_RATE) if fmt == "wav" else b""
    return AudioStream(CONTENT_TYPES[fmt], Usage(characters=len(request.input)), prefix)


# --- errors ------------------------------------------------------------------------------


def _detail(response: httpx.Response) -> dict[str, Any] | list[Any] | None:
    try:
        detail = json.loads(response.content).get("detail")
    except (ValueError, AttributeError):
        return None
    return detail if isinstance(detail, dict | list) else None


def _requested_voice(response: httpx.Response) -> str:
    try:
        return response.request.url.path.split("/text-to-speech/", 1)[1].split("/", 1)[0]
    except (RuntimeError, IndexError):
        return "?"


#: ElevenLabs' field names -> the unified request's.
_PARAMS = {
    "text": "input",
    "model_id": "model",
    "voice_id": "voice",
    "output_format": "response_format",
    "speed": "speed",
}


@hookimpl
def parse_error(model: ModelConfig, response: httpx.Response) -> APIError | None:
    """ElevenLabs' ``{"detail": {"status", "message"}}`` and 422 ``{"detail": [...]}``.

    The operator's quota or key failing is not the client's fault: 503 and 502, with no
    figure from the operator's account in the message.
    """
    detail = _detail(response)
    if isinstance(detail, list):  # 422: FastAPI's validation errors
        first = detail[0] if detail and isinstance(detail[0], dict) else {}
        loc = [str(p) for p in first.get("loc") or [] if p not in ("body", "query", "path")]
        return InvalidRequest(
            f"elevenlabs rejected the request: {first.get('msg') or 'invalid value'}",
            code="upstream_rejected",
            param=_PARAMS.get(loc[-1], loc[-1]) if loc else None,
        )
    if detail is None:
        return None  # the core's generic mapping
    status = str(detail.get("status") or "")
    if status == "quota_exceeded":
        return ServiceUnavailable(
            f"{model.id} is unavailable: this server's ElevenLabs quota is used up. "
            "Try again later or use another model.",
            code="upstream_quota_exceeded",
        )
    if status in ("voice_not_found", "voice_does_not_exist"):
        return InvalidRequest(
            f"The voice '{_requested_voice(response)}' does not exist at ElevenLabs.",
            code="voice_not_found",
            param="voice",
        )
    if status == "max_character_limit_exceeded":
        return InvalidRequest(
            f"The input is longer than {model.id} takes in one request.",
            code="string_above_max_length",
            param="input",
        )
    if status in ("too_many_concurrent_requests", "system_busy") or response.status_code == 429:
        retry = response.headers.get("retry-after")
        return RateLimited(
            "elevenlabs is rate limiting requests; retry later",
            headers={"retry-after": retry} if retry else {},
        )
    if response.status_code in (401, 403):
        return UpstreamError(
            "elevenlabs rejected the gateway's credentials", code="upstream_auth_error"
        )
    return None
