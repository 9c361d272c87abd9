"""ElevenLabs end to end: the official OpenAI SDK -> apimodels (uvicorn, 127.0.0.1) -> the
ElevenLabs simulator (uvicorn, 127.0.0.1). Speech is streamed through as it arrives and
billed per character, exactly once, or not at all when it fails."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from apimodels.providers import media
from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.testing import serve
from apimodels_elevenlabs.simulator import ACCOUNT_VOICE
from apimodels_elevenlabs.simulator import create_app as create_elevenlabs
from support import SIM_KEY, Gateway, Simulator, registry_for

ELEVEN_KEY = "sk_eleven-e2e-0123456789abcdef0123"
FLASH = "elevenlabs/eleven-flash-v2.5"
ARIA = "9BWtsMINqrJLrRacOk9x"
#: An account voice the operator listed that the upstream does not know (deleted since).
GHOST = "gHoStVoIcE0000000000"
SETTINGS = f"""
[providers.elevenlabs.settings.voices]
"{ACCOUNT_VOICE[1]}" = "{ACCOUNT_VOICE[0]}"
"Ghost" = "{GHOST}"
"""


@pytest.fixture(scope="module")
def eleven() -> Iterator[Simulator]:
    with serve(create_elevenlabs(api_key=ELEVEN_KEY)) as url:
        yield Simulator(url)


@pytest.fixture(autouse=True)
def _eleven_at_rest(eleven: Simulator) -> Iterator[None]:
    eleven.reset()
    httpx.delete(f"{eleven.url}/_sim/requests").raise_for_status()
    yield
    eleven.reset()


@pytest.fixture(scope="module")
def gw(
    simulator: Simulator, eleven: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("eleven")
    path = registry_for(simulator.url, tmp, SETTINGS)
    text = path.read_text().replace(
        '# base_url = "https://api.elevenlabs.io"', f'base_url = "{eleven.url}"'
    )
    path.write_text(text)
    environ = {"OPENAI_API_KEY": SIM_KEY, "ELEVENLABS_API_KEY": ELEVEN_KEY}
    server = assemble(path, tmp / "gateway.db", environ=environ)
    account = create_account(server.db, "eleven@example.com")
    _, key = create_key(server.db, account["id"], "e2e")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])


@pytest.fixture
def account(gw: Gateway, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A fresh account with $1 of credits: (account id, key)."""
    return gw.new_account(f"{request.node.name[:40]}-{time.monotonic_ns()}@example.com", 1_000_000)


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)


def speech(gw: Gateway, key: str, **body: object) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/audio/speech",
        json={"model": FLASH, "voice": "Aria", "input": "Hello there"} | body,
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    )


def balance(gw: Gateway, account_id: str) -> tuple[int, int]:
    b = gw.ledger.balance(account_id)
    return b.balance_micros, b.held_micros


def rows(gw: Gateway, account_id: str) -> list[dict]:
    return list(gw.db.query("SELECT * FROM usage WHERE account_id = ?", [account_id]))


def settled_rows(gw: Gateway, account_id: str) -> list[dict]:
    """The usage rows once a call has ended (a stream's row is written just after its last
    byte)."""
    deadline = time.monotonic() + 10
    while True:
        found = rows(gw, account_id)
        if found:
            return found
        assert time.monotonic() < deadline, "a stream was never settled"
        time.sleep(0.02)


def price_micros(text: str, per_1k: str) -> int:
    return int(Decimal(len(text)) * Decimal(per_1k) / 1000 * 1_000_000)


# --- voices ------------------------------------------------------------------------------


def test_voices_of_every_provider_in_one_list(gw: Gateway) -> None:
    headers = {"authorization": f"Bearer {gw.key}"}
    listing = httpx.get(f"{gw.url}/v1/audio/voices", headers=headers).json()
    assert listing["object"] == "list"
    by_id = {(v["provider"], v["id"]): v for v in listing["data"]}
    assert by_id[("elevenlabs", ARIA)]["name"] == "Aria"
    assert by_id[("elevenlabs", ARIA)]["labels"]["accent"] == "American"
    assert by_id[("elevenlabs", ACCOUNT_VOICE[0])]["name"] == ACCOUNT_VOICE[1]
    for voice in ("alloy", "ash", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer"):
        assert ("openai", voice) in by_id
    # ballad, verse, marin and cedar: only gpt-4o-mini-tts speaks them
    for voice in ("ballad", "verse", "marin", "cedar"):
        assert by_id[("openai", voice)]["models"] == ["openai/gpt-4o-mini-tts"]
    assert "models" not in by_id[("openai", "alloy")]
    assert httpx.get(f"{gw.url}/v1/audio/voices").status_code == 401


# --- speech through the official SDK -----------------------------------------------------


def test_sync_speech_is_real_mp3_billed_per_character(
    gw: Gateway, eleven: Simulator, account: tuple[str, str]
) -> None:
    account_id, key = account
    text = "The quick brown fox jumps over the lazy dog, twice over."
    with sdk(gw, key) as client:
        raw = client.audio.speech.with_raw_response.create(
            model=FLASH, voice="aria", input=text, response_format="mp3"
        )
    audio = raw.content
    assert raw.headers["content-type"] == "audio/mpeg"
    assert audio[:2] == b"\xff\xfb"  # MPEG-1 Layer III: 44.1 kHz, as mp3_44100_128
    assert media.duration(audio) == pytest.approx(len(text) / 15, abs=0.05)
    [sent] = eleven.requests()
    assert sent["path"] == f"/v1/text-to-speech/{ARIA}/stream"
    assert sent["query"] == {"output_format": "mp3_44100_128"}
    assert sent["json"] == {"text": text, "model_id": "eleven_flash_v2_5"}
    cost = price_micros(text, "0.05")
    assert Decimal(raw.headers["x-apimodels-cost"]) * 1_000_000 == cost
    [row] = settled_rows(gw, account_id)
    assert row["status"] == "succeeded" and row["cost_micros"] == cost
    assert row["characters"] == len(text) and row["hold_micros"] == cost  # hold = charge
    assert json.loads(row["unit_prices"]) == {"per_1k_chars": "0.05"}
    assert balance(gw, account_id) == (1_000_000 - cost, 0)


def test_streamed_speech_arrives_as_the_upstream_sends_it(
    gw: Gateway, eleven: Simulator, account: tuple[str, str]
) -> None:
    account_id, key = account
    eleven.knobs(stream_delay=0.05)
    text = "Streaming speech, as spoken."
    arrivals: list[tuple[float, int]] = []
    started = time.monotonic()
    with (
        sdk(gw, key) as client,
        client.audio.speech.with_streaming_response.create(
            model="elevenlabs/eleven-multilingual-v2",
            voice=ACCOUNT_VOICE[1].upper(),
            input=text,
            response_format="wav",
            speed=1.1,
        ) as response,
    ):
        assert response.headers["content-type"] == "audio/wav"
        audio = b""
        for chunk in response.iter_bytes():
            arrivals.append((time.monotonic() - started, len(chunk)))
            audio += chunk
    # 24 kHz 16-bit PCM in a streamed RIFF header: 17 chunks of 4 KiB, 0.05 s apart
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert media.duration(audio) == pytest.approx(len(text) / 15 / 1.1, abs=0.01)
    assert arrivals[0][0] < arrivals[-1][0] - 0.5, "the audio was buffered, not streamed"
    [sent] = eleven.requests()
    assert sent["path"] == f"/v1/text-to-speech/{ACCOUNT_VOICE[0]}/stream"
    assert sent["query"] == {"output_format": "pcm_24000"}
    assert sent["json"]["voice_settings"] == {"speed": 1.1}
    cost = price_micros(text, "0.10")
    [row] = settled_rows(gw, account_id)
    assert row["status"] == "succeeded" and row["cost_micros"] == cost and row["stream"] == 1
    assert balance(gw, account_id) == (1_000_000 - cost, 0)


def test_pcm_and_opus(gw: Gateway, account: tuple[str, str]) -> None:
    _, key = account
    with sdk(gw, key) as client:
        pcm = client.audio.speech.create(
            model=FLASH, voice=ARIA, input="x" * 30, response_format="pcm"
        ).read()
        opus = client.audio.speech.create(
            model=FLASH, voice=ARIA, input="x" * 30, response_format="opus"
        ).read()
    assert len(pcm) == 2 * 24000 * 2  # 30 characters: two seconds of 16-bit 24 kHz
    assert opus[:4] == b"OggS" and media.duration(opus) == pytest.approx(2.0, abs=0.03)


def test_openai_speech_streams_through_too(gw: Gateway, account: tuple[str, str]) -> None:
    _, key = account
    with (
        sdk(gw, key) as client,
        client.audio.speech.with_streaming_response.create(
            model="openai/tts-1", voice="alloy", input="Hello from OpenAI", response_format="wav"
        ) as response,
    ):
        audio = b"".join(response.iter_bytes())
    assert media.duration(audio) == pytest.approx(len("Hello from OpenAI") / 15, abs=0.01)


def test_idempotent_speech_is_replayed_and_charged_once(
    gw: Gateway, account: tuple[str, str]
) -> None:
    account_id, key = account
    headers = {"authorization": f"Bearer {key}", "idempotency-key": "speech-once"}
    body = {"model": FLASH, "voice": "Aria", "input": "Say it once", "response_format": "wav"}
    first = httpx.post(f"{gw.url}/v1/audio/speech", json=body, headers=headers)
    again = httpx.post(f"{gw.url}/v1/audio/speech", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content and first.content[:4] == b"RIFF"
    assert media.duration(first.content) == pytest.approx(len("Say it once") / 15, abs=0.01)
    cost = price_micros("Say it once", "0.05")
    assert [r["cost_micros"] for r in settled_rows(gw, account_id)] == [cost]


# --- refused before anything is held or sent ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"voice": "Nobody"}, "voice", ["'Nobody'", "does not exist"]),
        ({"model": "openai/tts-1", "voice": "ballad"}, "voice", ["'ballad'", "gpt-4o-mini-tts"]),
        ({"response_format": "aac"}, "response_format", ["mp3, opus, wav, pcm"]),
        ({"speed": 1.5}, "speed", ["0.7 to 1.2", "1.5"]),
        ({"speed": 0.5}, "speed", ["0.7 to 1.2"]),
    ],
)
def test_bad_input_is_a_400_before_any_hold(
    gw: Gateway,
    eleven: Simulator,
    simulator: Simulator,
    account: tuple[str, str],
    body: dict,
    param: str,
    words: list[str],
) -> None:
    account_id, key = account
    seen = eleven.received(), simulator.received()
    r = speech(gw, key, **body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert all(w in error["message"] for w in words), error["message"]
    assert (eleven.received(), simulator.received()) == seen
    assert rows(gw, account_id) == [] and balance(gw, account_id) == (1_000_000, 0)


# --- upstream failures cost nothing ------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (
            {"kind": "error", "status": 401, "code": "quota_exceeded"},
            503,
            "upstream_quota_exceeded",
        ),
        ({"kind": "error", "status": 401}, 502, "upstream_auth_error"),
        ({"kind": "error", "status": 429}, 429, "rate_limit_exceeded"),
        ({"kind": "error", "status": 500}, 502, "upstream_error"),
        ({"kind": "cut_stream", "after": 0}, 502, "upstream_error"),
        ({"kind": "empty"}, 502, "upstream_error"),
    ],
)
def test_upstream_errors_are_mapped_and_cost_nothing(
    gw: Gateway, eleven: Simulator, account: tuple[str, str], failure: dict, status: int, code: str
) -> None:
    account_id, key = account
    eleven.knobs(fail=[failure])
    r = speech(gw, key)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    assert ELEVEN_KEY not in r.text and "credits remaining" not in r.text
    if status == 429:
        assert r.headers["retry-after"] == "1"
    if failure["kind"] == "empty":
        assert r.json()["error"]["message"] == "elevenlabs sent no audio"
    [row] = settled_rows(gw, account_id)
    assert row["status"] == "failed" and row["cost_micros"] == 0
    assert balance(gw, account_id) == (1_000_000, 0)


def test_a_voice_the_upstream_lost_is_a_400_naming_it(
    gw: Gateway, account: tuple[str, str]
) -> None:
    account_id, key = account
    r = speech(gw, key, voice="ghost")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "voice_not_found" and GHOST in r.json()["error"]["message"]
    assert balance(gw, account_id) == (1_000_000, 0)


def test_a_stream_cut_after_some_audio_is_an_incomplete_answer_and_free(
    gw: Gateway, eleven: Simulator, account: tuple[str, str]
) -> None:
    account_id, key = account
    eleven.knobs(fail=[{"kind": "cut_stream", "after": 2}])
    received = b""
    with (
        sdk(gw, key) as client,
        client.audio.speech.with_streaming_response.create(
            model=FLASH, voice="Aria", input="A long sentence to cut. " * 20, response_format="pcm"
        ) as response,
        pytest.raises(Exception, match="incomplete chunked read"),
    ):
        for chunk in response.iter_bytes():
            received += chunk
    assert len(received) >= 8192  # the two chunks sent before the cut came through
    [row] = settled_rows(gw, account_id)
    assert row["status"] == "failed" and row["cost_micros"] == 0
    assert balance(gw, account_id) == (1_000_000, 0)


def test_a_client_that_leaves_pays_for_audio_the_upstream_finished(
    gw: Gateway, eleven: Simulator, account: tuple[str, str]
) -> None:
    """The upstream bills the whole text once it has spoken it: so does the gateway, which
    keeps reading (bounded) after the client has gone."""
    account_id, key = account
    eleven.knobs(stream_delay=0.02)
    text = "Leaving early, leaving early."
    with (
        httpx.Client(timeout=20) as http,
        http.stream(
            "POST",
            f"{gw.url}/v1/audio/speech",
            json={"model": FLASH, "voice": "Aria", "input": text, "response_format": "pcm"},
            headers={"authorization": f"Bearer {key}"},
        ) as r,
    ):
        assert r.status_code == 200
        next(r.iter_raw())  # one chunk, then hang up
    [row] = settled_rows(gw, account_id)
    cost = price_micros(text, "0.05")
    assert row["status"] == "succeeded" and row["cost_micros"] == cost
    assert balance(gw, account_id) == (1_000_000 - cost, 0)


# --- sandbox -----------------------------------------------------------------------------


def test_sandbox_serves_elevenlabs_from_its_simulator(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    server = assemble(root / "registry.toml", tmp_path / "sandbox.db", sandbox=True, environ={})
    account = create_account(server.db, "sandbox@example.com")
    _, key = create_key(server.db, account["id"])
    server.ledger.post(account["id"], 1_000_000, kind="grant", reason="test", actor="tests")
    with serve(server.app) as url, sdk(Gateway(url, server, key, account["id"]), key) as client:
        audio = client.audio.speech.create(
            model="elevenlabs/eleven-v3", voice="George", input="Hello sandbox"
        ).read()
    assert media.duration(audio) == pytest.approx(len("Hello sandbox") / 15, abs=0.05)


def test_voices_limited_to_a_model_name_its_public_id(tmp_path: Path) -> None:
    """The shipped catalog's gpt-4o-mini-tts (upstream id gpt-4o-mini-tts) is named by its
    public id."""
    registry = Path(__file__).resolve().parents[1] / "registry.toml"
    server = assemble(registry, tmp_path / "voices.db", environ={})
    account = create_account(server.db, "voices@example.com")
    _, key = create_key(server.db, account["id"])
    with serve(server.app) as url:
        listing = httpx.get(f"{url}/v1/audio/voices", headers={"authorization": f"Bearer {key}"})
    ballad = next(v for v in listing.json()["data"] if v["id"] == "ballad")
    assert ballad["models"] == ["openai/gpt-4o-mini-tts"]
