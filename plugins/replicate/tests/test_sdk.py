"""Replicate's official Python client (``replicate``) against the simulator, over real HTTP:
if the client runs models, reads outputs, pages, cancels, reads errors and validates
webhook signatures here, the simulator speaks Replicate's API as its users meet it.

The client wraps only ``https:`` output URLs in ``FileOutput``; the simulator's are
``http://127.0.0.1``, so outputs come back as URL strings and are read with the token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ModelError, ReplicateError
from replicate.webhook import InvalidSignatureError, Webhooks

from apimodels.providers import media
from apimodels_replicate.simulator import NSFW_ERROR


@pytest.fixture
def client(sim: httpx.Client, origin: str, token: str) -> Iterator[replicate.Client]:
    sdk = replicate.Client(api_token=token, base_url=origin)
    sdk.poll_interval = 0.02
    yield sdk
    sdk._client.close()  # the client has no close() of its own


def test_run_returns_output_files(client: replicate.Client, sim: httpx.Client) -> None:
    images = client.run(
        "black-forest-labs/flux-schnell", input={"prompt": "two owls", "num_outputs": 2}
    )
    assert len(images) == 2
    for image in images:
        assert sim.get(image).content[:8] == b"\x89PNG\r\n\x1a\n"
    video = client.run("google/veo-3.1-fast", input={"prompt": "rain", "duration": 6})
    assert media.mp4_duration(sim.get(video).content) == 6
    speech = client.run(
        "minimax/speech-2.6-turbo", input={"text": "Hello there.", "audio_format": "wav"}
    )
    assert media.duration(sim.get(speech).content) == pytest.approx(12 / 15, abs=0.01)


def test_run_a_language_model(client: replicate.Client) -> None:
    tokens = client.run(
        "meta/meta-llama-3.1-405b-instruct", input={"prompt": "Hello llama", "max_tokens": 20}
    )
    assert "Hello llama" in "".join(tokens)


def test_run_polls_when_the_wait_runs_out(
    client: replicate.Client, sim: httpx.Client, set_knobs: Any
) -> None:
    """Prefer: wait=1 comes back 'starting'; the client must then poll to the end."""
    set_knobs(slow_seconds=1.2)
    output = client.run("black-forest-labs/flux-schnell", input={"prompt": "slow"}, wait=1)
    assert len(output) == 1 and sim.get(output[0]).content[:4] == b"\x89PNG"


def test_a_failed_prediction_raises_model_error(client: replicate.Client) -> None:
    with pytest.raises(ModelError) as failure:
        client.run("black-forest-labs/flux-schnell", input={"prompt": "[nsfw]"})
    assert failure.value.prediction.error == NSFW_ERROR
    assert failure.value.prediction.status == "failed"


def test_predictions_create_wait_cancel_and_list(client: replicate.Client, set_knobs: Any) -> None:
    prediction = client.predictions.create(
        model="black-forest-labs/flux-schnell", input={"prompt": "waiting"}
    )
    assert prediction.status == "starting"
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.metrics["predict_time"] > 0
    by_version = client.predictions.create(
        version=client.models.get("google/veo-3.1-fast").latest_version.id,
        input={"prompt": "by version", "duration": 4},
    )
    by_version.wait()
    assert by_version.status == "succeeded" and by_version.output.endswith(".mp4")

    set_knobs(slow_seconds=30, page_size=1)
    running = client.predictions.create(model="google/veo-3.1-fast", input={"prompt": "stop"})
    running.cancel()
    running.reload()
    assert running.status == "canceled"
    first = client.predictions.list()
    assert [p.id for p in first.results] == [running.id]
    second = client.predictions.list(first.next)
    assert [p.id for p in second.results] == [by_version.id]


def test_models_give_their_input_schema(client: replicate.Client) -> None:
    model = client.models.get("minimax/speech-2.6-turbo")
    schema = model.latest_version.openapi_schema["components"]["schemas"]["Input"]
    assert schema["required"] == ["text"] and schema["properties"]["text"]["maxLength"] == 10000


def test_errors_reach_the_client_as_problem_details(client: replicate.Client, origin: str) -> None:
    with pytest.raises(ReplicateError) as invalid:
        client.predictions.create(model="black-forest-labs/flux-schnell", input={})
    assert invalid.value.status == 422 and "prompt is required" in invalid.value.detail
    with pytest.raises(ReplicateError) as missing:
        client.predictions.get("nosuchprediction0000000000")
    assert missing.value.status == 404
    stranger = replicate.Client(api_token="r8_not_the_token", base_url=origin)
    with pytest.raises(ReplicateError) as denied:
        stranger.predictions.list()
    stranger._client.close()
    assert denied.value.status == 401 and denied.value.title == "Unauthenticated"


def test_the_client_retries_a_throttled_read(client: replicate.Client, set_knobs: Any) -> None:
    done = client.predictions.create(model="black-forest-labs/flux-schnell", input={"prompt": "x"})
    done.wait()
    set_knobs(fail=[{"kind": "error", "status": 429, "retry_after": 0}])
    assert client.predictions.get(done.id).status == "succeeded"
    assert client.predictions.get(done.id).id == done.id


def test_the_client_validates_the_webhooks(
    client: replicate.Client, set_knobs: Any, receiver: Any, wait_for: Any
) -> None:
    secret = client.webhooks.default.secret()
    client.predictions.create(
        model="black-forest-labs/flux-schnell",
        input={"prompt": "hook"},
        webhook=receiver.url,
        webhook_events_filter=["completed"],
    )
    [delivery] = wait_for(lambda: receiver.received)
    Webhooks.validate(
        headers=delivery["headers"], body=delivery["body"].decode(), secret=secret, tolerance=60
    )
    receiver.received.clear()
    set_knobs(webhook_bad_signature=True)
    client.predictions.create(
        model="black-forest-labs/flux-schnell", input={"prompt": "forged"}, webhook=receiver.url
    )
    [forged] = wait_for(lambda: receiver.received)
    with pytest.raises(InvalidSignatureError):
        Webhooks.validate(headers=forged["headers"], body=forged["body"].decode(), secret=secret)
