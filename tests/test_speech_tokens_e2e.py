"""Speech priced per token (gpt-4o-mini-tts) end to end: the official OpenAI SDK ->
apimodels (uvicorn, 127.0.0.1) -> the OpenAI simulator (uvicorn, 127.0.0.1).

OpenAI reports such a model's usage only in the ``speech.audio.done`` event of an SSE
answer: the gateway always asks for one, relays the audio (or the events, when the client
asked for them) and charges exactly that usage; the hold covers the longest speech the
text can become; every failure is free.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
import wave
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from apimodels.testing import serve
from support import Gateway, Simulator, gateway_of_its_own

MODEL = "openai/gpt-4o-mini-tts"
TEXT = "Token-priced speech, billed from the usage the upstream reports."
INSTRUCTIONS = "Speak warmly, at an even pace."
#: The published prices (registry.toml), per token.
PER_TEXT_TOKEN = Decimal("0.60") / 1_000_000
PER_AUDIO_TOKEN = Decimal("12.00") / 1_000_000


def simulated_usage(text: str, instructions: str = "", speed: float = 1.0) -> tuple[int, int]:
    """What the simulator reports (its docstring): a token per 4 characters of text read,
    15 characters a second of speech at 20 audio tokens a second."""
    read = math.ceil(len(text) / 4) + math.ceil(len(instructions) / 4)
    seconds = max(0.5, len(text) / 15 / speed)
    return read, math.ceil(seconds * 20)


def micros(read: int, written: int) -> int:
    usd = read * PER_TEXT_TOKEN + written * PER_AUDIO_TOKEN
    return int((usd * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.fixture
def account(gateway: Gateway, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A fresh account with $10 of credits: (account id, key)."""
    email = f"{request.node.name[:40]}-{time.monotonic_ns()}@example.com"
    return gateway.new_account(email, 10_000_000)


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=20)


def row_of(gateway: Gateway, request_id: str) -> dict[str, Any]:
    """The usage row of a call, once settled (a stream's is written after its last byte)."""
    deadline = time.monotonic() + 10
    while True:
        found = list(gateway.db.query("SELECT * FROM usage WHERE request_id = ?", [request_id]))
        if found and found[0]["status"] != "pending":
            return found[0]
        assert time.monotonic() < deadline, "the call was never settled"
        time.sleep(0.02)


def balance(gateway: Gateway, account_id: str) -> tuple[int, int]:
    b = gateway.ledger.balance(account_id)
    return b.balance_micros, b.held_micros


def last_speech_request(simulator: Simulator) -> dict[str, Any]:
    return [r for r in simulator.requests() if r["path"] == "/v1/audio/speech"][-1]["json"]


def events_of(body: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")
    ]


# --- billed exactly from the upstream's usage --------------------------------------------


def test_speech_is_audio_billed_from_the_usage_of_the_upstreams_events(
    gateway: Gateway, simulator: Simulator, account: tuple[str, str]
) -> None:
    account_id, key = account
    with sdk(gateway, key) as client:
        raw = client.audio.speech.with_raw_response.create(
            model=MODEL,
            voice="coral",
            input=TEXT,
            instructions=INSTRUCTIONS,
            response_format="wav",
        )
    assert raw.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(raw.content)) as w:  # the audio's bytes, not the events
        assert w.getframerate() == 24000 and w.getnframes() > 0
    sent = last_speech_request(simulator)
    assert sent["stream_format"] == "sse" and sent["instructions"] == INSTRUCTIONS
    # The price is known only at the end of the audio: recorded, not announced up front.
    assert "x-apimodels-cost" not in raw.headers
    read, written = simulated_usage(TEXT, INSTRUCTIONS)
    row = row_of(gateway, raw.headers["x-request-id"])
    assert row["status"] == "succeeded"
    assert (row["input_tokens"], row["audio_output_tokens"]) == (read, written)
    assert row["cost_micros"] == micros(read, written) > 0
    assert row["hold_micros"] >= row["cost_micros"]
    assert balance(gateway, account_id) == (10_000_000 - row["cost_micros"], 0)
    with sdk(gateway, key) as client:
        generation = client.get(
            f"/generation/{raw.headers['x-request-id']}", cast_to=httpx.Response
        ).json()
    assert generation["usage"]["audio_output_tokens"] == written
    assert generation["unit_prices"]["audio_output_per_1m"] == "12.00"


def test_streamed_events_carry_the_audio_and_the_usage_with_its_cost(
    gateway: Gateway, account: tuple[str, str]
) -> None:
    _, key = account
    with sdk(gateway, key) as client:
        with client.audio.speech.with_streaming_response.create(
            model=MODEL, voice="marin", input=TEXT, response_format="pcm", stream_format="sse"
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            body = b"".join(response.iter_bytes())
            request_id = response.headers["x-request-id"]
        plain = client.audio.speech.create(
            model=MODEL, voice="marin", input=TEXT, response_format="pcm"
        ).read()
    events = events_of(body)
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) > 1, "the audio arrives in several events"
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == plain
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    read, written = simulated_usage(TEXT)
    usage = done["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (read, written)
    assert usage["total_tokens"] == read + written
    row = row_of(gateway, request_id)
    assert Decimal(str(usage["cost"])) == Decimal(row["cost_micros"]) / 1_000_000
    assert row["cost_micros"] == micros(read, written)


def test_a_replayable_call_reads_the_whole_answer_and_charges_its_usage_once(
    gateway: Gateway, simulator: Simulator, account: tuple[str, str]
) -> None:
    account_id, key = account
    headers = {"authorization": f"Bearer {key}", "idempotency-key": "tts-tokens-once"}
    body = {"model": MODEL, "voice": "alloy", "input": TEXT, "response_format": "flac"}
    first = httpx.post(f"{gateway.url}/v1/audio/speech", json=body, headers=headers)
    again = httpx.post(f"{gateway.url}/v1/audio/speech", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.content[:4] == b"fLaC" and again.content == first.content
    read, written = simulated_usage(TEXT)
    cost = Decimal(micros(read, written)) / 1_000_000
    assert Decimal(first.headers["x-apimodels-cost"]) == cost
    charged = list(gateway.db.query("SELECT * FROM usage WHERE account_id = ?", [account_id]))
    assert [r["cost_micros"] for r in charged] == [micros(read, written)]


# --- the hold covers the worst case --------------------------------------------------------


def test_the_hold_covers_the_longest_speech_the_text_can_become(
    gateway: Gateway, account: tuple[str, str]
) -> None:
    """At the slowest speed and the longest input, the hold still covers the charge: it
    assumes a second per byte of text (the simulator speaks 15 characters a second)."""
    _, key = account
    text = "Slow. " * 682  # 4,092 characters, near the endpoint's limit
    with sdk(gateway, key) as client:
        raw = client.audio.speech.with_raw_response.create(
            model=MODEL, voice="alloy", input=text, speed=0.25, response_format="pcm"
        )
    row = row_of(gateway, raw.headers["x-request-id"])
    read, written = simulated_usage(text, speed=0.25)
    assert row["cost_micros"] == micros(read, written)
    # 4,092 seconds at a quarter speed, 21 audio tokens a second; the text's bytes read, up
    # to the model's 2,000-token window
    assert row["hold_micros"] == micros(2000, math.ceil(4092 / 0.25 * 21))
    assert row["hold_micros"] >= row["cost_micros"]


def test_an_account_short_of_the_hold_is_refused_before_anything_is_sent(
    gateway: Gateway, simulator: Simulator
) -> None:
    """The hold of a short text is about 66 seconds of speech ($0.017): $0.01 is short."""
    account_id, key = gateway.new_account(f"short-{time.monotonic_ns()}@example.com", 10_000)
    seen = simulator.received()
    with sdk(gateway, key) as client, pytest.raises(openai.APIStatusError) as caught:
        client.audio.speech.create(model=MODEL, voice="alloy", input=TEXT)
    assert caught.value.status_code == 402
    assert simulator.received() == seen
    assert balance(gateway, account_id) == (10_000, 0)


# --- failures cost nothing ---------------------------------------------------------------


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
def test_an_upstream_error_before_the_audio_is_a_502_and_free(
    gateway: Gateway, simulator: Simulator, account: tuple[str, str], stream_format: str
) -> None:
    account_id, key = account
    simulator.knobs(fail=[{"kind": "error", "status": 500, "path": "/v1/audio/speech"}])
    with sdk(gateway, key) as client, pytest.raises(openai.InternalServerError) as caught:
        client.audio.speech.create(
            model=MODEL, voice="alloy", input=TEXT, stream_format=stream_format
        )
    assert caught.value.status_code == 502
    row = row_of(gateway, caught.value.response.headers["x-request-id"])
    assert row["status"] == "failed" and row["cost_micros"] == 0
    assert balance(gateway, account_id) == (10_000_000, 0)


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
def test_a_stream_cut_before_its_usage_is_an_incomplete_answer_and_free(
    gateway: Gateway, simulator: Simulator, account: tuple[str, str], stream_format: str
) -> None:
    """The simulator drops the connection after the first chunk of audio, before the done
    event: the client gets that chunk, then a body without its end; nothing is charged."""
    account_id, key = account
    simulator.knobs(fail=[{"kind": "cut_stream", "path": "/v1/audio/speech"}])
    received = b""
    with (
        sdk(gateway, key) as client,
        client.audio.speech.with_streaming_response.create(
            model=MODEL,
            voice="alloy",
            input=TEXT * 4,
            response_format="pcm",
            stream_format=stream_format,
        ) as response,
        pytest.raises(Exception, match="incomplete chunked read"),
    ):
        request_id = response.headers["x-request-id"]
        for chunk in response.iter_bytes():
            received += chunk
    assert received, "the audio sent before the cut came through"
    row = row_of(gateway, request_id)
    assert row["status"] == "failed" and row["cost_micros"] == 0
    assert balance(gateway, account_id) == (10_000_000, 0)


def test_a_client_that_leaves_pays_the_usage_of_the_audio_the_upstream_finished(
    gateway: Gateway, simulator: Simulator, account: tuple[str, str]
) -> None:
    """The upstream bills the whole text once it has spoken it: the gateway keeps reading
    after the client left, to learn that usage, and charges it."""
    account_id, key = account
    simulator.knobs(stream_delay=0.02)  # about 50 chunks of audio: a second
    text = TEXT
    body = {"model": MODEL, "voice": "alloy", "input": text, "response_format": "pcm"}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{gateway.url}/v1/audio/speech", json=body, headers=headers) as r:
        assert r.status_code == 200
        next(r.iter_bytes())  # the first chunk, then the client hangs up
        request_id = r.headers["x-request-id"]
    row = row_of(gateway, request_id)
    read, written = simulated_usage(text)
    assert row["status"] == "succeeded" and row["cost_micros"] == micros(read, written)
    assert balance(gateway, account_id) == (10_000_000 - row["cost_micros"], 0)


@pytest.fixture
def lying_upstream() -> Iterator[str]:
    """An upstream that speaks, then reports more audio than the text can become."""
    done = {"input_tokens": 3, "output_tokens": 10**9, "total_tokens": 10**9 + 3}
    body = (
        b'data: {"type":"speech.audio.delta","audio":"AAAA"}\n\n'
        + b"data: "
        + json.dumps({"type": "speech.audio.done", "usage": done}).encode()
        + b"\n\n"
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    with serve(app, lifespan="off") as url:
        yield url


def test_an_impossible_usage_is_refused_and_free(lying_upstream: str, tmp_path: Path) -> None:
    with gateway_of_its_own(Simulator(lying_upstream), tmp_path) as gw:
        body = {"model": MODEL, "voice": "alloy", "input": "Hi", "stream_format": "sse"}
        headers = {"authorization": f"Bearer {gw.key}"}
        with httpx.stream("POST", f"{gw.url}/v1/audio/speech", json=body, headers=headers) as r:
            # the audio's event went out before the usage came: the answer is cut short
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                r.read()
        row = row_of(gw, r.headers["x-request-id"])
        assert row["status"] == "failed" and row["cost_micros"] == 0
        assert balance(gw, gw.account_id) == (10_000_000, 0)


def test_a_model_priced_per_character_refuses_speech_events_for_free(
    gateway: Gateway, account: tuple[str, str]
) -> None:
    account_id, key = account
    with sdk(gateway, key) as client, pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(
            model="openai/tts-1", voice="alloy", input=TEXT, stream_format="sse"
        )
    assert caught.value.body["param"] == "stream_format"
    assert balance(gateway, account_id) == (10_000_000, 0)
