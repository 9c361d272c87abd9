"""The OpenAI simulator over HTTP: every endpoint, its media, its errors and its knobs.

Each request sent is checked against OpenAI's published OpenAPI description with
``openapi_check.validate_request``, each answer with ``validate_response`` (see
``openapi_check.py`` and ``data/SOURCE``). Most tests use Starlette's TestClient; the knobs
that are about time and connections, and the official SDK, use a real uvicorn server on
127.0.0.1.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import itertools
import json
import math
import statistics
import struct
import time
import wave
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from apimodels.providers import media
from apimodels.testing import serve
from apimodels_openai.simulator import (
    EMBEDDING_DIMENSIONS,
    IMAGE_SIZES,
    MODELS,
    MODERATION_WORDS,
    SPEECH_FORMATS,
    create_app,
    mask_key,
    tokens,
)


def _load_check() -> Any:
    path = Path(__file__).with_name("openapi_check.py")
    spec = importlib.util.spec_from_file_location("apimodels_openai_openapi_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_check()
KEY = "sk-proj-simulator-test-0123456789abcdefWXYZ"
AUTH = {"authorization": f"Bearer {KEY}"}
HELLO = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Hello there, simulator"}],
}


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(api_key=KEY), headers=AUTH) as c:
        yield c


def post(client: TestClient | httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST a JSON body that the description accepts; check the answer's shape."""
    check.validate_request("POST", path, body)
    r = client.post(path, json=body)
    content_type = r.headers["content-type"]
    if content_type.startswith("application/json"):
        check.validate_response("POST", path, r.status_code, r.json())
    elif content_type.startswith("audio/"):
        check.validate_response("POST", path, r.status_code, r.content, content_type=content_type)
    return r


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    check.validate_response(r.request.method, r.request.url.path, status, r.json())
    return r.json()["error"]


def events(text: str) -> list[str]:
    """The data of each server-sent event."""
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the decompressed scanlines of a PNG (checking its chunk CRCs)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + chunk)
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    channels = {2: 3, 6: 4}[colour]
    pixels = zlib.decompress(idat)
    assert depth == 8 and len(pixels) == height * (1 + width * channels)
    return width, height, pixels


def wav_file(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * round(seconds * rate))
    return buf.getvalue()


# --- models ----------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: TestClient) -> None:
    listing = client.get("/v1/models")
    check.validate_response("GET", "/v1/models", 200, listing.json())
    assert [m["id"] for m in listing.json()["data"]] == list(MODELS)
    assert {"gpt-4o-mini", "dall-e-3", "whisper-1", "omni-moderation-latest"} <= set(MODELS)
    one = client.get("/v1/models/tts-1-hd")
    check.validate_response("GET", "/v1/models/tts-1-hd", 200, one.json())
    assert one.json()["id"] == "tts-1-hd" and one.json()["object"] == "model"
    error = error_of(client.get("/v1/models/gpt-99"), 404)
    assert error["code"] == "model_not_found" and "`gpt-99`" in error["message"]


# --- chat ------------------------------------------------------------------------------------


def test_chat_completion_is_deterministic_with_usage(client: TestClient) -> None:
    first, again = (
        post(client, "/v1/chat/completions", HELLO),
        post(client, "/v1/chat/completions", HELLO),
    )
    body = first.json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == again.json()["choices"][0]["message"]["content"]
    assert "Hello there simulator" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop" and body["object"] == "chat.completion"
    usage = body["usage"]
    assert usage["completion_tokens"] == tokens(choice["message"]["content"])
    # 3 framing + 1 role + the text per message, 3 priming the reply
    assert usage["prompt_tokens"] == 3 + 4 + tokens("Hello there, simulator")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert first.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_chat_token_limit_truncates(client: TestClient, limit: str) -> None:
    body = post(client, "/v1/chat/completions", HELLO | {limit: 3}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert len(body["choices"][0]["message"]["content"]) == 12


def test_chat_several_choices(client: TestClient) -> None:
    body = post(client, "/v1/chat/completions", HELLO | {"n": 2}).json()
    one, two = (c["message"]["content"] for c in body["choices"])
    assert [c["index"] for c in body["choices"]] == [0, 1] and one != two
    assert body["usage"]["completion_tokens"] == tokens(one) + tokens(two)


def test_reasoning_models_bill_reasoning_and_refuse_max_tokens(client: TestClient) -> None:
    body = post(client, "/v1/chat/completions", HELLO | {"model": "gpt-5"}).json()
    reasoning = body["usage"]["completion_tokens_details"]["reasoning_tokens"]
    content = body["choices"][0]["message"]["content"]
    assert reasoning > 0 and body["usage"]["completion_tokens"] == reasoning + tokens(content)
    r = post(client, "/v1/chat/completions", HELLO | {"model": "gpt-5", "max_tokens": 50})
    assert error_of(r, 400)["code"] == "unsupported_parameter"


@pytest.mark.parametrize(
    ("body", "param", "code", "described"),
    [
        ({"model": "gpt-4o-mini"}, "messages", "missing_required_parameter", True),
        ({"model": "gpt-4o-mini", "messages": []}, "messages", "empty_array", True),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
            True,
        ),
        (HELLO | {"temperature": 3}, "temperature", "decimal_above_max_value", True),
        (HELLO | {"max_tokens": 0}, "max_tokens", "integer_below_min_value", False),
        (
            HELLO | {"stream_options": {"include_usage": True}},
            "stream_options",
            "invalid_value",
            False,
        ),
        ({"messages": HELLO["messages"]}, None, None, True),
    ],
)
def test_chat_refuses_what_openai_refuses(
    client: TestClient, body: dict[str, Any], param: str | None, code: str | None, described: bool
) -> None:
    if described:  # the description refuses it too (the others are rules it does not state)
        with pytest.raises(AssertionError):
            check.validate_request("POST", "/chat/completions", body)
    else:
        check.validate_request("POST", "/chat/completions", body)
    error = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_unparseable_json_and_unknown_paths(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert "could not parse the JSON body" in error_of(r, 400)["message"]
    r = client.get("/v1/chat/completions")
    assert (
        r.status_code == 404
        and r.json()["error"]["message"] == "Invalid URL (GET /v1/chat/completions)"
    )
    check.validate_schema("ErrorResponse", r.json())


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream_chunks(client: TestClient, include_usage: bool) -> None:
    body = HELLO | {"stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r = post(client, "/v1/chat/completions", body)
    assert r.headers["content-type"].startswith("text/event-stream")
    data = events(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for chunk in chunks:
        check.validate_stream_chunk(chunk)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    if include_usage:
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"]["total_tokens"] > 0
        assert all("usage" in c and c["usage"] is None for c in chunks)
    else:
        assert all("usage" not in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    plain = post(client, "/v1/chat/completions", HELLO).json()
    assert text == plain["choices"][0]["message"]["content"]
    assert len(chunks) > 5  # one chunk per word, not one for everything
    if include_usage:
        assert last["usage"] == plain["usage"]


# --- embeddings ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(EMBEDDING_DIMENSIONS))
def test_embeddings_are_deterministic_unit_vectors(client: TestClient, model: str) -> None:
    body = {"model": model, "input": ["the cat", "the dog"]}
    data = post(client, "/v1/embeddings", body).json()
    one, two = (d["embedding"] for d in data["data"])
    assert len(one) == EMBEDDING_DIMENSIONS[model]
    assert math.isclose(sum(v * v for v in one), 1.0, rel_tol=1e-9) and one != two
    assert data["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    again = post(client, "/v1/embeddings", {"model": model, "input": "the cat"}).json()
    assert again["data"][0]["embedding"] == one


def test_embedding_dimensions_tokens_and_base64(client: TestClient) -> None:
    body = {"model": "text-embedding-3-small", "input": "hello", "dimensions": 8}
    floats = post(client, "/v1/embeddings", body).json()["data"][0]["embedding"]
    full = post(client, "/v1/embeddings", body | {"dimensions": 1536}).json()["data"][0][
        "embedding"
    ]
    norm = math.sqrt(sum(v * v for v in full[:8]))
    assert floats == pytest.approx([v / norm for v in full[:8]])  # truncated, renormalised
    # The description only knows the float form; base64 is little-endian float32 of it.
    check.validate_request("POST", "/v1/embeddings", body | {"encoding_format": "base64"})
    encoded = client.post("/v1/embeddings", json=body | {"encoding_format": "base64"}).json()
    decoded = list(struct.unpack("<8f", base64.b64decode(encoded["data"][0]["embedding"])))
    assert decoded == pytest.approx(floats, rel=1e-6)
    encoded["data"][0]["embedding"] = decoded
    check.validate_response("POST", "/v1/embeddings", 200, encoded)
    tokens_in = post(
        client, "/v1/embeddings", {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4]]}
    )
    assert tokens_in.json()["usage"]["prompt_tokens"] == 4
    too_many = client.post("/v1/embeddings", json=body | {"dimensions": 4000})
    assert error_of(too_many, 400)["param"] == "dimensions"
    empty = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": ""})
    assert "'$.input' is invalid" in error_of(empty, 400)["message"]


# --- images ----------------------------------------------------------------------------------


def test_image_urls_serve_real_png(client: TestClient) -> None:
    body = {"model": "dall-e-2", "prompt": "a lighthouse", "n": 2, "size": "512x512"}
    data = post(client, "/v1/images/generations", body).json()["data"]
    assert len(data) == 2
    for image in data:
        assert image["url"].startswith("http://testserver/_sim/files/img-")
        r = client.get(image["url"])
        assert r.headers["content-type"] == "image/png"
        assert png_pixels(r.content)[:2] == (64, 64)
    first, second = (png_pixels(client.get(i["url"]).content)[2] for i in data)
    assert first != second


def test_dall_e_3_b64_keeps_the_aspect_ratio(client: TestClient) -> None:
    body = {
        "model": "dall-e-3",
        "prompt": "a wide fox",
        "size": "1792x1024",
        "quality": "hd",
        "response_format": "b64_json",
    }
    image = post(client, "/v1/images/generations", body).json()["data"][0]
    assert png_pixels(base64.b64decode(image["b64_json"]))[:2] == (112, 64)
    assert "a wide fox" in image["revised_prompt"]
    again = post(client, "/v1/images/generations", body).json()["data"][0]
    assert again["b64_json"] == image["b64_json"]


@pytest.mark.parametrize(
    ("quality", "size", "per_image"),
    [("low", "1024x1024", 272), ("high", "1536x1024", 6208), ("auto", "auto", 1056)],
)
def test_gpt_image_1_answers_base64_with_usage(
    client: TestClient, quality: str, size: str, per_image: int
) -> None:
    body = {"model": "gpt-image-1", "prompt": "a fox", "quality": quality, "size": size, "n": 2}
    out = post(client, "/v1/images/generations", body).json()
    assert all("b64_json" in d and "url" not in d for d in out["data"])
    png_pixels(base64.b64decode(out["data"][0]["b64_json"]))
    assert out["usage"]["output_tokens"] == 2 * per_image
    assert out["usage"]["input_tokens"] == tokens("a fox")
    assert out["size"] != "auto" and out["quality"] != "auto"


@pytest.mark.parametrize("model", list(IMAGE_SIZES))
def test_image_sizes_are_checked_per_model(client: TestClient, model: str) -> None:
    r = client.post(
        "/v1/images/generations", json={"model": model, "prompt": "x", "size": "640x480"}
    )
    error = error_of(r, 400)
    assert error["param"] == "size" and all(s in error["message"] for s in IMAGE_SIZES[model])
    r = client.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "x", "n": 2})
    assert error_of(r, 400)["param"] == "n"


# --- speech ----------------------------------------------------------------------------------


def audio_seconds(fmt: str, data: bytes) -> float:
    if fmt == "pcm":
        return len(data) / 2 / 24000
    seconds = media.duration(data)
    assert seconds is not None
    return seconds


@pytest.mark.parametrize("fmt", list(SPEECH_FORMATS))
def test_speech_is_real_audio(client: TestClient, fmt: str) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 2  # 90 characters: 6 seconds
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": fmt}
    r = post(client, "/v1/audio/speech", body)
    assert r.headers["content-type"] == SPEECH_FORMATS[fmt]
    data = r.content
    if fmt == "mp3":
        assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    elif fmt == "wav":
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
            samples = struct.unpack(f"<{w.getnframes()}h", w.readframes(w.getnframes()))
            assert max(samples) > 4000  # a tone, not silence
    elif fmt == "flac":
        assert data[:4] == b"fLaC"
    elif fmt == "opus":
        assert data[:4] == b"OggS" and data[28:36] == b"OpusHead"
    elif fmt == "aac":
        assert data[0] == 0xFF and data[1] & 0xF6 == 0xF0  # ADTS sync, layer 0
    assert audio_seconds(fmt, data) == pytest.approx(6.0, abs=0.05)
    faster = post(client, "/v1/audio/speech", body | {"speed": 2.0})
    assert audio_seconds(fmt, faster.content) == pytest.approx(3.0, abs=0.05)


def test_speech_refuses_bad_input(client: TestClient) -> None:
    base = {"model": "tts-1-hd", "voice": "nova"}
    assert (
        error_of(client.post("/v1/audio/speech", json=base | {"input": ""}), 400)["param"]
        == "input"
    )
    long = client.post("/v1/audio/speech", json=base | {"input": "x" * 4097})
    assert error_of(long, 400)["code"] == "string_above_max_length"
    voice = client.post("/v1/audio/speech", json=base | {"input": "hi", "voice": "robot"})
    assert error_of(voice, 400)["param"] == "voice"
    fast = client.post("/v1/audio/speech", json=base | {"input": "hi", "speed": 5})
    assert error_of(fast, 400)["param"] == "speed"


# --- transcriptions --------------------------------------------------------------------------


def transcribe(
    client: TestClient | httpx.Client, audio: bytes, name: str = "a.wav", **fields: Any
) -> httpx.Response:
    fields = {"model": "whisper-1"} | fields
    check.validate_request(
        "POST",
        "/v1/audio/transcriptions",
        fields | {"file": audio},
        content_type="multipart/form-data",
    )
    return client.post("/v1/audio/transcriptions", data=fields, files={"file": (name, audio)})


def test_transcription_json_bills_the_real_duration(client: TestClient) -> None:
    r = transcribe(client, wav_file(12.3))
    check.validate_response("POST", "/v1/audio/transcriptions", 200, r.json())
    assert r.json()["usage"] == {"type": "duration", "seconds": 13}
    assert r.json()["text"] == transcribe(client, wav_file(12.3)).json()["text"]


def test_transcription_verbose_json_with_words(client: TestClient) -> None:
    r = transcribe(
        client,
        wav_file(12.5),
        response_format="verbose_json",
        language="fr",
        temperature="0.2",
        **{"timestamp_granularities[]": ["word", "segment"]},
    )
    body = r.json()
    check.validate_response("POST", "/v1/audio/transcriptions", 200, body)
    check.validate_schema("CreateTranscriptionResponseVerboseJson", body)
    assert (body["task"], body["language"], body["duration"]) == ("transcribe", "french", 12.5)
    assert [(s["start"], s["end"]) for s in body["segments"]] == [(0.0, 10.0), (10.0, 12.5)]
    assert body["words"][0]["start"] == 0.0 and body["words"][-1]["end"] == 12.5
    assert body["text"] == "".join(s["text"] for s in body["segments"]).strip()


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_transcription_text_formats(client: TestClient, fmt: str) -> None:
    r = transcribe(client, wav_file(15), response_format=fmt)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    if fmt == "srt":
        assert r.text.startswith("1\n00:00:00,000 --> 00:00:10,000\n")
        assert "\n2\n00:00:10,000 --> 00:00:15,000\n" in r.text
    elif fmt == "vtt":
        assert r.text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:10.000\n")
    else:
        assert r.text.strip() and "-->" not in r.text


def test_speech_round_trips_through_transcription(client: TestClient) -> None:
    mp3 = post(client, "/v1/audio/speech", {"model": "tts-1", "voice": "echo", "input": "x" * 150})
    r = transcribe(client, mp3.content, name="speech.mp3", response_format="verbose_json")
    assert r.json()["duration"] == pytest.approx(10.0, abs=0.05)
    r = transcribe(client, b"\x01" * 48000, name="mystery.bin", response_format="verbose_json")
    assert r.json()["duration"] == 3.0  # unknown formats: guessed at 128 kbit/s
    short = transcribe(client, wav_file(0.05))
    assert error_of(short, 400)["code"] == "audio_too_short"
    missing = client.post("/v1/audio/transcriptions", data={"model": "whisper-1"})
    assert error_of(missing, 400)["param"] == "file"


# --- moderations -----------------------------------------------------------------------------


def test_moderations_score_keywords(client: TestClient) -> None:
    body = {
        "model": "omni-moderation-latest",
        "input": ["I will kill you, you idiot", "Nice weather"],
    }
    out = post(client, "/v1/moderations", body).json()
    bad, fine = out["results"]
    assert set(bad["categories"]) == set(MODERATION_WORDS) and len(MODERATION_WORDS) == 13
    assert bad["flagged"] and bad["categories"]["violence"] and bad["categories"]["harassment"]
    assert not bad["categories"]["sexual"] and bad["category_scores"]["sexual"] < 0.01
    assert not fine["flagged"] and max(fine["category_scores"].values()) < 0.01
    assert bad["category_applied_input_types"]["violence"] == ["text"]
    single = post(client, "/v1/moderations", {"input": "How to launder money"}).json()
    assert (
        single["results"][0]["categories"]["illicit"]
        and single["model"] == "omni-moderation-latest"
    )


def test_moderation_of_an_image(client: TestClient) -> None:
    parts = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://example.test/gore.png"}},
    ]
    result = post(client, "/v1/moderations", {"input": parts}).json()["results"]
    assert len(result) == 1
    applied = result[0]["category_applied_input_types"]
    assert applied["violence/graphic"] == ["text", "image"] and applied["hate"] == ["text"]
    assert result[0]["categories"]["violence/graphic"] and result[0]["categories"]["violence"]


# --- keys and unknown models -----------------------------------------------------------------


def test_keys_are_checked_and_masked(client: TestClient) -> None:
    wrong = "sk-proj-abcdefgh0123456789WRONGkeyXyZ9"
    r = client.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
        headers={"authorization": f"Bearer {wrong}"},
    )
    error = error_of(r, 401)
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    masked = "sk-proj-" + "*" * (len(wrong) - 12) + "XyZ9"  # 8 characters, stars, 4
    assert mask_key(wrong) == masked and f"provided: {masked}. " in error["message"]
    assert wrong not in r.text
    r = client.get("/v1/models", headers={"authorization": ""})
    assert "You didn't provide an API key" in error_of(r, 401)["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", HELLO | {"model": "gpt-99"}),
        ("/v1/embeddings", {"model": "text-embedding-4", "input": "x"}),
        ("/v1/images/generations", {"model": "dall-e-4", "prompt": "x"}),
        ("/v1/audio/speech", {"model": "tts-2", "input": "x", "voice": "alloy"}),
        ("/v1/moderations", {"model": "text-moderation-007", "input": "x"}),
    ],
)
def test_unknown_models_are_404(client: TestClient, path: str, body: dict[str, Any]) -> None:
    error = error_of(client.post(path, json=body), 404)
    assert error == {
        "message": f"The model `{body['model']}` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


# --- knobs and recorded requests -------------------------------------------------------------


def test_knobs_endpoint_and_python_state(client: TestClient) -> None:
    knobs = client.post("/_sim/knobs", json={"latency": 0, "fail": {"kind": "malformed"}}).json()
    assert knobs == {"latency": 0, "stream_delay": 0.0, "fail": [{"kind": "malformed"}]}
    assert client.post("/_sim/knobs", json={"fail": [{"kind": "explode"}]}).status_code == 400
    assert client.delete("/_sim/knobs").json()["fail"] == []
    app: Any = client.app
    app.state.knobs["fail"].append({"kind": "error", "status": 503, "path": "/v1/embeddings"})
    assert post(client, "/v1/chat/completions", HELLO).status_code == 200  # another path
    embed = {"model": "text-embedding-3-small", "input": "x"}
    assert error_of(post(client, "/v1/embeddings", embed), 503)["type"] == "server_error"
    assert post(client, "/v1/embeddings", embed).status_code == 200


def test_requests_are_recorded_without_the_key(client: TestClient) -> None:
    post(client, "/v1/chat/completions", HELLO | {"max_tokens": 5})
    transcribe(client, wav_file(1), language="en")
    chat, audio = client.get("/_sim/requests").json()[-2:]
    assert chat["method"] == "POST" and chat["path"] == "/v1/chat/completions"
    assert chat["json"]["max_tokens"] == 5 and "authorization" not in chat["headers"]
    assert audio["json"] == {"model": "whisper-1", "language": "en"}
    assert audio["files"]["file"] == {"filename": "a.wav", "size": len(wav_file(1))}
    assert audio["seq"] == chat["seq"] + 1
    assert client.delete("/_sim/requests").json() == []


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with serve(create_app(api_key=KEY)) as url:
        yield url


@pytest.fixture
def live(origin: str) -> Iterator[httpx.Client]:
    """A client of the simulator on a real socket, its knobs reset."""
    with httpx.Client(base_url=origin, headers=AUTH, timeout=5) as c:
        c.delete("/_sim/knobs").raise_for_status()
        yield c


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 503])
def test_error_knob(live: httpx.Client, status: int) -> None:
    live.post("/_sim/knobs", json={"fail": [{"kind": "error", "status": status}]})
    r = post(live, "/v1/chat/completions", HELLO)
    error = error_of(r, status)
    assert r.headers["x-request-id"].startswith("req_")
    if status == 429:
        assert r.headers["retry-after"] == "1" and error["code"] == "rate_limit_exceeded"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert {"x-ratelimit-limit-tokens", "x-ratelimit-reset-requests"} <= set(r.headers)
    if status == 401:
        assert error["code"] == "invalid_api_key" and KEY not in r.text
    if status == 404:
        assert error["code"] == "model_not_found" and "gpt-4o-mini" in error["message"]
    assert post(live, "/v1/chat/completions", HELLO).status_code == 200  # one-shot


def test_error_knob_overrides(live: httpx.Client) -> None:
    failure = {
        "kind": "error",
        "status": 429,
        "code": "insufficient_quota",
        "type": "insufficient_quota",
    }
    live.post("/_sim/knobs", json={"fail": [failure]})
    error = error_of(post(live, "/v1/chat/completions", HELLO), 429)
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")


def test_malformed_knob(live: httpx.Client) -> None:
    live.post("/_sim/knobs", json={"fail": [{"kind": "malformed"}]})
    r = live.post("/v1/chat/completions", json=HELLO)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_cut_stream_knob(live: httpx.Client) -> None:
    live.post("/_sim/knobs", json={"fail": [{"kind": "cut_stream"}, {"kind": "cut_stream"}]})
    received = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        live.stream(
            "POST",
            "/v1/chat/completions",
            json=HELLO | {"stream": True, "stream_options": {"include_usage": True}},
        ) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: "):
                received.append(line[6:])
    assert 1 < len(received) < 5 and "[DONE]" not in received
    chunks = [json.loads(d) for d in received]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    with pytest.raises(httpx.RemoteProtocolError):  # not streaming: the body stops short
        live.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert post(live, "/v1/chat/completions", HELLO).status_code == 200


def test_timeout_knob_and_latency(live: httpx.Client) -> None:
    live.post("/_sim/knobs", json={"fail": [{"kind": "timeout"}]})
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        live.post("/v1/chat/completions", json=HELLO, timeout=0.3)
    assert time.monotonic() - started < 2
    live.post("/_sim/knobs", json={"latency": 0.3})
    started = time.monotonic()
    assert live.get("/v1/models").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_stream_delay_spaces_the_chunks(live: httpx.Client) -> None:
    delay = 0.05
    live.post("/_sim/knobs", json={"stream_delay": delay})
    arrivals = []
    started = time.monotonic()
    with live.stream(
        "POST", "/v1/chat/completions", json=HELLO | {"stream": True, "max_tokens": 8}
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):  # the chunks, not [DONE]
                arrivals.append(time.monotonic() - started)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 6 and statistics.median(gaps) > delay * 0.6
    assert arrivals[0] < arrivals[-1] - 3 * delay  # the first chunk came long before the end


def test_speech_is_sent_chunked(live: httpx.Client) -> None:
    body = {"model": "tts-1", "input": "x" * 300, "voice": "alloy", "response_format": "wav"}
    with live.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
        pieces = list(r.iter_raw())
    assert len(b"".join(pieces)) == len(media.wav(media.tone(20.0)))


# --- the official SDK ------------------------------------------------------------------------


def test_the_openai_sdk_parses_every_endpoint(origin: str, live: httpx.Client) -> None:
    with openai.OpenAI(base_url=f"{origin}/v1", api_key=KEY, max_retries=0, timeout=10) as sdk:
        assert {m.id for m in sdk.models.list()} == set(MODELS)
        assert sdk.models.retrieve("whisper-1").owned_by == "openai-internal"

        completion = sdk.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "Hi"}]
        )
        assert completion.choices[0].message.content and completion.usage is not None
        stream = sdk.chat.completions.create(
            model="gpt-4.1-nano",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == completion.choices[0].message.content

        # The SDK asks for base64 unless told otherwise, and decodes it.
        default = sdk.embeddings.create(model="text-embedding-3-large", input="hi", dimensions=16)
        floats = sdk.embeddings.create(
            model="text-embedding-3-large", input="hi", dimensions=16, encoding_format="float"
        )
        assert live.get("/_sim/requests").json()[-2]["json"]["encoding_format"] == "base64"
        assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)

        url = sdk.images.generate(model="dall-e-2", prompt="a cat", size="256x256")
        assert url.data and url.data[0].url and httpx.get(url.data[0].url).content[:4] == b"\x89PNG"
        b64 = sdk.images.generate(model="gpt-image-1", prompt="a cat", quality="low")
        assert b64.usage is not None and b64.usage.output_tokens == 272 and b64.data

        speech = sdk.audio.speech.create(
            model="tts-1", voice="alloy", input="Hello", response_format="wav"
        )
        audio = speech.read()
        assert audio[:4] == b"RIFF"
        text = sdk.audio.transcriptions.create(model="whisper-1", file=("hi.wav", audio))
        assert text.text
        verbose = sdk.audio.transcriptions.create(
            model="whisper-1", file=("hi.wav", audio), response_format="verbose_json"
        )
        assert verbose.duration == pytest.approx(0.5) and verbose.segments

        moderation = sdk.moderations.create(input="I will stab the sandwich")
        assert moderation.results[0].categories.violence and moderation.results[0].flagged

        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "x"}])
    with (
        openai.OpenAI(base_url=f"{origin}/v1", api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()


# --- numeric parameters, over a real socket ---------------------------------------------------

#: A JSON integer too large for a float (Python's float() raises OverflowError on it).
HUGE = "1" + "0" * 400
CHAT_BODY = '"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]'
SPEECH_BODY = '"model": "tts-1", "voice": "nova", "input": "hi"'
_CHAT = "/v1/chat/completions"


def post_raw(live: httpx.Client, path: str, base: str, extra: str) -> httpx.Response:
    """POST ``{base, extra}`` as written, so numbers reach the simulator as typed."""
    content = f"{{{base}, {extra}}}".encode()
    return live.post(path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("path", "extra", "param", "code"),
    [
        (_CHAT, '"temperature": 1e308', "temperature", "decimal_above_max_value"),
        (_CHAT, f'"temperature": {HUGE}', "temperature", "decimal_above_max_value"),
        (_CHAT, f'"temperature": -{HUGE}', "temperature", "decimal_below_min_value"),
        (_CHAT, '"temperature": 1e400', "temperature", "decimal_above_max_value"),
        (_CHAT, '"temperature": -0.1', "temperature", "decimal_below_min_value"),
        (_CHAT, '"top_p": 1.5', "top_p", "decimal_above_max_value"),
        (_CHAT, f'"top_p": {HUGE}', "top_p", "decimal_above_max_value"),
        (_CHAT, '"presence_penalty": 2.5', "presence_penalty", "decimal_above_max_value"),
        (_CHAT, f'"presence_penalty": -{HUGE}', "presence_penalty", "decimal_below_min_value"),
        (_CHAT, '"frequency_penalty": -3', "frequency_penalty", "decimal_below_min_value"),
        (_CHAT, f'"frequency_penalty": {HUGE}', "frequency_penalty", "decimal_above_max_value"),
        (_CHAT, '"presence_penalty": "lots"', "presence_penalty", "invalid_type"),
        (_CHAT, '"n": 0', "n", "integer_below_min_value"),
        (_CHAT, f'"n": {HUGE}', "n", "integer_above_max_value"),
        (_CHAT, '"max_tokens": 0', "max_tokens", "integer_below_min_value"),
        (_CHAT, '"max_completion_tokens": 0', "max_completion_tokens", "integer_below_min_value"),
        (_CHAT, '"logprobs": true, "top_logprobs": 21', "top_logprobs", "integer_above_max_value"),
        (_CHAT, f'"seed": {HUGE}', "seed", "integer_above_max_value"),
        ("/v1/audio/speech", f'"speed": {HUGE}', "speed", "decimal_above_max_value"),
        ("/v1/audio/speech", '"speed": 1e308', "speed", "decimal_above_max_value"),
        ("/v1/audio/speech", '"speed": 0.1', "speed", "decimal_below_min_value"),
    ],
)
def test_numbers_out_of_bounds_are_400_whatever_their_size(
    live: httpx.Client, path: str, extra: str, param: str, code: str
) -> None:
    base = CHAT_BODY if path == _CHAT else SPEECH_BODY
    error = error_of(post_raw(live, path, base, extra), 400)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert len(error["message"]) < 1000
    assert post_raw(live, path, base, '"n": 1').status_code == 200  # still serving


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_that_is_not_json_is_a_parse_error(live: httpx.Client, constant: str) -> None:
    """OpenAI's parser is strict JSON: NaN and Infinity are not numbers there."""
    r = post_raw(live, _CHAT, CHAT_BODY, f'"temperature": {constant}')
    assert "could not parse the JSON body" in error_of(r, 400)["message"]


def test_bounds_themselves_are_accepted(live: httpx.Client) -> None:
    for extra in (
        '"temperature": 0, "top_p": 0, "presence_penalty": -2, "frequency_penalty": 2',
        '"temperature": 2.0, "top_p": 1, "presence_penalty": 2, "frequency_penalty": -2.0',
        '"logprobs": true, "top_logprobs": 20, "seed": -9223372036854775808',
    ):
        assert post_raw(live, _CHAT, CHAT_BODY, extra).status_code == 200, extra
    for speed in ("0.25", "4"):
        r = post_raw(live, "/v1/audio/speech", SPEECH_BODY, f'"speed": {speed}')
        assert r.status_code == 200


@pytest.mark.parametrize(
    ("value", "code"), [(HUGE, "decimal_above_max_value"), ("nan", "invalid_type")]
)
def test_transcription_temperature_form_field(live: httpx.Client, value: str, code: str) -> None:
    r = live.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1", "temperature": value},
        files={"file": ("a.wav", wav_file(0.5))},
    )
    error = error_of(r, 400)
    assert (error["param"], error["code"]) == ("temperature", code)


# --- the checker itself ----------------------------------------------------------------------


def test_the_checker_is_strict() -> None:
    good = {
        "object": "list",
        "data": [{"id": "x", "object": "model", "created": 1, "owned_by": "me"}],
    }
    check.validate_response("GET", "/v1/models", 200, good)
    with pytest.raises(AssertionError, match="owned_by"):
        check.validate_response(
            "GET",
            "/v1/models",
            200,
            {"object": "list", "data": [{"id": "x", "object": "model", "created": 1}]},
        )
    with pytest.raises(AssertionError, match="created"):
        check.validate_response(
            "GET",
            "/v1/models/x",
            200,
            {"id": "x", "object": "model", "created": "yesterday", "owned_by": "me"},
        )
    with pytest.raises(AssertionError):
        check.validate_response("POST", "/v1/embeddings", 500, {"error": {"message": "no type"}})
    with pytest.raises(AssertionError):
        check.validate_request(
            "POST",
            "/v1/audio/speech",
            {"model": "tts-1", "input": "hi", "voice": "alloy", "speed": 9},
        )
    with pytest.raises(AssertionError):  # form fields are typed from the schema: "hot" is no number
        check.validate_request(
            "POST",
            "/v1/audio/transcriptions",
            {"model": "whisper-1", "file": b"", "temperature": "hot"},
            content_type="multipart/form-data",
        )
    with pytest.raises(AssertionError, match="no path"):
        check.validate_request("POST", "/v1/nothing", {})
