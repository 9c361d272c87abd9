"""apimodels provider plugin for the OpenAI API.

Sans-I/O: these hooks build the upstream ``httpx.Request`` and read the upstream
``httpx.Response``; the core sends, retries, streams and bills. Served endpoints: chat
completions (with streaming), embeddings, image generation, speech and transcription.
"""

from __future__ import annotations

import base64
import io
import json
import math
import wave
from decimal import Decimal
from typing import Any

import httpx

from apimodels import (
    APIError,
    AudioStream,
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    InvalidRequest,
    ModelConfig,
    Output,
    PermissionDenied,
    ProviderSpec,
    SpeechRequest,
    StreamEvent,
    TranscriptionRequest,
    UnifiedRequest,
    Upstream,
    UpstreamError,
    Usage,
    Voice,
    fastjson,
    hookimpl,
)
from apimodels.providers import media

apimodels_hook_api = ">=2,<3"  # the hook-API versions this plugin is written for
PROVIDER = "openai"

# Image defaults of the DALL-E models (retired upstream, still mapped for catalogs that
# list them) when the request leaves them out; GPT Image models default to "auto".
_IMAGE_DEFAULTS = {
    "dall-e-2": ("standard", "1024x1024"),
    "dall-e-3": ("standard", "1024x1024"),
}
_GPT_IMAGE_DEFAULT = ("auto", "auto")

_AUDIO_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

#: Upstream ids of reasoning models, which take max_completion_tokens and not max_tokens.
_REASONING_PREFIXES = ("gpt-6", "gpt-5", "o1", "o3", "o4")
#: Per-message framing tokens OpenAI adds around each chat message (an upper bound).
_MESSAGE_OVERHEAD = 8
#: Default output ceiling for a chat model whose catalog entry has no max_output_tokens.
_DEFAULT_MAX_OUTPUT = 4096
#: Tokens allowed per non-text content part (an image in a chat message) in the estimate.
_PART_ALLOWANCE = 2000
#: Lowest audio bitrates, for the longest a file of a given size can last (the hold, and the
#: most seconds an upstream may bill): MP3's lowest bitrate is 8 kbit/s; speech codecs
#: (Opus, AMR, AAC) go down to about 4.
_MIN_MP3_BYTES_PER_SECOND = 1000
_MIN_BYTES_PER_SECOND = 500
#: Audio tokens per second of input audio, for the hold of a model priced per audio token.
#: OpenAI counts one per 100 ms (its Realtime cost guide); its per-minute estimate for
#: gpt-4o-transcribe implies up to 16.7: the hold takes the higher figure.
_AUDIO_TOKENS_PER_SECOND = 17
#: Transcript formats of the models priced per token (they read and bill audio as tokens).
_TOKEN_TRANSCRIPT_FORMATS = ("json", "text")
#: The longest speech a text can become, for the hold of a model priced per audio token:
#: a second per byte of text at speed 1 (English is read at about 15 bytes a second,
#: Chinese about 12; the slowest reading, of long digit strings, about 2), and at least
#: ``_MIN_SPEECH_SECONDS`` (a word read with the pauses its instructions ask for).
_SPEECH_SECONDS_PER_BYTE = 1
_MIN_SPEECH_SECONDS = 5
#: Audio tokens per second of speech: OpenAI's estimate of $0.015 a minute for
#: gpt-4o-mini-tts at $12 per 1M audio tokens is 20.8 a second (about 19.6 measured).
_SPEECH_TOKENS_PER_SECOND = 21


@hookimpl
def register_providers(register: Any) -> None:
    register(
        ProviderSpec(
            name=PROVIDER,
            base_url="https://api.openai.com/v1",
            api_key_env="OPENAI_API_KEY",
            simulator="apimodels_openai.simulator:create_app",  # imported only when a simulator runs
            description="OpenAI: chat, embeddings, images, speech, transcription",
            data_sent="prompts and messages, images and audio sent for editing or transcription, text to speak",
        )
    )


# --- estimates (upper bounds, for the credit hold) -------------------------------------


def _text_tokens_upper_bound(text: str) -> int:
    # A BPE token is at least one byte, so the byte length bounds the token count.
    return len(text.encode())


def _image_variant(model: ModelConfig, request: ImageRequest) -> str:
    quality, size = _IMAGE_DEFAULTS.get(model.upstream, _GPT_IMAGE_DEFAULT)
    return f"{request.quality or quality}/{request.size or size}"


def _worst_variant(model: ModelConfig, variant: str) -> str:
    """For 'auto' quality or size, the most expensive priced variant that could result."""
    table = model.pricing.per_image
    quality, _, size = variant.partition("/")
    if not isinstance(table, dict) or (quality != "auto" and size != "auto"):
        return variant
    candidates = [
        v
        for v in table
        if (quality == "auto" or v.startswith(quality + "/"))
        and (size == "auto" or v.endswith("/" + size))
    ]
    return max(candidates, key=lambda v: table[v]) if candidates else variant


def _longest_seconds(data: bytes) -> Decimal:
    """The longest an uploaded audio file can last: exact where its headers say (WAV, FLAC,
    Ogg Opus), else its size at the lowest bitrate of its format."""
    seconds = _wav_seconds(data)
    if seconds is not None:
        return seconds
    if data[:4] == b"fLaC" or (data[:4] == b"OggS" and b"OpusHead" in data[:64]):
        exact = media.duration(data)
        if exact is not None:
            return Decimal(str(exact))
    mp3 = data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE6 == 0xE2)
    return Decimal(len(data)) / (_MIN_MP3_BYTES_PER_SECOND if mp3 else _MIN_BYTES_PER_SECOND)


def _wav_seconds(data: bytes) -> Decimal | None:
    try:
        with wave.open(io.BytesIO(data)) as w:
            return Decimal(w.getnframes()) / Decimal(w.getframerate())
    except (wave.Error, EOFError, ZeroDivisionError):
        return None


@hookimpl
def estimate_usage(model: ModelConfig, request: UnifiedRequest) -> Usage | None:
    if isinstance(request, ChatRequest):
        parts = sum(
            1
            for m in request.messages
            if isinstance(m.content, list)
            for p in m.content
            if isinstance(p, dict) and p.get("type") not in (None, "text")
        )
        prompt = _text_tokens_upper_bound(request.text()) + _MESSAGE_OVERHEAD * len(
            request.messages
        )
        prompt += _PART_ALLOWANCE * parts
        out = request.max_completion_tokens or request.max_tokens or model.max_output_tokens
        return Usage(
            input_tokens=prompt, output_tokens=(out or _DEFAULT_MAX_OUTPUT) * (request.n or 1)
        )
    if isinstance(request, EmbeddingRequest):
        items = request.input if isinstance(request.input, list) else [request.input]
        tokens = sum(
            len(i)
            if isinstance(i, list)
            else 1
            if isinstance(i, int)
            else _text_tokens_upper_bound(i)
            for i in items
        )
        return Usage(input_tokens=tokens)
    if isinstance(request, ImageRequest):
        return Usage(
            images=request.n, variant=_worst_variant(model, _image_variant(model, request))
        )
    if isinstance(request, SpeechRequest):
        if not _speech_token_priced(model):
            return Usage(characters=len(request.input))
        text = _text_tokens_upper_bound(request.input + (request.instructions or ""))
        seconds = max(
            _MIN_SPEECH_SECONDS,
            len(request.input.encode()) * _SPEECH_SECONDS_PER_BYTE / (request.speed or 1.0),
        )
        return Usage(
            # its window bounds what it reads (a longer text is refused upstream)
            input_tokens=min(text, model.context_tokens or text),
            audio_output_tokens=math.ceil(seconds * _SPEECH_TOKENS_PER_SECOND),
        )
    if isinstance(request, TranscriptionRequest):
        seconds = _longest_seconds(request.file)
        if not _token_priced(model):
            return Usage(seconds=seconds)
        # Never more input than the model's context window holds (a token-priced model must
        # have one): a long file is refused upstream, not held for hours of tokens.
        window = model.context_tokens or 0
        return Usage(
            seconds=seconds,
            audio_input_tokens=min(math.ceil(seconds * _AUDIO_TOKENS_PER_SECOND), window),
            input_tokens=min(_text_tokens_upper_bound(request.prompt or ""), window),
            output_tokens=model.max_output_tokens or _DEFAULT_MAX_OUTPUT,
        )
    return None


def _token_priced(model: ModelConfig) -> bool:
    """A transcription model that reads audio as tokens (gpt-4o-transcribe), not seconds."""
    return model.pricing.audio_input_per_1m is not None


def _speech_token_priced(model: ModelConfig) -> bool:
    """A speech model that writes audio as tokens (gpt-4o-mini-tts), not per character.
    OpenAI reports such a model's usage only in the last event of an SSE answer, so it is
    always asked for one (``stream_format: "sse"``), whatever the client asked for."""
    return model.pricing.audio_output_per_1m is not None


# --- requests --------------------------------------------------------------------------


def _headers(upstream: Upstream) -> dict[str, str]:
    return {"authorization": f"Bearer {upstream.api_key}"}


@hookimpl
def build_request(
    model: ModelConfig, request: UnifiedRequest, upstream: Upstream
) -> httpx.Request | None:
    headers = _headers(upstream)
    if isinstance(request, TranscriptionRequest):
        fields = request.model_dump(
            exclude_none=True, exclude={"file", "filename", "file_content_type", "response_format"}
        )
        fields["model"] = model.upstream
        # The answer that carries what billing needs (verbose_json: the duration; json: the
        # token usage of a model priced per token); the client's format is rendered from it.
        if not _token_priced(model):
            fields["response_format"] = "verbose_json"
        elif request.response_format in _TOKEN_TRANSCRIPT_FORMATS:
            fields["response_format"] = "json"
        else:
            raise InvalidRequest(
                f"{model.id} answers response_format json or text, not {request.response_format}",
                param="response_format",
                code="unsupported_value",
            )
        files = {"file": (request.filename, request.file, request.file_content_type)}
        data = {k: str(v) for k, v in fields.items()}
        return httpx.Request(
            "POST", upstream.url("/audio/transcriptions"), headers=headers, data=data, files=files
        )
    body = request.passthrough()
    body["model"] = model.upstream
    if isinstance(request, ChatRequest):
        path = "/chat/completions"
        if model.upstream.startswith(_REASONING_PREFIXES) and "max_tokens" in body:
            # Reasoning models refuse max_tokens; clients written for older models send it.
            body.setdefault("max_completion_tokens", body.pop("max_tokens"))
        if request.stream:
            # Always ask for the final usage chunk: billing needs it even when the client
            # did not ask (it is then dropped before reaching the client).
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    elif isinstance(request, EmbeddingRequest):
        path = "/embeddings"
    elif isinstance(request, ImageRequest):
        path = "/images/generations"
        if model.upstream.startswith("gpt-image"):
            # GPT image models always answer base64 and take no response_format: the core
            # stores the images when the client asked for URLs.
            body.pop("response_format", None)
    elif isinstance(request, SpeechRequest):
        path = "/audio/speech"
        if _speech_token_priced(model):
            body["stream_format"] = "sse"
    else:
        return None
    return upstream.json_request("POST", path, body, headers)


# --- responses -------------------------------------------------------------------------


def _chat_usage(usage: Any) -> Usage | None:
    """The upstream's usage, as it said it (the core refuses an impossible one before
    pricing it); None when it sent none."""
    if not isinstance(usage, dict) or (
        "prompt_tokens" not in usage and "completion_tokens" not in usage
    ):
        return None
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=_count(usage.get("prompt_tokens", 0)),
        cached_input_tokens=_count(details.get("cached_tokens", 0)),
        output_tokens=_count(usage.get("completion_tokens", 0)),
    )


def _count(value: Any) -> Any:
    """A token count: a whole float as an int; anything else as it came, for the core to
    refuse (never truncated into something plausible)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return 0 if value is None else value


def _timestamp(seconds: float) -> tuple[int, int, int, int]:
    ms = round(seconds * 1000)
    return ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60, ms % 1000


def _subtitles(segments: list[dict[str, Any]], vtt: bool) -> str:
    sep = "." if vtt else ","
    lines = ["WEBVTT", ""] if vtt else []
    for i, seg in enumerate(segments, 1):
        start = "{:02}:{:02}:{:02}{}{:03}".format(
            *_timestamp(seg["start"])[:3], sep, _timestamp(seg["start"])[3]
        )
        end = "{:02}:{:02}:{:02}{}{:03}".format(
            *_timestamp(seg["end"])[:3], sep, _timestamp(seg["end"])[3]
        )
        if not vtt:
            lines.append(str(i))
        lines += [f"{start} --> {end}", seg["text"].strip(), ""]
    return "\n".join(lines)


def _transcript_usage(model: ModelConfig, body: dict[str, Any]) -> Usage | None:
    """A transcription's usage: tokens (TranscriptTextUsageTokens) for a model priced per
    token, else the duration; None when the answer has none in the model's unit."""
    usage = body.get("usage")
    if _token_priced(model):
        if not isinstance(usage, dict) or "input_tokens" not in usage:
            return None  # no tokens (a duration, or nothing): charged its estimate
        total = usage["input_tokens"]
        details = usage.get("input_token_details")
        details = details if isinstance(details, dict) else {}
        text, audio = details.get("text_tokens"), details.get("audio_tokens")
        if isinstance(text, int) and isinstance(audio, int) and text + audio == total:
            pass
        elif isinstance(text, int) and audio is None and isinstance(total, int):
            audio = total - text  # the split is one part and the whole
        else:  # no split, or parts that do not add up: all of it at the audio price (dearer)
            text, audio = 0, total
        return Usage(
            input_tokens=_count(text),
            audio_input_tokens=_count(audio),
            output_tokens=_count(usage.get("output_tokens", 0)),
        )
    duration = body.get("duration")
    return None if duration is None else Usage(seconds=Decimal(str(duration)))


def _transcription(
    model: ModelConfig, request: TranscriptionRequest, body: dict[str, Any]
) -> Output:
    usage = _transcript_usage(model, body)
    fmt = request.response_format
    if fmt == "verbose_json":
        return Output(body, usage)
    if fmt == "json":  # with the upstream's usage, as OpenAI's json answer has it
        json_body = {"text": body["text"]}
        if isinstance(body.get("usage"), dict):
            json_body["usage"] = body["usage"]
        return Output(json_body, usage)
    if fmt == "text":
        return Output((body["text"] + "\n").encode(), usage, "text/plain; charset=utf-8")
    text = _subtitles(body.get("segments") or [], vtt=fmt == "vtt")
    return Output(text.encode(), usage, "text/vtt" if fmt == "vtt" else "application/x-subrip")


@hookimpl
def parse_response(
    model: ModelConfig, request: UnifiedRequest, response: httpx.Response
) -> Output | None:
    if isinstance(request, SpeechRequest):
        if _speech_token_priced(model):
            return _speech_from_events(request, response.content)
        content_type = response.headers.get("content-type") or _AUDIO_TYPES[request.response_format]
        return Output(response.content, Usage(characters=len(request.input)), content_type)
    body = fastjson.loads(response.content)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if isinstance(request, TranscriptionRequest):
        return _transcription(model, request, body)
    if isinstance(request, ChatRequest):
        body["model"] = model.id
        return Output(body, _chat_usage(body.get("usage")))
    if isinstance(request, EmbeddingRequest):
        body["model"] = model.id
        return Output(body, _chat_usage(body.get("usage")))
    if isinstance(request, ImageRequest):
        images = len(body["data"])
        quality, size = body.get("quality"), body.get("size")
        variant = f"{quality}/{size}" if quality and size else _image_variant(model, request)
        return Output(body, Usage(images=images, variant=variant))
    return None


@hookimpl
def parse_stream_event(
    model: ModelConfig, request: UnifiedRequest, data: str
) -> StreamEvent | None:
    chunk = fastjson.loads(data)
    if not isinstance(chunk, dict):
        raise ValueError("not a JSON object")
    if "error" in chunk or chunk.get("type") == "error":  # a mid-stream failure
        raise UpstreamError("openai reported an error while streaming")
    if isinstance(request, SpeechRequest):
        return _speech_event(chunk)
    chunk["model"] = model.id
    usage = chunk.get("usage")
    if not usage:
        return StreamEvent(chunk)
    wanted = (
        isinstance(request, ChatRequest)
        and request.stream_options is not None
        and request.stream_options.include_usage
    )
    if not wanted and not chunk.get("choices"):
        return StreamEvent(None, _chat_usage(usage))  # billing-only chunk
    return StreamEvent(chunk, _chat_usage(usage))


# --- speech priced per token ------------------------------------------------------------

_SPEECH_DELTA, _SPEECH_DONE = "speech.audio.delta", "speech.audio.done"


def _speech_usage(usage: Any) -> Usage | None:
    """A speech.audio.done event's usage: the text read (input) and the audio written
    (output), as the API reports them; None when it has none."""
    if not isinstance(usage, dict) or not {"input_tokens", "output_tokens"} & set(usage):
        return None
    return Usage(
        input_tokens=_count(usage.get("input_tokens", 0)),
        audio_output_tokens=_count(usage.get("output_tokens", 0)),
    )


def _speech_event(event: dict[str, Any]) -> StreamEvent:
    """A speech event, already in the unified shape (OpenAI's): others are dropped."""
    kind = event.get("type")
    if kind == _SPEECH_DELTA:
        return StreamEvent(event)
    if kind == _SPEECH_DONE:
        return StreamEvent(event, _speech_usage(event.get("usage")), done=True)
    return StreamEvent(None)


def _sse_data(body: bytes) -> list[str]:
    """The data of each event of a whole server-sent-events body."""
    events = body.replace(b"\r\n", b"\n").decode().split("\n\n")
    return [
        "\n".join(line[5:].removeprefix(" ") for line in e.split("\n") if line.startswith("data:"))
        for e in events
        if "data:" in e
    ]


def _speech_from_events(request: SpeechRequest, body: bytes) -> Output:
    """A whole SSE speech answer (a replayable call reads it at once): the audio or the
    events, as the client asked, and the done event's usage."""
    audio, usage, done = bytearray(), None, False
    for data in _sse_data(body):
        event = _speech_event(json.loads(data))
        if event.chunk is not None and event.chunk.get("type") == _SPEECH_DELTA:
            audio += base64.b64decode(event.chunk["audio"], validate=True)
        if event.done:
            usage, done = event.usage, True
    if not done or not audio:
        raise UpstreamError("openai ended the audio stream before it was complete")
    if request.stream_format == "sse":
        return Output(body, usage, "text/event-stream")
    return Output(bytes(audio), usage, _AUDIO_TYPES[request.response_format])


@hookimpl
def parse_audio_stream(model: ModelConfig, request: UnifiedRequest) -> AudioStream | None:
    if not isinstance(request, SpeechRequest) or not _speech_token_priced(model):
        return None  # the core's: the upstream's content type, billed per character
    if request.stream_format == "sse":
        return AudioStream("text/event-stream", events=True)
    return AudioStream(_AUDIO_TYPES[request.response_format], events=True)


# --- errors ----------------------------------------------------------------------------


@hookimpl
def parse_error(model: ModelConfig, response: httpx.Response) -> APIError | None:
    try:
        error = json.loads(response.content).get("error") or {}
    except (ValueError, AttributeError):
        return None  # the core's generic mapping
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    if code == "content_policy_violation" or error.get("type") == "content_policy_violation":
        return PermissionDenied(
            "The upstream provider refused this request under its content policy.",
            code="content_policy_violation",
        )
    if response.status_code == 400:
        return InvalidRequest(
            str(error.get("message") or "openai rejected the request"),
            code=code,
            param=error.get("param"),
        )
    return None


# --- voices ----------------------------------------------------------------------------

#: OpenAI's built-in voices. tts-1 and tts-1-hd speak with the first nine; the others only
#: with gpt-4o-mini-tts (OpenAI's text-to-speech guide).
_CLASSIC_VOICES = ("alloy", "ash", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer")
_NEWER_VOICES = ("ballad", "verse", "marin", "cedar")
VOICES = [Voice(v, v) for v in _CLASSIC_VOICES] + [
    Voice(v, v, models=("gpt-4o-mini-tts",)) for v in _NEWER_VOICES
]


@hookimpl
def list_voices() -> list[Voice]:
    return VOICES
