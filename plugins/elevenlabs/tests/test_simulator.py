"""The ElevenLabs simulator, checked against ElevenLabs' published OpenAPI description (a
trimmed copy in data/, see data/SOURCE): every request sent here is one the description
accepts, every JSON answer one it documents; and the requests the plugin builds are ones
it accepts. Audio is checked as audio: frame headers, lengths, sample rates."""

from __future__ import annotations

import array
import importlib
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

import apimodels_elevenlabs as plugin
from apimodels import SpeechRequest, Upstream
from apimodels.catalog import load_catalog
from apimodels.providers import media
from apimodels.testing import OpenAPI, serve
from apimodels_elevenlabs.simulator import (
    ACCOUNT_VOICE,
    MODELS,
    OUTPUT_FORMATS,
    VOICES,
    WAV_FORMATS,
    _alaw,
    _g711,
    _ulaw,
    create_app,
)

SPEC = OpenAPI.load(Path(__file__).parent / "data" / "elevenlabs-openapi.trimmed.json")
CATALOG = load_catalog(Path(__file__).parents[3] / "registry.toml")
KEY = "sk_simulator-test-0123456789abcdef"
ARIA = "9BWtsMINqrJLrRacOk9x"
TTS = "/v1/text-to-speech/{voice_id}"
STREAM = "/v1/text-to-speech/{voice_id}/stream"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(api_key=KEY), headers={"xi-api-key": KEY}) as c:
        yield c


def tts(
    client: TestClient | httpx.Client,
    body: dict[str, Any],
    *,
    voice: str = ARIA,
    output_format: str | None = None,
    stream: bool = True,
) -> httpx.Response:
    """POST a text-to-speech body the description accepts; check a JSON answer's shape."""
    template = STREAM if stream else TTS
    SPEC.validate_request("post", template, body)
    if output_format is not None:
        assert output_format in query_enum(template, "output_format")
    params = {"output_format": output_format} if output_format else {}
    r = client.post(template.format(voice_id=voice), json=body, params=params)
    if r.status_code == 422:
        SPEC.validate_response("post", template, 422, r.json())
    return r


def query_enum(template: str, name: str) -> list[str]:
    params = SPEC.spec["paths"][template]["post"]["parameters"]
    return next(p["schema"]["enum"] for p in params if p["name"] == name)


def test_the_formats_are_the_published_ones() -> None:
    assert list(OUTPUT_FORMATS) == query_enum(STREAM, "output_format")
    assert set(OUTPUT_FORMATS + WAV_FORMATS) == set(query_enum(TTS, "output_format"))


FORMATS = [(f, True) for f in OUTPUT_FORMATS] + [(f, False) for f in OUTPUT_FORMATS + WAV_FORMATS]


@pytest.mark.parametrize(("output_format", "stream"), FORMATS)
def test_every_output_format_is_real_audio(
    client: TestClient, output_format: str, stream: bool
) -> None:
    text = "x" * 30  # two seconds at 15 characters a second
    r = tts(
        client,
        {"text": text, "model_id": "eleven_flash_v2_5"},
        output_format=output_format,
        stream=stream,
    )
    assert r.status_code == 200
    assert r.headers["character-cost"] == "30" and r.headers["request-id"]
    codec, rate, *rest = output_format.split("_")
    audio = r.content
    if codec == "mp3":
        assert r.headers["content-type"] == "audio/mpeg"  # as the description documents
        SPEC.validate_response(
            "post", STREAM if stream else TTS, 200, "<binary>", content_type="audio/mpeg"
        )
        version = (audio[1] >> 3) & 0x03
        assert version == (3 if int(rate) >= 32000 else 2)  # MPEG-1 at 44.1 kHz, else MPEG-2
        assert media.duration(audio) == pytest.approx(2.0, abs=0.03)
        assert len(audio) * 8 / 2.0 == pytest.approx(int(rest[0]) * 1000, rel=0.02)
    elif codec == "pcm":
        assert len(audio) == 2 * int(rate) * 2
    elif codec in ("ulaw", "alaw"):
        assert len(audio) == 2 * 8000
        assert audio[0] == (0xFF if codec == "ulaw" else 0xD5)  # G.711 of silence (fade-in)
    elif codec == "wav":
        assert audio[:4] == b"RIFF" and media.duration(audio) == 2.0
        assert int.from_bytes(audio[24:28], "little") == int(rate)
    else:
        assert audio[:4] == b"OggS" and media.duration(audio) == pytest.approx(2.0, abs=0.03)


def test_g711_matches_the_reference_encoder() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            audioop = importlib.import_module("audioop")  # gone in Python 3.13
        except ImportError:
            pytest.skip("no audioop to compare with")
    samples = array.array("h", range(-32768, 32768)).tobytes()
    assert _g711(samples, _ulaw) == audioop.lin2ulaw(samples, 2)
    assert _g711(samples, _alaw) == audioop.lin2alaw(samples, 2)


def test_speed_changes_the_length(client: TestClient) -> None:
    body = {"text": "x" * 30, "voice_settings": {"speed": 1.2}}
    audio = tts(client, body, output_format="pcm_16000").content
    assert len(audio) == round(30 / 15 / 1.2 * 16000) * 2


@pytest.mark.parametrize(
    ("body", "params", "loc"),
    [
        ({"model_id": "eleven_v3"}, {}, ["body", "text"]),
        ({"text": "hi", "voice_settings": {"speed": 1.5}}, {}, ["body", "voice_settings", "speed"]),
        ({"text": "hi"}, {"output_format": "wav_44100"}, ["query", "output_format"]),
    ],
)
def test_invalid_input_is_fastapis_422(
    client: TestClient, body: dict[str, Any], params: dict[str, str], loc: list[str]
) -> None:
    r = client.post(f"/v1/text-to-speech/{ARIA}/stream", json=body, params=params)
    assert r.status_code == 422
    SPEC.validate_response("post", STREAM, 422, r.json())
    assert r.json()["detail"][0]["loc"] == loc


def test_runtime_errors_have_elevenlabs_detail(client: TestClient) -> None:
    r = tts(client, {"text": "hi"}, voice="nobody")
    assert r.status_code == 404
    assert (
        r.json()["detail"]["status"] == "voice_not_found"
        and "nobody" in r.json()["detail"]["message"]
    )
    r = tts(client, {"text": "hi", "model_id": "eleven_nothing"})
    assert r.status_code == 400 and r.json()["detail"]["status"] == "model_not_found"
    r = tts(client, {"text": "x" * 5001, "model_id": "eleven_v3"})
    assert r.status_code == 400 and r.json()["detail"]["status"] == "max_character_limit_exceeded"


def test_the_key_is_demanded_and_never_echoed(client: TestClient) -> None:
    missing = client.post(
        f"/v1/text-to-speech/{ARIA}", json={"text": "hi"}, headers={"xi-api-key": ""}
    )
    assert (
        missing.status_code == 401 and missing.json()["detail"]["status"] == "needs_authorization"
    )
    wrong = client.get("/v1/voices", headers={"xi-api-key": "sk_wrong-key-000000000000"})
    assert wrong.status_code == 401 and wrong.json()["detail"]["status"] == "invalid_api_key"
    assert "sk_wrong" not in wrong.text
    logged = client.get("/_sim/requests").json()
    assert all("xi-api-key" not in r["headers"] for r in logged)


def test_voices_and_models_match_the_description(client: TestClient) -> None:
    voices = client.get("/v1/voices").json()
    SPEC.validate_response("get", "/v1/voices", 200, voices)
    assert {v["voice_id"] for v in voices["voices"]} == set(VOICES)
    assert {id for id, *_ in plugin.PREMADE} | {ACCOUNT_VOICE[0]} == set(VOICES)
    models = client.get("/v1/models").json()
    SPEC.validate_response("get", "/v1/models", 200, models)
    assert {m["model_id"] for m in models} == set(MODELS)
    served = {m.upstream for m in CATALOG.models.values() if m.provider == "elevenlabs"}
    assert served <= set(MODELS)


def test_knobs_fail_then_recover(client: TestClient) -> None:
    client.post(
        "/_sim/knobs", json={"fail": [{"kind": "error", "status": 401, "code": "quota_exceeded"}]}
    )
    r = tts(client, {"text": "hi"})
    assert r.status_code == 401 and r.json()["detail"]["status"] == "quota_exceeded"
    busy = client.post("/_sim/knobs", json={"fail": {"kind": "error", "status": 429}})
    assert busy.status_code == 200
    r = tts(client, {"text": "hi"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert tts(client, {"text": "hi"}).status_code == 200
    assert client.post("/_sim/knobs", json={"fail": [{"kind": "nope"}]}).status_code == 400


def test_audio_streams_in_chunks_and_can_be_cut() -> None:
    with (
        serve(create_app(api_key=KEY)) as origin,
        httpx.Client(base_url=origin, headers={"xi-api-key": KEY}) as http,
    ):
        http.post("/_sim/knobs", json={"stream_delay": 0.05})
        body = {"text": "x" * 15}  # one second of pcm_24000: 48,000 bytes in 12 chunks
        arrivals = []
        with http.stream(
            "POST",
            f"/v1/text-to-speech/{ARIA}/stream",
            json=body,
            params={"output_format": "pcm_24000"},
        ) as r:
            started = time.monotonic()
            for chunk in r.iter_raw():
                arrivals.append((time.monotonic() - started, len(chunk)))
        assert sum(n for _, n in arrivals) == 48000
        assert arrivals[-1][0] - arrivals[0][0] > 0.4
        http.post(
            "/_sim/knobs", json={"stream_delay": 0, "fail": [{"kind": "cut_stream", "after": 2}]}
        )
        with (
            pytest.raises(httpx.RemoteProtocolError),
            http.stream(
                "POST",
                f"/v1/text-to-speech/{ARIA}/stream",
                json=body,
                params={"output_format": "pcm_24000"},
            ) as r,
        ):
            r.read()


# --- what the plugin sends upstream ------------------------------------------------------

UPSTREAM = Upstream("elevenlabs", "https://api.elevenlabs.test", KEY)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "wav", "pcm"])
@pytest.mark.parametrize("speed", [None, 0.9])
def test_plugin_requests_match_the_description(fmt: str, speed: float | None) -> None:
    for model in (m for m in CATALOG.models.values() if m.provider == "elevenlabs"):
        request = SpeechRequest(
            model=model.id, input="Hello", voice="Lily", response_format=fmt, speed=speed
        )  # type: ignore[arg-type]
        built = plugin.build_request(model, request, UPSTREAM)
        SPEC.validate_request("post", STREAM, json.loads(built.content))
        assert built.url.params["output_format"] in query_enum(STREAM, "output_format")
        assert built.url.path == "/v1/text-to-speech/pFZP5JQG7iQjIQuC4Bku/stream"
