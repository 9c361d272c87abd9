"""The gateway end to end: the official OpenAI SDK -> apimodels (uvicorn, 127.0.0.1) -> the
OpenAI simulator (uvicorn, 127.0.0.1). Every call crosses two real sockets."""

from __future__ import annotations

import base64
import io
import struct
import time
import wave
from decimal import ROUND_HALF_UP, Decimal

import httpx
import openai
import pytest

from support import SIM_KEY, Gateway, Simulator


def wav_bytes(seconds: float = 1.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x01" * int(seconds * rate))
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_model_list_has_modality_provider_and_pricing(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    mini = models["openai/gpt-4o-mini"]
    assert mini.owned_by == "openai"
    extra = mini.model_extra or {}
    assert extra["modality"] == "chat" and extra["provider"] == "openai"
    assert extra["pricing"]["input_per_1m"] == "0.15"
    assert (extra["context_tokens"], extra["max_output_tokens"]) == (128000, 16384)
    assert (
        models["openai/gpt-image-2"].model_extra["pricing"]["per_image"]["high/1024x1024"]
        == "0.211"
    )
    assert client.models.retrieve("openai/whisper-1").model_extra["modality"] == "transcription"


def test_chat_reports_usage_and_cost(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Name three colours."}]
    )
    completion = raw.parse()
    assert completion.model == "openai/gpt-4o-mini"
    assert completion.choices[0].message.content
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    expected = (
        Decimal(usage.prompt_tokens) * Decimal("0.15")
        + Decimal(usage.completion_tokens) * Decimal("0.60")
    ) / 1_000_000
    cost = Decimal(str(usage.model_extra["cost"]))
    assert cost == expected.quantize(Decimal("0.000001"))
    assert Decimal(raw.headers["x-apimodels-cost"]) == Decimal(str(usage.model_extra["cost"]))
    assert raw.headers["x-request-id"].startswith("req_")


def test_chat_stream_is_relayed_chunk_by_chunk(client: openai.OpenAI, simulator: Simulator) -> None:
    delay = 0.1
    simulator.knobs(stream_delay=delay)
    started = time.perf_counter()
    arrivals, text = [], ""
    stream = client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
        stream=True,
    )
    for chunk in stream:
        arrivals.append(time.perf_counter() - started)
        assert chunk.usage is None  # not asked for: the billing chunk is not forwarded
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text
    assert len(arrivals) >= 4
    # The first chunk reached the client while the upstream was still producing the rest.
    assert arrivals[0] < arrivals[-1] - 2 * delay


def test_chat_stream_usage_chunk_carries_the_cost(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert Decimal(str(last.usage.model_extra["cost"])) > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done(http: httpx.Client) -> None:
    body = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("req_")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="openai/text-embedding-3-small", input=["one", "two"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 1536
    assert result.usage.prompt_tokens > 0
    assert Decimal(str(result.usage.model_extra["cost"])) >= 0
    small = client.embeddings.create(model="openai/text-embedding-3-small", input="x", dimensions=8)
    assert len(small.data[0].embedding) == 8


def test_images_b64_are_real_png(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(
        model="openai/gpt-image-2", prompt="a red bicycle", size="1024x1536", quality="high", n=2
    )
    result = raw.parse()
    width, height = png_size(base64.b64decode(result.data[0].b64_json))
    assert height > width > 0  # portrait, as asked
    assert raw.headers["x-apimodels-cost"] == "0.330000"  # 2 x high/1024x1536 at $0.165
    # quality "auto": held at the dearest variant, charged for the one the upstream made
    auto = client.images.with_raw_response.generate(
        model="openai/gpt-image-2", prompt="a cat", size="1024x1024"
    )
    made = auto.parse()
    assert (
        auto.headers["x-apimodels-cost"]
        == {"low": "0.006000", "medium": "0.053000", "high": "0.211000"}[made.quality]
    )


def test_images_asked_for_as_urls_are_stored_and_signed(
    client: openai.OpenAI, gateway: Gateway
) -> None:
    """GPT image models answer base64 only: asked for URLs, the gateway keeps the images in
    its output store and answers signed URLs (it once answered url: null)."""
    raw = client.images.with_raw_response.generate(
        model="openai/gpt-image-2",
        prompt="a lighthouse",
        size="1024x1024",
        quality="low",
        n=2,
        response_format="url",
    )
    result = raw.parse()
    assert [item.b64_json for item in result.data] == [None, None]
    urls = [item.url for item in result.data]
    assert all(url and url.startswith(gateway.url + "/v1/files/") for url in urls)
    images = [httpx.get(url) for url in urls]  # the signature is the credential
    assert all(r.status_code == 200 and r.content.startswith(b"\x89PNG") for r in images)
    assert images[0].content != images[1].content  # two images, each stored
    assert raw.headers["x-apimodels-cost"] == "0.012000"  # 2 x low/1024x1024, charged once
    assert (
        gateway.db.execute(
            "SELECT count(*) FROM ledger_entries WHERE hold_id = ?", [raw.headers["x-request-id"]]
        ).fetchone()[0]
        == 1
    )


def test_image_size_without_a_price_is_refused_before_any_upstream_call(
    client: openai.OpenAI, simulator: Simulator
) -> None:
    before = simulator.received()
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="openai/gpt-image-2", prompt="x", size="1792x1024")
    assert "no price" in info.value.message
    assert simulator.received() == before


def test_speech_returns_real_audio(client: openai.OpenAI) -> None:
    mp3 = client.audio.speech.with_raw_response.create(
        model="openai/tts-1", voice="alloy", input="Hello there!"
    )
    assert mp3.headers["content-type"] == "audio/mpeg"
    data = mp3.content
    assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    assert mp3.headers["x-apimodels-cost"] == "0.000180"  # 12 characters at $0.015 / 1k
    wav = client.audio.speech.create(
        model="openai/tts-1-hd", voice="alloy", input="Hi", response_format="wav"
    )
    with wave.open(io.BytesIO(wav.read())) as w:
        assert w.getnframes() > 0


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_transcription_upload(client: openai.OpenAI, fmt: str) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        model="openai/whisper-1",
        file=("hello.wav", wav_bytes(30.0), "audio/wav"),
        response_format=fmt,
    )
    # 30 s at $0.006 per minute
    assert raw.headers["x-apimodels-cost"] == "0.003000"
    text = raw.http_response.text
    if fmt in ("json", "verbose_json"):
        assert raw.http_response.json()["text"]
    elif fmt == "srt":
        assert "-->" in text and "," in text.split("-->")[0]
    elif fmt == "vtt":
        assert text.startswith("WEBVTT")
    else:
        assert text.strip()


@pytest.mark.parametrize(
    ("model", "prices"),
    [("openai/gpt-4o-transcribe", (6, 2.5, 10)), ("openai/gpt-4o-mini-transcribe", (3, 1.25, 5))],
)
def test_token_priced_transcription_is_billed_from_its_usage(
    client: openai.OpenAI, gateway: Gateway, model: str, prices: tuple[float, float, float]
) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        model=model,
        file=("hello.wav", wav_bytes(30.0), "audio/wav"),
        prompt="A greeting, spoken slowly.",
        response_format="json",
    )
    usage = raw.http_response.json()["usage"]
    assert usage["type"] == "tokens"
    audio, text = (usage["input_token_details"][k] for k in ("audio_tokens", "text_tokens"))
    assert audio == 300  # 30 s at 10 tokens a second
    per_audio, per_text, per_output = (Decimal(str(p)) / 1_000_000 for p in prices)
    exact = audio * per_audio + text * per_text + usage["output_tokens"] * per_output
    cost = Decimal(raw.headers["x-apimodels-cost"])
    assert cost == exact.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP) > 0
    assert Decimal(str(usage["cost"])) == Decimal(raw.headers["x-apimodels-cost"])
    row = gateway.db.execute(
        "SELECT audio_input_tokens, input_tokens, hold_micros, cost_micros FROM usage"
        " WHERE request_id = ?",
        [raw.headers["x-request-id"]],
    ).fetchone()
    assert row[:2] == (300, text)
    assert row[2] >= row[3]  # the hold (17 tokens a second, 2,000 out) covered it
    generation = client.get(
        f"/generation/{raw.headers['x-request-id']}", cast_to=httpx.Response
    ).json()
    assert generation["usage"]["audio_input_tokens"] == 300


def test_token_priced_transcription_answers_only_json_or_text(
    client: openai.OpenAI, simulator: Simulator
) -> None:
    before = simulator.received()
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(
            model="openai/gpt-4o-transcribe",
            file=("hello.wav", wav_bytes(1.0), "audio/wav"),
            response_format="srt",
        )
    assert caught.value.body["param"] == "response_format"
    assert simulator.received() == before


# --- errors, each surfacing as the SDK's own exception class --------------------------


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="openai/gpt-99", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "model_not_found"
    assert info.value.response.headers["x-request-id"].startswith("req_")


def test_invalid_body_names_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "wizard", "content": "x"}]
        )
    assert info.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=[])
    assert info.value.param == "messages"


def test_malformed_json_and_missing_field(http: httpx.Client) -> None:
    r = http.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = http.post("/v1/embeddings", json={"model": "openai/text-embedding-3-small"})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "Missing required parameter: 'input'.",
        "type": "invalid_request_error",
        "code": "missing_required_parameter",
        "param": "input",
    }


def test_a_malformed_upload_is_400(http: httpx.Client) -> None:
    r = http.post(
        "/v1/audio/transcriptions",
        content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_wrong_modality_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="openai/gpt-image-2", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "wrong_modality"
    assert "/v1/images/generations" in info.value.message


def test_bad_keys_are_401(gateway: Gateway) -> None:
    for key in ["sk-am-wrong", "sk-" + "x" * 40, SIM_KEY]:
        with (
            openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as c,
            pytest.raises(openai.AuthenticationError) as info,
        ):
            c.models.list()
        assert key not in info.value.response.text
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize(
    ("status", "exception", "expected_status"),
    [
        (400, openai.BadRequestError, 400),
        (
            401,
            openai.InternalServerError,
            502,
        ),  # the upstream refused *our* key: not the client's 401
        (404, openai.NotFoundError, 404),
        (429, openai.RateLimitError, 429),
        (500, openai.InternalServerError, 502),
        (503, openai.InternalServerError, 502),
    ],
)
def test_upstream_errors_map_honestly(
    client: openai.OpenAI,
    simulator: Simulator,
    status: int,
    exception: type[Exception],
    expected_status: int,
) -> None:
    simulator.knobs(fail=[{"kind": "error", "status": status}])
    with pytest.raises(exception) as info:
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    response = info.value.response  # type: ignore[attr-defined]
    assert response.status_code == expected_status
    assert set(response.json()["error"]) == {"message", "type", "code", "param"}
    assert SIM_KEY not in response.text and SIM_KEY[-6:] not in response.text
    if status == 429:
        assert "retry-after" in response.headers


def test_malformed_upstream_body_is_502(client: openai.OpenAI, simulator: Simulator) -> None:
    simulator.knobs(fail=[{"kind": "malformed"}])
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.response.status_code == 502


def test_cut_stream_ends_with_an_error_event(http: httpx.Client, simulator: Simulator) -> None:
    simulator.knobs(fail=[{"kind": "cut_stream"}])
    body = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "Tell a story"}],
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert '"error"' in lines[-1] and "[DONE]" not in lines[-1]


def test_body_over_the_limit_is_413(http: httpx.Client, gateway: Gateway) -> None:
    limit = gateway.server.gateway.catalog.gateway.max_body_bytes
    r = http.post(
        "/v1/embeddings", content=b"x" * (limit + 1), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["x-request-id"].startswith("req_")


def test_unknown_path_and_method_are_openai_shaped(http: httpx.Client) -> None:
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    assert r.headers["x-request-id"].startswith("req_")
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_the_upstream_got_what_the_spec_describes(
    client: openai.OpenAI, simulator: Simulator
) -> None:
    client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}], max_tokens=5
    )
    sent = simulator.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["json"]["model"] == "gpt-4o-mini"  # the upstream id, not the public one
    assert sent["json"]["max_tokens"] == 5
    assert "authorization" not in {k.lower() for k in sent["headers"]}


def test_reasoning_model_with_max_tokens(client: openai.OpenAI) -> None:
    """A client written for older models sends max_tokens; the upstream gets what it takes."""
    done = client.chat.completions.create(
        model="openai/gpt-6.1-terra", messages=[{"role": "user", "content": "Hi"}], max_tokens=40
    )
    assert done.choices[0].message.content is not None
    assert done.usage.completion_tokens <= 40


# --- aliases ---------------------------------------------------------------------------


def test_a_bare_name_is_an_alias_with_the_same_route_and_price(
    client: openai.OpenAI, gateway: Gateway
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    answer = raw.parse()
    canonical = client.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert raw.headers["x-apimodels-cost"] == canonical.headers["x-apimodels-cost"]
    assert answer.model == "openai/gpt-4o-mini"  # the answer names the model that served it
    row = gateway.db.execute(
        "SELECT model, unit_prices FROM usage WHERE request_id = ?", [raw.headers["x-request-id"]]
    ).fetchone()
    assert row[0] == "openai/gpt-4o-mini"
    embedded = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert embedded.model == "openai/text-embedding-3-small"


def test_aliases_are_listed_as_such(client: openai.OpenAI) -> None:
    models = {m.id: m.model_extra or {} for m in client.models.list()}
    assert models["gpt-4o-mini"]["alias_of"] == "openai/gpt-4o-mini"
    assert models["gpt-4o-mini"]["pricing"] == models["openai/gpt-4o-mini"]["pricing"]
    assert "alias_of" not in models["openai/gpt-4o-mini"]
    one = client.models.retrieve("whisper-1")
    assert (one.id, (one.model_extra or {})["alias_of"]) == ("whisper-1", "openai/whisper-1")
