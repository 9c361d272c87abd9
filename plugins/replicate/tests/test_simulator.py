"""The Replicate simulator over real HTTP: the prediction lifecycle on its clock, Prefer:
wait, cancel, pagination, auth, input validation, real output files, failure markers and
knobs, and signed webhooks checked here with an independent HMAC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import struct
import time
import wave
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from apimodels.providers import media
from apimodels.signing import sign, verify
from apimodels.testing import serve
from apimodels_replicate.models import MODELS
from apimodels_replicate.simulator import (
    FAIL_ERROR,
    NSFW_ERROR,
    SANDBOX_STEP_SECONDS,
    Prediction,
    create_app,
    sandbox_app,
)

FLUX = "/v1/models/black-forest-labs/flux-schnell/predictions"
VEO = "/v1/models/google/veo-3.1-fast/predictions"
SPEECH = "/v1/models/minimax/speech-2.6-turbo/predictions"
LLAMA = "/v1/models/meta/meta-llama-3.1-405b-instruct/predictions"
WAIT = {"prefer": "wait"}
Knobs = Callable[..., None]


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# --- lifecycle --------------------------------------------------------------------------


def test_a_prediction_moves_starting_processing_succeeded_on_the_clock(
    sim: httpx.Client, set_knobs: Knobs, wait_for: Any
) -> None:
    set_knobs(step_seconds=0.2)
    created = sim.post(FLUX, json={"input": {"prompt": "a lighthouse"}})
    assert created.status_code == 202
    first = created.json()
    assert first["status"] == "starting" and first["output"] is None
    assert "started_at" not in first and "completed_at" not in first and "metrics" not in first
    assert first["version"] == "hidden" and first["model"] == "black-forest-labs/flux-schnell"
    get = first["urls"]["get"]
    assert get == f"{sim.base_url}/v1/predictions/{first['id']}"

    seen = [first["status"]]

    def finished() -> dict[str, Any] | None:
        body = sim.get(get).json()
        if body["status"] != seen[-1]:
            seen.append(body["status"])
        return body if body["status"] == "succeeded" else None

    done = wait_for(finished)
    assert seen == ["starting", "processing", "succeeded"]
    created_at, started_at = seconds(done["created_at"]), seconds(done["started_at"])
    completed_at = seconds(done["completed_at"])
    assert started_at - created_at == pytest.approx(0.2, abs=0.01)
    assert completed_at - started_at == pytest.approx(0.2, abs=0.01)
    assert done["metrics"]["predict_time"] == pytest.approx(0.2, abs=0.01)
    assert done["metrics"]["total_time"] == pytest.approx(0.4, abs=0.01)
    assert done["error"] is None and len(done["output"]) == 1
    assert done["logs"].endswith("Prediction complete.\n")


def test_slow_seconds_lengthen_processing(sim: httpx.Client, set_knobs: Knobs) -> None:
    set_knobs(step_seconds=0.05, slow_seconds=0.25)
    body = sim.post(FLUX, json={"input": {"prompt": "slow"}}, headers=WAIT).json()
    assert body["status"] == "succeeded"
    assert body["metrics"]["predict_time"] == pytest.approx(0.3, abs=0.01)


def test_prefer_wait_answers_201_with_the_finished_prediction(sim: httpx.Client) -> None:
    started = time.monotonic()
    answer = sim.post(FLUX, json={"input": {"prompt": "fast"}}, headers=WAIT)
    assert answer.status_code == 201
    assert answer.json()["status"] == "succeeded" and answer.json()["output"]
    assert time.monotonic() - started < 5


def test_prefer_wait_n_gives_up_after_n_seconds_with_202(
    sim: httpx.Client, set_knobs: Knobs
) -> None:
    set_knobs(slow_seconds=30)
    started = time.monotonic()
    answer = sim.post(FLUX, json={"input": {"prompt": "slow"}}, headers={"prefer": "wait=1"})
    elapsed = time.monotonic() - started
    assert answer.status_code == 202 and answer.json()["status"] == "starting"
    assert 0.95 <= elapsed < 5
    assert sim.get(answer.json()["urls"]["get"]).json()["status"] == "processing"
    sim.post(answer.json()["urls"]["cancel"])


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=abc", "sleep"])
def test_a_bad_prefer_header_is_refused(sim: httpx.Client, prefer: str) -> None:
    problem(sim.post(FLUX, json={"input": {"prompt": "x"}}, headers={"prefer": prefer}), 422)


# --- cancel -----------------------------------------------------------------------------


def test_cancel_stops_a_running_prediction_and_leaves_a_finished_one(
    sim: httpx.Client, set_knobs: Knobs
) -> None:
    set_knobs(slow_seconds=30)
    running = sim.post(FLUX, json={"input": {"prompt": "to cancel"}}).json()
    canceled = sim.post(running["urls"]["cancel"])
    assert canceled.status_code == 200
    body = canceled.json()
    assert body["status"] == "canceled" and body["output"] is None and body["error"] is None
    assert seconds(body["completed_at"]) - seconds(body["created_at"]) < 5
    assert "predict_time" in body["metrics"]
    assert sim.get(running["urls"]["get"]).json()["status"] == "canceled"

    set_knobs(slow_seconds=0)
    done = sim.post(FLUX, json={"input": {"prompt": "done"}}, headers=WAIT).json()
    again = sim.post(done["urls"]["cancel"]).json()
    assert again["status"] == "succeeded" and again["output"] == done["output"]


def test_unknown_predictions_answer_404(sim: httpx.Client) -> None:
    problem(sim.get("/v1/predictions/doesnotexist0000000000000"), 404)
    problem(sim.post("/v1/predictions/doesnotexist0000000000000/cancel"), 404)


def test_cancel_after_sets_a_deadline_and_refuses_less_than_5_seconds(
    sim: httpx.Client,
) -> None:
    problem(sim.post(FLUX, json={"input": {"prompt": "x"}}, headers={"cancel-after": "3s"}), 422)
    problem(sim.post(FLUX, json={"input": {"prompt": "x"}}, headers={"cancel-after": "soon"}), 422)
    body = sim.post(FLUX, json={"input": {"prompt": "x"}}, headers={"cancel-after": "1h30m"}).json()
    assert seconds(body["deadline"]) - seconds(body["created_at"]) == pytest.approx(5400, abs=0.01)


def test_a_deadline_cancels_a_running_prediction_and_aborts_a_waiting_one() -> None:
    """The timeline itself, at chosen instants (Cancel-After's minimum is 5 s: too slow to
    wait for in a test)."""
    model = MODELS["google/veo-3.1-fast"]

    def at(started: float, deadline: float) -> Prediction:
        return Prediction(
            "p", 1, model, "hidden", {"prompt": "x"}, 0.0, started, 100.0, None, "http://s",
            deadline=deadline,
        )  # fmt: skip

    running = at(started=1.0, deadline=10.0)
    assert [running.status(t) for t in (0.5, 5.0, 10.0, 200.0)] == [
        "starting",
        "processing",
        "canceled",
        "canceled",
    ]
    body = running.as_json(now=50.0)
    assert body["completed_at"].startswith("1970-01-01T00:00:10")
    assert body["metrics"] == {"predict_time": 9.0, "total_time": 10.0}
    waiting = at(started=20.0, deadline=10.0)
    assert waiting.status(15.0) == "aborted"
    assert "started_at" not in waiting.as_json(now=15.0)
    assert "predict_time" not in waiting.as_json(now=15.0)["metrics"]
    finished = at(started=1.0, deadline=500.0)
    assert finished.status(150.0) == "succeeded"


# --- list -------------------------------------------------------------------------------


def test_the_list_pages_newest_first_with_cursor_urls(sim: httpx.Client, set_knobs: Knobs) -> None:
    mine = [sim.post(FLUX, json={"input": {"prompt": f"page {i}"}}).json()["id"] for i in range(5)]
    set_knobs(page_size=2)
    first = sim.get("/v1/predictions").json()
    assert [p["id"] for p in first["results"]] == mine[::-1][:2]
    assert first["previous"] is None
    second = sim.get(first["next"]).json()
    assert [p["id"] for p in second["results"]] == mine[::-1][2:4]
    back = sim.get(second["previous"]).json()
    assert [p["id"] for p in back["results"]] == mine[::-1][:2]
    seen, page = [], first
    while True:
        seen += [p["id"] for p in page["results"]]
        if page["next"] is None:
            break
        page = sim.get(page["next"]).json()
    assert seen[:5] == mine[::-1] and len(seen) == len(set(seen))
    problem(sim.get("/v1/predictions", params={"cursor": "bogus!"}), 400)


def test_the_list_filters_by_creation_time(sim: httpx.Client) -> None:
    first = sim.post(FLUX, json={"input": {"prompt": "before"}}).json()
    time.sleep(0.01)
    second = sim.post(FLUX, json={"input": {"prompt": "after"}}).json()
    after = sim.get("/v1/predictions", params={"created_after": second["created_at"]}).json()
    assert [p["id"] for p in after["results"]] == [second["id"]]
    before = sim.get("/v1/predictions", params={"created_before": second["created_at"]}).json()
    assert before["results"][0]["id"] == first["id"]
    problem(sim.get("/v1/predictions", params={"created_after": "yesterday"}), 400)


# --- auth, routing, input ---------------------------------------------------------------


def test_requests_without_the_token_answer_401(sim: httpx.Client, origin: str) -> None:
    done = sim.post(FLUX, json={"input": {"prompt": "x"}}, headers=WAIT).json()
    for headers in ({}, {"authorization": "Bearer r8_wrong"}, {"authorization": "Basic abc"}):
        problem(httpx.get(f"{origin}/v1/predictions", headers=headers), 401)
        problem(
            httpx.post(f"{origin}{FLUX}", json={"input": {"prompt": "x"}}, headers=headers), 401
        )
        problem(httpx.get(done["output"][0], headers=headers), 401)
    assert (
        "wrong"
        not in httpx.get(
            f"{origin}/v1/predictions", headers={"authorization": "Bearer r8_wrong"}
        ).text
    )


def test_input_is_checked_against_the_models_schema(sim: httpx.Client) -> None:
    bad = problem(
        sim.post(FLUX, json={"input": {"num_outputs": 9, "aspect_ratio": "7:1", "go_fast": "yes"}}),
        422,
    )
    fields = {f["field"]: f["type"] for f in bad["invalid_fields"]}
    assert fields == {
        "input.prompt": "required",
        "input.num_outputs": "less_than_equal",
        "input.aspect_ratio": "enum",
        "input.go_fast": "type",
    }
    assert "- input.num_outputs: Must be less than or equal to 4\n" in bad["detail"]
    problem(sim.post(FLUX, json={"input": "a cat"}), 422)
    problem(sim.post(FLUX, json={}), 422)
    problem(sim.post(VEO, json={"input": {"prompt": "x", "duration": 5}}), 422)
    problem(sim.post(SPEECH, json={"input": {"text": "x" * 10001}}), 422)
    ok = sim.post(FLUX, json={"input": {"prompt": "x", "unknown": 1}}).json()
    assert ok["input"]["num_outputs"] == 1 and ok["input"]["output_format"] == "webp"
    assert "unknown" not in ok["input"]


def test_unknown_models_paths_and_bodies(sim: httpx.Client) -> None:
    problem(sim.post("/v1/models/nobody/nothing/predictions", json={"input": {}}), 404)
    problem(sim.get("/v1/models/nobody/nothing"), 404)
    problem(sim.get("/v1/deployments"), 404)
    problem(sim.post(FLUX, content=b"{not json", headers={"content-type": "application/json"}), 400)


def test_predictions_by_version(sim: httpx.Client) -> None:
    model = MODELS["meta/meta-llama-3.1-405b-instruct"]
    given = {"prompt": "hi", "max_tokens": 3}
    official = sim.post("/v1/predictions", json={"version": model.ref, "input": given}).json()
    assert official["version"] == "hidden"
    full = sim.post(
        "/v1/predictions", json={"version": f"{model.ref}:{model.version}", "input": given}
    ).json()
    bare = sim.post("/v1/predictions", json={"version": model.version, "input": given}).json()
    assert full["version"] == bare["version"] == model.version
    assert full["model"] == bare["model"] == model.ref
    wrong = f"black-forest-labs/flux-schnell:{model.version}"
    for version in (wrong, "0" * 64, "nobody/nothing", None):
        problem(sim.post("/v1/predictions", json={"version": version, "input": given}), 422)


def test_models_publish_their_input_schema(sim: httpx.Client) -> None:
    for ref, model in MODELS.items():
        body = sim.get(f"/v1/models/{ref}").json()
        assert body["owner"] + "/" + body["name"] == ref and body["is_official"] is True
        latest = body["latest_version"]
        assert latest["id"] == model.version and len(latest["id"]) == 64
        schema = latest["openapi_schema"]["components"]["schemas"]["Input"]
        assert schema == model.input_schema


def test_the_webhook_secret(sim: httpx.Client) -> None:
    key = sim.get("/v1/webhooks/default/secret").json()["key"]
    assert key.startswith("whsec_") and len(base64.b64decode(key[6:])) == 32
    assert sim.get("/v1/webhooks/default/secret").json()["key"] == key


# --- outputs ----------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    # Walk the chunks: every CRC must hold, and the image data must inflate.
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(
            kind + chunk
        )
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    assert len(zlib.decompress(idat)) == height * (1 + width * 3)
    return width, height


def test_image_outputs_are_real_pngs(sim: httpx.Client) -> None:
    body = sim.post(
        FLUX,
        json={"input": {"prompt": "three", "num_outputs": 3, "aspect_ratio": "16:9"}},
        headers=WAIT,
    ).json()
    assert len(body["output"]) == 3
    files = [sim.get(url) for url in body["output"]]
    assert all(f.headers["content-type"] == "image/png" for f in files)
    assert {png_size(f.content) for f in files} == {(114, 64)}
    assert len({f.content for f in files}) == 3  # different images
    assert sim.get(body["output"][0]).content == files[0].content  # stable
    base = body["output"][0].rsplit("/", 1)[0]
    assert sim.get(f"{base}/3.png").status_code == 404
    assert sim.get(f"{base}/0.webp").status_code == 404


@pytest.mark.parametrize("duration", [4, 6, 8])
def test_video_outputs_are_real_mp4s_as_long_as_asked(sim: httpx.Client, duration: int) -> None:
    body = sim.post(
        VEO, json={"input": {"prompt": "waves", "duration": duration}}, headers=WAIT
    ).json()
    assert isinstance(body["output"], str) and body["output"].endswith(".mp4")
    video = sim.get(body["output"])
    assert video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp" and b"avc1" in video.content
    assert media.mp4_duration(video.content) == duration
    assert len(video.content) < 20_000


def test_speech_outputs_are_real_audio_as_long_as_the_text(sim: httpx.Client) -> None:
    text = "Hello from the Replicate simulator, " * 3  # 108 characters
    wav_body = sim.post(
        SPEECH,
        json={"input": {"text": text, "audio_format": "wav", "sample_rate": 16000, "speed": 2}},
        headers=WAIT,
    ).json()
    assert wav_body["metrics"]["input_token_count"] == len(text)
    data = sim.get(wav_body["output"]).content
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.getnframes() / 16000 == pytest.approx(len(text) / 15 / 2, abs=0.01)
    mp3 = sim.post(SPEECH, json={"input": {"text": text}}, headers=WAIT).json()
    assert mp3["output"].endswith(".mp3")
    audio = sim.get(mp3["output"])
    assert audio.headers["content-type"] == "audio/mpeg"
    assert media.duration(audio.content) == pytest.approx(len(text) / 15, abs=0.05)
    flac = sim.post(SPEECH, json={"input": {"text": text, "audio_format": "flac"}}, headers=WAIT)
    audio = sim.get(flac.json()["output"]).content
    assert audio[:4] == b"fLaC" and media.duration(audio) == pytest.approx(len(text) / 15, abs=0.01)


def test_language_model_outputs_are_tokens(sim: httpx.Client) -> None:
    body = sim.post(
        LLAMA, json={"input": {"prompt": "Why is the sky blue?", "max_tokens": 64}}, headers=WAIT
    ).json()
    assert isinstance(body["output"], list) and all(isinstance(t, str) for t in body["output"])
    assert "Why is the sky blue?" in "".join(body["output"])
    assert body["metrics"]["output_token_count"] == len(body["output"])
    assert body["metrics"]["input_token_count"] > 0
    short = sim.post(LLAMA, json={"input": {"prompt": "x", "max_tokens": 2}}, headers=WAIT).json()
    assert len(short["output"]) == 2


# --- failures ---------------------------------------------------------------------------


def test_input_markers_fail_predictions(sim: httpx.Client) -> None:
    failed = sim.post(FLUX, json={"input": {"prompt": "a [fail] please"}}, headers=WAIT)
    assert failed.status_code == 201
    body = failed.json()
    assert body["status"] == "failed" and body["error"] == FAIL_ERROR and body["output"] is None
    assert "predict_time" in body["metrics"] and body["completed_at"]
    nsfw = sim.post(FLUX, json={"input": {"prompt": "[NSFW] thing"}}, headers=WAIT).json()
    assert nsfw["status"] == "failed" and nsfw["error"] == NSFW_ERROR
    spoken = sim.post(SPEECH, json={"input": {"text": "say [fail]"}}, headers=WAIT).json()
    assert spoken["status"] == "failed"


def test_the_fail_knob(sim: httpx.Client, set_knobs: Knobs) -> None:
    set_knobs(fail=[{"kind": "prediction", "error": "CUDA out of memory"}])
    body = sim.post(FLUX, json={"input": {"prompt": "x"}}, headers=WAIT).json()
    assert body["status"] == "failed" and body["error"] == "CUDA out of memory"
    assert (
        sim.post(FLUX, json={"input": {"prompt": "x"}}, headers=WAIT).json()["status"]
        == "succeeded"
    )

    set_knobs(
        fail=[{"kind": "error", "status": 429}, {"kind": "error", "status": 503, "path": FLUX}]
    )
    throttled = sim.get("/v1/predictions")
    problem(throttled, 429)
    assert throttled.headers["retry-after"] == "1"
    assert sim.get("/v1/predictions").status_code == 200
    problem(sim.post(FLUX, json={"input": {"prompt": "x"}}), 503)
    assert sim.post(FLUX, json={"input": {"prompt": "x"}}).status_code == 202


def test_bad_knobs_are_refused(sim: httpx.Client) -> None:
    for bad in (
        {"step_seconds": -1},
        {"nope": 1},
        {"fail": [{"kind": "boom"}]},
        {"fail": {"kind": "error", "status": "teapot"}},
        {"fail": {"kind": "error", "status": 200}},
        {"fail": {"kind": "error", "status": 429, "retry_after": -1}},
        {"page_size": 0},
        {"webhook_duplicates": "yes"},
    ):
        assert sim.post("/_sim/knobs", json=bad).status_code == 400


def test_requests_are_recorded_without_the_token(sim: httpx.Client) -> None:
    sim.delete("/_sim/requests")
    sim.post(FLUX, json={"input": {"prompt": "recorded"}})
    [logged] = sim.get("/_sim/requests").json()
    assert logged["path"] == FLUX and logged["json"] == {"input": {"prompt": "recorded"}}
    assert "authorization" not in logged["headers"]


# --- webhooks ---------------------------------------------------------------------------


def check_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check, written out here rather than with the simulator's code."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [
        s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")
    ]
    return any(hmac.compare_digest(expected, g) for g in given)


def test_webhooks_are_signed_and_carry_the_prediction(
    sim: httpx.Client, receiver: Any, wait_for: Any
) -> None:
    secret = sim.get("/v1/webhooks/default/secret").json()["key"]
    created = sim.post(
        FLUX,
        json={
            "input": {"prompt": "hooked"},
            "webhook": receiver.url,
            "webhook_events_filter": ["start", "completed"],
        },
    ).json()
    wait_for(lambda: len(receiver.received) == 2)
    time.sleep(0.2)
    assert len(receiver.received) == 2
    start, completed = receiver.received
    for delivery in receiver.received:
        headers = delivery["headers"]
        assert check_signature(secret, headers, delivery["body"])
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
        assert headers["content-type"] == "application/json"
    assert start["headers"]["webhook-id"] != completed["headers"]["webhook-id"]
    assert json.loads(start["body"])["status"] == "starting"
    final = json.loads(completed["body"])
    assert final == sim.get(created["urls"]["get"]).json()
    assert final["status"] == "succeeded" and final["output"]


def test_default_events_and_the_logs_event(sim: httpx.Client, receiver: Any, wait_for: Any) -> None:
    sim.post(FLUX, json={"input": {"prompt": "default"}, "webhook": receiver.url})
    wait_for(lambda: receiver.received)
    time.sleep(0.2)
    assert [json.loads(d["body"])["status"] for d in receiver.received] == ["succeeded"]
    receiver.received.clear()
    sim.post(
        FLUX,
        json={
            "input": {"prompt": "logs"},
            "webhook": receiver.url,
            "webhook_events_filter": ["logs"],
        },
    )
    wait_for(lambda: receiver.received)
    assert json.loads(receiver.received[0]["body"])["status"] == "processing"


def test_a_canceled_prediction_sends_its_completed_webhook_at_once(
    sim: httpx.Client, set_knobs: Knobs, receiver: Any, wait_for: Any
) -> None:
    set_knobs(slow_seconds=30)
    created = sim.post(FLUX, json={"input": {"prompt": "x"}, "webhook": receiver.url}).json()
    time.sleep(0.1)
    assert receiver.received == []
    sim.post(created["urls"]["cancel"])
    wait_for(lambda: receiver.received, timeout=5)
    assert json.loads(receiver.received[0]["body"])["status"] == "canceled"


def test_the_duplicate_knob_delivers_each_webhook_twice(
    sim: httpx.Client, set_knobs: Knobs, receiver: Any, wait_for: Any
) -> None:
    set_knobs(webhook_duplicates=True)
    sim.post(FLUX, json={"input": {"prompt": "twice"}, "webhook": receiver.url})
    wait_for(lambda: len(receiver.received) == 2)
    first, second = receiver.received
    assert first["body"] == second["body"]
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["headers"]["webhook-signature"] == second["headers"]["webhook-signature"]


def test_the_bad_signature_knob(
    sim: httpx.Client, set_knobs: Knobs, receiver: Any, wait_for: Any
) -> None:
    secret = sim.get("/v1/webhooks/default/secret").json()["key"]
    set_knobs(webhook_bad_signature=True)
    sim.post(FLUX, json={"input": {"prompt": "forged"}, "webhook": receiver.url})
    [delivery] = wait_for(lambda: receiver.received)
    assert not check_signature(secret, delivery["headers"], delivery["body"])
    assert not verify(secret, delivery["headers"], delivery["body"])


def test_failed_deliveries_are_retried(sim: httpx.Client, receiver: Any, wait_for: Any) -> None:
    receiver.statuses = [500, 503]
    created = sim.post(FLUX, json={"input": {"prompt": "retry"}, "webhook": receiver.url}).json()
    wait_for(lambda: len(receiver.received) == 3)
    assert len({d["headers"]["webhook-id"] for d in receiver.received}) == 1
    log = wait_for(
        lambda: [d for d in sim.get("/_sim/webhooks").json() if d["prediction"] == created["id"]]
    )
    assert log[0]["attempts"] == 3 and log[0]["answer"] == 200


def test_webhooks_only_go_to_this_machine(sim: httpx.Client) -> None:
    for url in ("https://example.com/hook", "http://10.0.0.1/hook", "ftp://127.0.0.1/x", "nope"):
        problem(sim.post(FLUX, json={"input": {"prompt": "x"}, "webhook": url}), 422)
    problem(
        sim.post(
            FLUX,
            json={
                "input": {"prompt": "x"},
                "webhook": "http://127.0.0.1:9/h",
                "webhook_events_filter": ["done"],
            },
        ),
        422,
    )


def test_verify_checks_signature_and_age() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"id": "p"}'
    now = 1_800_000_000
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": "v1,bogus " + sign(secret, "msg_1", now, body),
    }
    assert check_signature(secret, headers, body)
    assert verify(secret, headers, body, now=now + 10)
    assert not verify(secret, headers, body, now=now + 301)  # too old
    assert not verify(secret, headers, body + b" ", now=now)
    assert not verify(secret, headers | {"webhook-id": "msg_2"}, body, now=now)
    assert not verify(secret, headers | {"webhook-timestamp": "soon"}, body, now=now)
    assert not verify("whsec_!!notbase64", headers, body, now=now)


def test_the_sandbox_factory_serves_and_stops_promptly_with_webhooks_pending(
    receiver: Any,
) -> None:
    """``sandbox_app(api_key=...)`` is what ``ProviderSpec.simulator`` is called as; a
    simulator with deliveries still waiting must not hold up the gateway's shutdown."""
    app = sandbox_app(api_key="sk-sim-sandbox")
    assert app.state.knobs["step_seconds"] == SANDBOX_STEP_SECONDS
    with serve(app) as url:
        answer = httpx.post(
            f"{url}{FLUX}",
            json={"input": {"prompt": "x"}, "webhook": receiver.url},
            headers={"authorization": "Bearer sk-sim-sandbox"},
        )
        assert answer.status_code == 202 and answer.json()["status"] == "starting"
        assert len(app.state.tasks) == 1
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 3
    assert not app.state.tasks and app.state.http.is_closed
    assert create_app("t", webhook_secret="whsec_abc").state.webhook_secret == "whsec_abc"
