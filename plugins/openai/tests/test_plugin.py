"""The OpenAI plugin's hooks, sans-I/O: requests built, responses read, no server needed."""

from __future__ import annotations

import io
import json
import wave
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

import apimodels_openai as plugin
from apimodels import (
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    PermissionDenied,
    SpeechRequest,
    TranscriptionRequest,
    Upstream,
    UpstreamError,
)
from apimodels.catalog import load_catalog

CATALOG = load_catalog(Path(__file__).parents[3] / "registry.toml")
UPSTREAM = Upstream("openai", "https://api.openai.test/v1", "sk-test-secret")


def model(model_id: str):  # type: ignore[no-untyped-def]
    return CATALOG.models[model_id]


def chat(**kw) -> ChatRequest:  # type: ignore[no-untyped-def]
    return ChatRequest.model_validate(
        {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "héllo"}], **kw}
    )


def test_chat_request_uses_the_upstream_id_and_passes_unknown_fields() -> None:
    req = plugin.build_request(model("openai/gpt-4o-mini"), chat(temperature=0.2, seed=7), UPSTREAM)
    assert req.url == "https://api.openai.test/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test-secret"
    body = json.loads(req.content)
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.2 and body["seed"] == 7
    assert "stream_options" not in body


def test_streams_always_ask_for_usage() -> None:
    req = plugin.build_request(model("openai/gpt-4o-mini"), chat(stream=True), UPSTREAM)
    assert json.loads(req.content)["stream_options"] == {"include_usage": True}


def test_chat_estimate_is_an_upper_bound() -> None:
    usage = plugin.estimate_usage(model("openai/gpt-4o-mini"), chat(max_tokens=50))
    assert usage.input_tokens >= len("héllo".encode()) and usage.output_tokens == 50
    default = plugin.estimate_usage(model("openai/gpt-4o-mini"), chat())
    assert default.output_tokens == 16384  # the model's max_output_tokens from the catalog
    two = plugin.estimate_usage(model("openai/gpt-4o-mini"), chat(max_tokens=10, n=2))
    assert two.output_tokens == 20


def test_image_estimate_prices_auto_at_the_dearest_variant() -> None:
    req = ImageRequest(model="openai/gpt-image-2", prompt="x", n=2)
    usage = plugin.estimate_usage(model("openai/gpt-image-2"), req)
    assert usage.images == 2 and usage.variant == "high/1024x1024"  # $0.211, the dearest
    sized = ImageRequest(model="openai/gpt-image-2", prompt="x", size="1024x1024", quality="auto")
    assert plugin.estimate_usage(model("openai/gpt-image-2"), sized).variant == "high/1024x1024"
    low = ImageRequest(model="openai/gpt-image-2", prompt="x", size="1536x1024", quality="low")
    assert plugin.estimate_usage(model("openai/gpt-image-2"), low).variant == "low/1536x1024"


def test_image_response_is_priced_by_what_was_made() -> None:
    req = ImageRequest(model="openai/gpt-image-2", prompt="x")
    body = {"created": 1, "data": [{"b64_json": "AA=="}], "quality": "low", "size": "1024x1024"}
    out = plugin.parse_response(model("openai/gpt-image-2"), req, httpx.Response(200, json=body))
    assert out.usage.images == 1 and out.usage.variant == "low/1024x1024"


def test_chat_response_usage_and_public_model_id() -> None:
    body = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "total_tokens": 14,
            "prompt_tokens_details": {"cached_tokens": 6},
        },
    }
    out = plugin.parse_response(model("openai/gpt-4o-mini"), chat(), httpx.Response(200, json=body))
    assert out.body["model"] == "openai/gpt-4o-mini"
    assert (out.usage.input_tokens, out.usage.cached_input_tokens, out.usage.output_tokens) == (
        10,
        6,
        4,
    )


def test_stream_usage_chunk_dropped_unless_asked() -> None:
    data = json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    silent = plugin.parse_stream_event(model("openai/gpt-4o-mini"), chat(stream=True), data)
    assert silent.chunk is None and silent.usage.output_tokens == 2
    asked = plugin.parse_stream_event(
        model("openai/gpt-4o-mini"), chat(stream=True, stream_options={"include_usage": True}), data
    )
    assert (
        asked.chunk["usage"]["total_tokens"] == 5 and asked.chunk["model"] == "openai/gpt-4o-mini"
    )
    with pytest.raises(UpstreamError):
        plugin.parse_stream_event(
            model("openai/gpt-4o-mini"), chat(stream=True), '{"error": {"message": "boom"}}'
        )


def test_embeddings_and_speech() -> None:
    emb = EmbeddingRequest(model="openai/text-embedding-3-small", input=["ab", "cd"])
    assert plugin.estimate_usage(model("openai/text-embedding-3-small"), emb).input_tokens == 4
    req = plugin.build_request(model("openai/text-embedding-3-small"), emb, UPSTREAM)
    assert json.loads(req.content)["model"] == "text-embedding-3-small"
    speech = SpeechRequest(
        model="openai/tts-1", input="Hello", voice="alloy", response_format="wav"
    )
    out = plugin.parse_response(
        model("openai/tts-1"),
        speech,
        httpx.Response(200, content=b"RIFF", headers={"content-type": "audio/wav"}),
    )
    assert out.body == b"RIFF" and out.usage.characters == 5 and out.content_type == "audio/wav"


def _wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * int(8000 * seconds))
    return buf.getvalue()


def test_transcription_asks_verbose_json_and_renders_the_clients_format() -> None:
    req = TranscriptionRequest(
        model="openai/whisper-1", file=_wav(2.5), filename="a.wav", response_format="srt"
    )
    assert plugin.estimate_usage(model("openai/whisper-1"), req).seconds == Decimal("2.5")
    built = plugin.build_request(model("openai/whisper-1"), req, UPSTREAM)
    content = built.read()
    assert (
        b'name="response_format"\r\n\r\nverbose_json' in content
        and b'name="model"\r\n\r\nwhisper-1' in content
    )
    verbose = {
        "task": "transcribe",
        "language": "english",
        "duration": 2.5,
        "text": "Hi there.",
        "segments": [{"id": 0, "start": 0.0, "end": 2.5, "text": " Hi there."}],
    }
    out = plugin.parse_response(model("openai/whisper-1"), req, httpx.Response(200, json=verbose))
    assert out.usage.seconds == Decimal("2.5")
    assert out.body == b"1\n00:00:00,000 --> 00:00:02,500\nHi there.\n"


def test_error_mapping() -> None:
    refusal = httpx.Response(
        400,
        json={
            "error": {
                "message": "no",
                "type": "invalid_request_error",
                "code": "content_policy_violation",
                "param": None,
            }
        },
    )
    assert isinstance(plugin.parse_error(model("openai/gpt-image-2"), refusal), PermissionDenied)
    bad = httpx.Response(
        400,
        json={
            "error": {
                "message": "Invalid 'temperature'",
                "type": "invalid_request_error",
                "code": "invalid_value",
                "param": "temperature",
            }
        },
    )
    err = plugin.parse_error(model("openai/gpt-4o-mini"), bad)
    assert (err.status, err.param, err.message) == (400, "temperature", "Invalid 'temperature'")
    assert (
        plugin.parse_error(model("openai/gpt-4o-mini"), httpx.Response(500, content=b"<html>"))
        is None
    )


def test_reasoning_models_get_max_completion_tokens() -> None:
    req = ChatRequest.model_validate(
        {
            "model": "openai/gpt-6.1-terra",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 64,
        }
    )
    body = json.loads(plugin.build_request(model("openai/gpt-6.1-terra"), req, UPSTREAM).content)
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    older = plugin.build_request(model("openai/gpt-4o"), chat(max_tokens=64), UPSTREAM)
    assert json.loads(older.content)["max_tokens"] == 64


def test_an_upload_is_held_for_the_longest_it_can_last() -> None:
    """Exact where the headers say (WAV), else the size at the format's lowest bitrate: a
    12 kbit/s voice note is never held (and capped) shorter than it is."""
    whisper = model("openai/whisper-1")
    wav = TranscriptionRequest(model="openai/whisper-1", file=_wav(2.0))
    assert plugin.estimate_usage(whisper, wav).seconds == Decimal(2)
    mp3 = TranscriptionRequest(model="openai/whisper-1", file=b"ID3" + b"\0" * 99_997)
    assert plugin.estimate_usage(whisper, mp3).seconds == Decimal(100)  # 8 kbit/s
    opus_90k = TranscriptionRequest(model="openai/whisper-1", file=b"\x1aE\xdf\xa3" + bytes(89_996))
    assert plugin.estimate_usage(whisper, opus_90k).seconds == Decimal(180)  # 4 kbit/s
    token = model("openai/gpt-4o-transcribe")
    long = TranscriptionRequest(model="openai/gpt-4o-transcribe", file=bytes(25_000_000))
    held = plugin.estimate_usage(token, long)
    assert held.audio_input_tokens == token.context_tokens == 16000  # never past the window


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {
                "input_tokens": 310,
                "input_token_details": {"text_tokens": 10, "audio_tokens": 300},
                "output_tokens": 5,
            },
            (10, 300),
        ),
        (
            {"input_tokens": 1000, "input_token_details": {"text_tokens": 10}, "output_tokens": 5},
            (10, 990),
        ),
        ({"input_tokens": 1000, "input_token_details": {}, "output_tokens": 5}, (0, 1000)),
        (
            {
                "input_tokens": 1000,
                "input_token_details": {"text_tokens": 10, "audio_tokens": 5},
                "output_tokens": 5,
            },
            (0, 1000),
        ),
        ({"input_tokens": 1000, "output_tokens": 5}, (0, 1000)),
    ],
)
def test_a_token_transcript_usage_is_never_undercounted(
    usage: dict, expected: tuple[int, int]
) -> None:
    req = TranscriptionRequest(model="openai/gpt-4o-transcribe", file=_wav(1.0))
    body = {"text": "hi", "usage": {"type": "tokens", **usage}}
    out = plugin.parse_response(
        model("openai/gpt-4o-transcribe"), req, httpx.Response(200, json=body)
    )
    assert (out.usage.input_tokens, out.usage.audio_input_tokens) == expected
    assert out.usage.output_tokens == 5


# --- speech priced per token -------------------------------------------------------------

TTS = "openai/gpt-4o-mini-tts"


def tts(**kw) -> SpeechRequest:  # type: ignore[no-untyped-def]
    return SpeechRequest.model_validate({"model": TTS, "voice": "coral", "input": "Héllo", **kw})


def test_speech_priced_per_token_is_held_for_a_second_per_byte_of_text() -> None:
    held = plugin.estimate_usage(model(TTS), tts(input="x" * 100, instructions="Calmly."))
    assert held.input_tokens == 107  # the text and the instructions, a token per byte at most
    assert held.audio_output_tokens == 100 * 21  # 100 s of speech, 21 audio tokens a second
    assert held.characters == 0
    slow = plugin.estimate_usage(model(TTS), tts(input="x" * 100, speed=0.5))
    assert slow.audio_output_tokens == 200 * 21
    short = plugin.estimate_usage(model(TTS), tts(input="Hi"))
    assert short.audio_output_tokens == 5 * 21  # at least five seconds
    long = plugin.estimate_usage(model(TTS), tts(input="é" * 4000))
    assert long.input_tokens == 2000  # never past the model's window
    assert long.audio_output_tokens == 8000 * 21  # é is two bytes
    classic = plugin.estimate_usage(model("openai/tts-1"), tts(model="openai/tts-1"))
    assert (classic.characters, classic.audio_output_tokens) == (5, 0)


@pytest.mark.parametrize("asked", [None, "audio", "sse"])
def test_speech_priced_per_token_is_always_asked_for_events(asked: str | None) -> None:
    built = plugin.build_request(model(TTS), tts(stream_format=asked), UPSTREAM)
    body = json.loads(built.content)
    assert body["stream_format"] == "sse" and body["model"] == "gpt-4o-mini-tts"
    classic = plugin.build_request(model("openai/tts-1"), tts(model="openai/tts-1"), UPSTREAM)
    assert "stream_format" not in json.loads(classic.content)
    head = plugin.parse_audio_stream(model(TTS), tts(stream_format=asked, response_format="wav"))
    assert head.events
    assert head.content_type == ("text/event-stream" if asked == "sse" else "audio/wav")
    assert plugin.parse_audio_stream(model("openai/tts-1"), tts(model="openai/tts-1")) is None


def _speech_events(usage: dict | None) -> bytes:
    delta = {"type": "speech.audio.delta", "audio": "AAEC"}
    done = {"type": "speech.audio.done"} | ({"usage": usage} if usage is not None else {})
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in (delta, delta, done))


def test_speech_events_are_read_with_the_done_events_usage() -> None:
    usage = {"input_tokens": 14, "output_tokens": 101, "total_tokens": 115}
    done = plugin.parse_stream_event(
        model(TTS), tts(), json.dumps({"type": "speech.audio.done", "usage": usage})
    )
    assert done.done and (done.usage.input_tokens, done.usage.audio_output_tokens) == (14, 101)
    delta = plugin.parse_stream_event(
        model(TTS), tts(), '{"type": "speech.audio.delta", "audio": "AAEC"}'
    )
    assert delta.chunk == {"type": "speech.audio.delta", "audio": "AAEC"} and not delta.done
    other = plugin.parse_stream_event(model(TTS), tts(), '{"type": "speech.audio.later"}')
    assert other.chunk is None and other.usage is None
    with pytest.raises(UpstreamError):
        plugin.parse_stream_event(model(TTS), tts(), '{"type": "error", "error": {}}')


def test_a_whole_event_answer_is_the_audio_or_the_events_with_the_usage() -> None:
    body = _speech_events({"input_tokens": 2, "output_tokens": 30, "total_tokens": 32})
    audio = plugin.parse_response(model(TTS), tts(), httpx.Response(200, content=body))
    assert audio.body == b"\0\1\2" * 2 and audio.content_type == "audio/mpeg"
    assert (audio.usage.input_tokens, audio.usage.audio_output_tokens) == (2, 30)
    events = plugin.parse_response(
        model(TTS), tts(stream_format="sse"), httpx.Response(200, content=body)
    )
    assert events.body == body and events.content_type == "text/event-stream"
    cut = _speech_events(None).split(b"data: ")
    with pytest.raises(UpstreamError):  # no done event: not the whole answer
        plugin.parse_response(
            model(TTS), tts(), httpx.Response(200, content=b"data: ".join(cut[:3]))
        )
