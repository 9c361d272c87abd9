"""The ElevenLabs plugin's hooks, sans I/O: what it builds from a unified speech request,
how it reads answers, and how it maps ElevenLabs' errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest

import apimodels_elevenlabs as plugin
from apimodels import InvalidRequest, ModelConfig, SpeechRequest, Upstream, Usage
from apimodels.billing.pricing import price_usage
from apimodels.catalog import load_catalog
from apimodels.errors import RateLimited, ServiceUnavailable, UpstreamError
from apimodels.providers import media

CATALOG = load_catalog(Path(__file__).parents[3] / "registry.toml")
MODELS = {k: m for k, m in CATALOG.models.items() if m.provider == "elevenlabs"}
KEY = "sk_upstream-secret-0123456789abcdef"
SETTINGS = plugin.Settings(voices={"My Narrator": "nArRaToR000000000000"})
UPSTREAM = Upstream("elevenlabs", "https://api.elevenlabs.test", KEY, SETTINGS)
FLASH = MODELS["elevenlabs/eleven-flash-v2.5"]


def speech(**fields: Any) -> SpeechRequest:
    return SpeechRequest.model_validate(
        {"model": "elevenlabs/eleven-flash-v2.5", "input": "Hello", "voice": "Aria"} | fields
    )


def test_the_catalog_lists_the_current_models_and_the_simulator_serves_them() -> None:
    from apimodels_elevenlabs.simulator import MODELS as SIMULATED

    assert {m.upstream for m in MODELS.values()} == {
        "eleven_v4",
        "eleven_v4_turbo",
        "eleven_v3",
        "eleven_multilingual_v2",
        "eleven_flash_v2_5",
        "eleven_turbo_v2_5",
    }
    assert {m.upstream for m in MODELS.values()} <= set(SIMULATED)


@pytest.mark.parametrize("model", MODELS.values(), ids=lambda m: m.id)
def test_every_model_maps_prices_and_normalizes(model: ModelConfig) -> None:
    request = speech(model=model.id, input="x" * 1000)
    usage = plugin.estimate_usage(model, request)
    assert usage == Usage(characters=1000)
    one_k = price_usage(model.pricing, usage)
    assert one_k == model.pricing.per_1k_chars and one_k > 0
    assert price_usage(model.pricing, Usage(characters=2000)) == 2 * one_k
    built = plugin.build_request(model, request, UPSTREAM)
    assert json.loads(built.content)["model_id"] == model.upstream
    response = httpx.Response(200, content=b"\xff\xfb\x90\xc4" + bytes(413), request=built)
    output = plugin.parse_response(model, request, response)
    assert output.usage == usage and output.content_type == "audio/mpeg"
    head = plugin.parse_audio_stream(model, request)
    assert head.usage == usage and head.prefix == b""


def test_request_mapping() -> None:
    built = plugin.build_request(FLASH, speech(input="Hi there", speed=0.8), UPSTREAM)
    assert built.method == "POST"
    assert built.url.path == "/v1/text-to-speech/9BWtsMINqrJLrRacOk9x/stream"
    assert built.url.params["output_format"] == "mp3_44100_128"
    assert built.headers["xi-api-key"] == KEY
    assert json.loads(built.content) == {
        "text": "Hi there",
        "model_id": "eleven_flash_v2_5",
        "voice_settings": {"speed": 0.8},
    }


@pytest.mark.parametrize(
    ("voice", "voice_id"),
    [
        ("Aria", "9BWtsMINqrJLrRacOk9x"),
        ("aRiA", "9BWtsMINqrJLrRacOk9x"),
        ("9bwtsminqrjlrracok9x", "9BWtsMINqrJLrRacOk9x"),
        ("george", "JBFqnCBsd6RMkjVDRZzb"),
        ("my narrator", "nArRaToR000000000000"),
    ],
)
def test_voices_by_name_or_id_in_any_case(voice: str, voice_id: str) -> None:
    built = plugin.build_request(FLASH, speech(voice=voice), UPSTREAM)
    assert built.url.path == f"/v1/text-to-speech/{voice_id}/stream"


def test_voice_list_comes_from_the_plugin_and_its_settings() -> None:
    voices = plugin.list_voices(UPSTREAM)
    assert len(voices) == len(plugin.PREMADE) + 1
    assert voices[-1].id == "nArRaToR000000000000" and voices[-1].name == "My Narrator"
    assert len({v.id for v in voices}) == len(voices)
    with pytest.raises(InvalidRequest) as caught:
        plugin.build_request(FLASH, speech(voice="Nobody"), UPSTREAM)
    assert caught.value.param == "voice" and "'Nobody'" in caught.value.message


@pytest.mark.parametrize(
    ("fmt", "output_format", "content_type"),
    [
        ("mp3", "mp3_44100_128", "audio/mpeg"),
        ("opus", "opus_48000_64", "audio/opus"),
        ("pcm", "pcm_24000", "audio/pcm"),
        ("wav", "pcm_24000", "audio/wav"),
    ],
)
def test_formats(fmt: str, output_format: str, content_type: str) -> None:
    request = speech(response_format=fmt)
    built = plugin.build_request(FLASH, request, UPSTREAM)
    assert built.url.params["output_format"] == output_format
    assert plugin.parse_audio_stream(FLASH, request).content_type == content_type


def test_the_mp3_format_is_a_setting() -> None:
    upstream = Upstream(
        "elevenlabs", "https://x.test", KEY, plugin.Settings(mp3_format="mp3_22050_32")
    )
    built = plugin.build_request(FLASH, speech(), upstream)
    assert built.url.params["output_format"] == "mp3_22050_32"


def test_wav_is_pcm_in_a_riff_header() -> None:
    request = speech(response_format="wav")
    pcm = media.tone(1.0, 24000)
    built = plugin.build_request(FLASH, request, UPSTREAM)
    whole = plugin.parse_response(FLASH, request, httpx.Response(200, content=pcm, request=built))
    assert whole.body == media.wav(pcm, 24000)  # exact sizes when the body is known
    streamed = plugin.parse_audio_stream(FLASH, request).prefix + pcm
    assert streamed[:4] == b"RIFF" and struct.unpack_from("<I", streamed, 40)[0] == 0xFFFFFFFF
    assert media.duration(streamed) == 1.0


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"response_format": "aac"}, "response_format", "mp3, opus, wav, pcm"),
        ({"response_format": "flac"}, "response_format", "mp3, opus, wav, pcm"),
        ({"speed": 0.69}, "speed", "0.7 to 1.2"),
        ({"speed": 1.21}, "speed", "0.7 to 1.2"),
        ({"speed": 4.0}, "speed", "got 4"),
    ],
)
def test_what_elevenlabs_cannot_do_is_refused_before_the_hold(
    fields: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        plugin.estimate_usage(FLASH, speech(**fields))
    assert caught.value.param == param and words in caught.value.message


@pytest.mark.parametrize("speed", [0.7, 1.0, 1.2])
def test_speeds_in_range_pass(speed: float) -> None:
    assert plugin.estimate_usage(FLASH, speech(speed=speed)) == Usage(characters=5)


# --- errors ------------------------------------------------------------------------------


def upstream_error(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "https://api.elevenlabs.test/v1/text-to-speech/abcVOICE/stream")
    return httpx.Response(status, json=body, headers=headers, request=request)


def detail(status: str, message: str = "m") -> dict[str, Any]:
    return {"detail": {"status": status, "message": message}}


def test_quota_exceeded_is_the_servers_problem_and_tells_no_figures() -> None:
    body = detail("quota_exceeded", "You have 12 credits remaining, while 58 are required.")
    error = plugin.parse_error(FLASH, upstream_error(401, body))
    assert isinstance(error, ServiceUnavailable) and error.status == 503
    assert error.code == "upstream_quota_exceeded" and "12" not in error.message


def test_a_rejected_key_is_a_502_without_the_key() -> None:
    error = plugin.parse_error(FLASH, upstream_error(401, detail("invalid_api_key", f"bad {KEY}")))
    assert isinstance(error, UpstreamError) and error.status == 502
    assert error.code == "upstream_auth_error" and KEY not in json.dumps(error.body())


def test_voice_not_found_names_the_voice() -> None:
    error = plugin.parse_error(FLASH, upstream_error(404, detail("voice_not_found")))
    assert isinstance(error, InvalidRequest) and error.status == 400
    assert error.param == "voice" and "'abcVOICE'" in error.message


def test_validation_errors_are_400_naming_the_unified_field() -> None:
    body = {"detail": [{"loc": ["body", "text"], "msg": "Field required", "type": "missing"}]}
    error = plugin.parse_error(FLASH, upstream_error(422, body))
    assert isinstance(error, InvalidRequest) and error.param == "input"
    assert "Field required" in error.message


def test_rate_limits_and_the_rest() -> None:
    limited = plugin.parse_error(
        FLASH, upstream_error(429, detail("too_many_concurrent_requests"), {"retry-after": "2"})
    )
    assert isinstance(limited, RateLimited) and limited.headers == {"retry-after": "2"}
    too_long = plugin.parse_error(
        FLASH, upstream_error(400, detail("max_character_limit_exceeded"))
    )
    assert isinstance(too_long, InvalidRequest) and too_long.param == "input"
    # anything else: the core's generic mapping
    assert plugin.parse_error(FLASH, upstream_error(500, detail("internal_server_error"))) is None
    assert plugin.parse_error(FLASH, upstream_error(502, {"nothing": 1})) is None
