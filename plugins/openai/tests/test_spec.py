"""The simulator and the plugin, checked against OpenAI's published OpenAPI description
(a trimmed copy in data/, see data/SOURCE): what the simulator answers, and what the plugin
sends upstream."""

from __future__ import annotations

import base64
import io
import json
import struct
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import apimodels_openai as plugin
from apimodels import (
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    SpeechRequest,
    TranscriptionRequest,
    Upstream,
)
from apimodels.catalog import load_catalog
from apimodels.testing import OpenAPI, serve
from apimodels_openai.simulator import MODELS, create_app

SPEC = OpenAPI.load(Path(__file__).parent / "data" / "openai-openapi.trimmed.json")
CATALOG = load_catalog(Path(__file__).parents[3] / "registry.toml")
KEY = "sk-sim-spec-0123456789"


def wav(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\1" * int(16000 * seconds))
    return buf.getvalue()


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with serve(create_app(api_key=KEY)) as url:
        yield url


@pytest.fixture
def sim(origin: str) -> Iterator[httpx.Client]:
    httpx.delete(f"{origin}/_sim/knobs")
    with httpx.Client(
        base_url=f"{origin}/v1", headers={"authorization": f"Bearer {KEY}"}, timeout=10
    ) as client:
        yield client


def test_base64_embeddings_carry_the_same_vector(sim: httpx.Client) -> None:
    """The description only has the float form; base64 is little-endian float32 of it."""
    body = {"model": "text-embedding-3-small", "input": "hello", "dimensions": 6}
    floats = sim.post("/embeddings", json=body).json()["data"][0]["embedding"]
    encoded = sim.post("/embeddings", json=body | {"encoding_format": "base64"}).json()["data"][0][
        "embedding"
    ]
    decoded = struct.unpack("<6f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats, rel=1e-6)


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (
        "/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
    ),
    (
        "/chat/completions",
        {
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "Hi"},
            ],
            "max_tokens": 3,
        },
    ),
    ("/embeddings", {"model": "text-embedding-3-small", "input": "hello"}),
    ("/embeddings", {"model": "text-embedding-3-large", "input": ["a", "b"], "dimensions": 4}),
    (
        "/images/generations",
        {"model": "dall-e-3", "prompt": "a fox", "size": "1024x1792", "quality": "hd"},
    ),
    (
        "/images/generations",
        {"model": "dall-e-2", "prompt": "a fox", "n": 2, "response_format": "b64_json"},
    ),
    (
        "/images/generations",
        {"model": "gpt-image-2", "prompt": "a fox", "quality": "low", "size": "1024x1024"},
    ),
    (
        "/moderations",
        {"model": "omni-moderation-latest", "input": ["I will kill the lights", "hello"]},
    ),
]


@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=[f"{p}:{b['model']}" for p, b in REQUESTS])
def test_json_endpoints(sim: httpx.Client, path: str, body: dict[str, Any]) -> None:
    SPEC.validate_request("post", path, body)
    r = sim.post(path, json=body)
    assert r.status_code == 200, r.text
    SPEC.validate_response("post", path, 200, r.json())


def test_chat_stream_chunks(sim: httpx.Client) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    SPEC.validate_request("post", "/chat/completions", body)
    with sim.stream("POST", "/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        SPEC.validate_schema("CreateChatCompletionStreamResponse", chunk)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])


def test_models(sim: httpx.Client) -> None:
    listing = sim.get("/models").json()
    SPEC.validate_response("get", "/models", 200, listing)
    assert {m["id"] for m in listing["data"]} == set(MODELS)
    SPEC.validate_response("get", "/models/{model}", 200, sim.get("/models/gpt-4o").json())


def test_speech_and_transcription(sim: httpx.Client) -> None:
    body = {"model": "tts-1", "input": "Hello there", "voice": "alloy", "response_format": "wav"}
    SPEC.validate_request("post", "/audio/speech", body)
    audio = sim.post("/audio/speech", json=body)
    assert audio.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(audio.content)) as w:
        assert w.getnframes() > 0 and w.getframerate() == 24000
    fields = {"model": "whisper-1", "response_format": "verbose_json"}
    SPEC.validate_request(
        "post",
        "/audio/transcriptions",
        fields | {"file": "<binary>"},
        content_type="multipart/form-data",
    )
    r = sim.post(
        "/audio/transcriptions", data=fields, files={"file": ("a.wav", wav(12.5), "audio/wav")}
    )
    # The description's 200 is oneOf [Json, DiarizedJson, VerboseJson], and every verbose
    # answer also matches the looser Json: check each format against its own schema.
    SPEC.validate_schema("CreateTranscriptionResponseVerboseJson", r.json())
    assert r.json()["duration"] == 12.5
    plain = sim.post(
        "/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": ("a.wav", wav(3), "audio/wav")},
    )
    SPEC.validate_schema("CreateTranscriptionResponseJson", plain.json())
    assert plain.json()["usage"] == {"type": "duration", "seconds": 3}


def test_speech_events_carry_the_usage_the_description_gives_them(sim: httpx.Client) -> None:
    body = {
        "model": "gpt-4o-mini-tts",
        "input": "Hello there, in events.",
        "voice": "marin",
        "instructions": "Cheerfully.",
        "response_format": "pcm",
        "stream_format": "sse",
    }
    SPEC.validate_request("post", "/audio/speech", body)
    r = sim.post("/audio/speech", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    for event in events[:-1]:
        SPEC.validate_schema("SpeechAudioDeltaEvent", event)
        assert event["type"] == "speech.audio.delta"
    SPEC.validate_schema("SpeechAudioDoneEvent", events[-1])
    usage = events[-1]["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # the same audio as the plain answer, which reports no usage at all
    plain = sim.post("/audio/speech", json={**body, "stream_format": "audio"})
    assert plain.headers["content-type"] == "audio/pcm"
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == plain.content
    classic = {k: v for k, v in body.items() if k != "instructions"} | {"model": "tts-1"}
    refused = sim.post("/audio/speech", json=classic)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream_format"


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_error_bodies(sim: httpx.Client, origin: str, status: int) -> None:
    httpx.post(f"{origin}/_sim/knobs", json={"fail": [{"kind": "error", "status": status}]})
    r = sim.post(
        "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == status
    SPEC.validate_schema("ErrorResponse", r.json())
    if status == 429:
        assert r.headers["retry-after"] and r.headers["x-ratelimit-remaining-requests"] == "0"


def test_unknown_model_and_bad_key(sim: httpx.Client, origin: str) -> None:
    r = sim.post("/embeddings", json={"model": "gpt-99", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    SPEC.validate_schema("ErrorResponse", r.json())
    bad = httpx.post(
        f"{origin}/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
        headers={"authorization": "Bearer sk-wrong-0000000000000000"},
    )
    assert bad.status_code == 401
    assert (
        "sk-wrong-0000000000000000" not in bad.text
        and bad.json()["error"]["code"] == "invalid_api_key"
    )


# --- what the plugin sends upstream ----------------------------------------------------

UPSTREAM = Upstream("openai", "https://api.openai.test/v1", "sk-test")
UNIFIED = [
    ChatRequest.model_validate(
        {
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.5,
            "max_tokens": 20,
        }
    ),
    ChatRequest.model_validate(
        {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ),
    EmbeddingRequest(model="openai/text-embedding-3-small", input=["a", "b"], dimensions=8),
    ImageRequest(model="openai/gpt-image-2", prompt="a fox", size="1536x1024", quality="high", n=2),
    SpeechRequest(
        model="openai/tts-1-hd", input="Hello", voice="nova", response_format="flac", speed=1.25
    ),
    SpeechRequest(
        model="openai/gpt-4o-mini-tts", input="Hello", voice="cedar", instructions="Slowly."
    ),
]


@pytest.mark.parametrize("request_", UNIFIED, ids=lambda r: r.model)
def test_plugin_requests_match_the_description(request_: Any) -> None:
    built = plugin.build_request(CATALOG.models[request_.model], request_, UPSTREAM)
    path = built.url.path.removeprefix("/v1")
    SPEC.validate_request(built.method, path, json.loads(built.content))


def test_plugin_transcription_request_matches_the_description() -> None:
    req = TranscriptionRequest(
        model="openai/whisper-1", file=wav(), filename="a.wav", language="en", temperature=0.2
    )
    built = plugin.build_request(CATALOG.models["openai/whisper-1"], req, UPSTREAM)
    assert built.headers["content-type"].startswith("multipart/form-data")
    body = built.read()
    fields = {}
    for part in body.split(b"--" + built.headers["content-type"].split("boundary=")[1].encode()):
        if b'name="' in part and b"filename=" not in part:
            name = part.split(b'name="')[1].split(b'"')[0].decode()
            fields[name] = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0].decode()
    fields["temperature"] = float(fields["temperature"])
    assert b'name="file"; filename="a.wav"' in body
    SPEC.validate_request(
        "post",
        "/audio/transcriptions",
        fields | {"file": "<binary>"},
        content_type="multipart/form-data",
    )
    assert fields["model"] == "whisper-1" and fields["response_format"] == "verbose_json"
