"""A simulator of Replicate's HTTP API, for sandbox mode and the tests.

``create_app(api_token)`` serves Replicate's paths under ``/v1`` with Replicate's payloads
(checked against its published OpenAPI description in tests/data), Bearer auth and RFC 7807
``application/problem+json`` errors ``{title, status, detail}`` (401 bad token, 404 unknown
model or prediction, 422 invalid input, 429 with ``Retry-After`` when asked):

- ``POST /v1/models/{owner}/{name}/predictions``: run an official model (``version`` reads
  ``"hidden"``);
- ``POST /v1/predictions`` with ``version``: ``owner/name`` (official), ``owner/name:id`` or a
  bare version id;
- ``GET /v1/predictions/{id}``, ``POST /v1/predictions/{id}/cancel``;
- ``GET /v1/predictions``: newest first, ``page_size`` at a time, ``next`` / ``previous``
  cursor URLs, ``created_after`` / ``created_before``;
- ``GET /v1/models/{owner}/{name}``: with ``latest_version.openapi_schema`` (the input
  schema a client validates against);
- ``GET /v1/webhooks/default/secret``: the ``whsec_`` secret that signs webhooks.

The models are those of ``models.MODELS``; inputs are checked against their schemas
(``inputs.validate_input``). A prediction moves ``starting`` -> ``processing`` ->
``succeeded`` / ``failed`` / ``canceled`` on the clock: ``step_seconds`` in each of the first
two states (plus ``slow_seconds`` of processing), fixed when it is created. ``Prefer: wait``
or ``wait=N`` (1 to 60 s) holds the create request until the prediction ends or N seconds
pass: 201 with a finished prediction, else 202 showing it ``starting`` as it was created (as
the real API does, per the project's NOTES.md and the official client's comments). ``Cancel-After``
(``30s``, ``5m``, ``1h30m``, at least 5 s) cancels it at that age (``aborted`` if it had not
started). Finished predictions carry ``completed_at``, ``metrics.predict_time`` (seconds of
processing: the published description only declares ``total_time``, but Replicate's real
answers carry it) and ``metrics.total_time``; language models add ``input_token_count`` and
``output_token_count``, the speech model ``input_token_count`` (one per character).

Outputs are files the simulator serves at ``/_sim/files/{prediction}/{n}.{ext}`` behind the
same Bearer token, made when first downloaded, with real bytes: PNG for image models (whatever
``output_format`` asks: the format is checked, not encoded), MP4 (H.264, one of three
clips bundled in ``media/``, as long as ``duration`` asks) for video, MP3 / WAV / FLAC / PCM
for speech (15 characters a second, divided by ``speed``), and a list of string tokens for
language models (at most ``max_tokens``). ``num_outputs`` images are made.

Failures, deterministic: an input text containing ``[fail]`` fails the prediction with an
error string; ``[nsfw]`` fails it with the error Replicate's image models give ("All
generated images contained NSFW content. ..."), so safety mapping can be tested.

Webhooks: a prediction with ``webhook`` (only ``http(s)://127.0.0.1``, ``localhost`` or
``[::1]`` URLs: the simulator sends nothing off this machine) gets the prediction object
POSTed, signed per ``apimodels.signing.sign``, for the events in ``webhook_events_filter``
(default ``output`` and ``completed``): ``start`` at creation, ``logs`` when processing
starts, ``output`` and ``completed`` at the end (one delivery when both are asked: outputs
appear all at once). A delivery answered with an error or not answered is retried 3 times
(0.1, 0.2, 0.4 s apart). ``GET /_sim/webhooks`` lists the deliveries made.

Knobs, in ``app.state.knobs`` or as JSON to ``POST /_sim/knobs`` (merged; ``DELETE``
restores the defaults):

- ``step_seconds``, ``slow_seconds``: the clock above (a prediction keeps the values it was
  created with);
- ``latency``: seconds to wait before answering any ``/v1`` request;
- ``page_size``: predictions per page of the list (Replicate's is 100);
- ``webhook_duplicates``: deliver every webhook twice (same id, timestamp and signature, as
  a retry would);
- ``webhook_bad_signature``: sign webhooks with a wrong key;
- ``fail``: a queue of one-shot failures: ``{"kind": "error", "status": 500}`` answers the
  next ``/v1`` request whose path matches ``path`` (any when absent) with that status
  (429 with ``Retry-After``: ``retry_after`` seconds, 1 by default); ``{"kind": "prediction", "error": "..."}`` fails the next
  prediction created with that error string.

``GET /_sim/requests`` lists the last requests received under ``/v1`` (method, path,
headers without ``authorization``, JSON body); ``DELETE`` clears it.

Not simulated: streaming (``urls.stream``), deployments, trainings, files, collections,
search, hardware, private models and their billing for idle time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apimodels.providers import media
from apimodels.signing import new_secret, sign

from .inputs import describe, validate_input
from .models import MODELS, VERSIONS, SimModel

#: What ``apimodels serve --sandbox`` uses: slow enough to watch a task move.
SANDBOX_STEP_SECONDS = 1.0
RECORDED = 200
MAX_FILES = 32  # rendered output files kept in memory
NSFW_ERROR = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)
FAIL_ERROR = "Prediction failed: simulated failure ([fail] in the input)"
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
WEBHOOK_RETRIES = (0.1, 0.2, 0.4)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TERMINAL = ("succeeded", "failed", "canceled", "aborted")
CHARS_PER_SECOND = 15  # speech
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # lowercase Crockford base32
_CONTENT_TYPES = {
    "png": "image/png",
    "mp4": "video/mp4",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "pcm": "application/octet-stream",
}


def _prediction_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(26))


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- errors --------------------------------------------------------------------------------


class ReplicateError(Exception):
    """An error answered as Replicate answers it: ``application/problem+json``."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.headers = status, headers
        self.body = {"title": title, "status": status, "detail": detail, **extra}

    def response(self) -> Response:
        return Response(
            json.dumps(self.body),
            self.status,
            headers=self.headers,
            media_type="application/problem+json",
        )


def _not_found(detail: str = "Not found.") -> ReplicateError:
    return ReplicateError(404, "Not found", detail)


def _invalid(detail: str, **extra: Any) -> ReplicateError:
    return ReplicateError(422, "Input validation failed", detail, **extra)


def canned_error(status: int, retry_after: int = 1) -> ReplicateError:
    """Replicate's error for ``status``, as the ``fail`` knob answers it."""
    if status == 429:
        detail = f"Request was throttled. Expected available in {retry_after} second(s)."
        headers = {"retry-after": str(retry_after)}
        return ReplicateError(429, "Request was throttled", detail, headers=headers)
    if status == 401:
        return ReplicateError(
            401, "Unauthenticated", "You did not pass a valid authentication token"
        )
    if status == 404:
        return _not_found()
    if status == 422:
        return _invalid("- input: simulated validation failure\n")
    titles = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
    return ReplicateError(
        status, titles.get(status, "Error"), "The simulator was asked to fail this request."
    )


# --- predictions ---------------------------------------------------------------------------


@dataclass
class Prediction:
    """One prediction. Its timeline is fixed at creation; status follows the clock."""

    id: str
    seq: int
    model: SimModel
    version: str  # "hidden" when run as an official model
    input: dict[str, Any]
    created: float
    started: float
    finished: float
    error: str | None  # set when it will fail
    base_url: str  # where its URLs point
    deadline: float | None = None  # from Cancel-After
    canceled_at: float | None = None
    webhook: str | None = None
    events: frozenset[str] = frozenset()
    duplicate_webhooks: bool = False
    bad_signature: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self) -> float:
        """When it ends (or ended): it finishes, or is canceled first."""
        stops = [t for t in (self.canceled_at, self.deadline) if t is not None]
        return min([self.finished, *stops])

    def status(self, now: float) -> str:
        end = self.end()
        if now >= end:
            if end < self.finished:  # canceled by the user or by its deadline
                return "aborted" if end <= self.started and end == self.deadline else "canceled"
            return "failed" if self.error else "succeeded"
        return "processing" if now >= self.started else "starting"

    def output(self) -> Any:
        """The output of a succeeded prediction: URLs, or text tokens."""
        kind, given = self.model.kind, self.input
        if kind == "text":
            return _tokens(self.model, given)
        url = f"{self.base_url}/_sim/files/{self.id}"
        if kind == "image":
            return [f"{url}/{n}.png" for n in range(given.get("num_outputs", 1))]
        if kind == "video":
            return f"{url}/0.mp4"
        return f"{url}/0.{given.get('audio_format', 'mp3')}"

    def metrics(self, status: str) -> dict[str, Any]:
        end = self.end()
        metrics: dict[str, Any] = {}
        if status != "aborted":
            metrics["predict_time"] = round(max(0.0, end - self.started), 6)
        metrics["total_time"] = round(end - self.created, 6)
        if self.model.kind == "text":
            metrics["input_token_count"] = _count_tokens(
                self.input.get("system_prompt", "") + self.input.get("prompt", "")
            )
            if status == "succeeded":
                metrics["output_token_count"] = len(_tokens(self.model, self.input))
        elif self.model.kind == "audio":
            metrics["input_token_count"] = len(self.input.get("text", ""))
        return metrics

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        """The prediction object, as ``GET /v1/predictions/{id}`` answers it at ``now``."""
        now = time.time() if now is None else now
        status = self.status(now)
        done = status in TERMINAL
        body: dict[str, Any] = {
            "id": self.id,
            "model": self.model.ref,
            "version": self.version,
            "input": self.input,
            "logs": _logs(self, now, status),
            "output": self.output() if status == "succeeded" else None,
            "data_removed": False,
            "error": self.error if status == "failed" else None,
            "source": "api",
            "status": status,
            "created_at": _iso(self.created),
            "urls": {
                "cancel": f"{self.base_url}/v1/predictions/{self.id}/cancel",
                "get": f"{self.base_url}/v1/predictions/{self.id}",
                "web": f"https://replicate.com/p/{self.id}",
            },
        }
        if now >= self.started and not (done and status == "aborted"):
            body["started_at"] = _iso(self.started)
        if done:
            body["completed_at"] = _iso(self.end())
            body["metrics"] = self.metrics(status)
        if self.deadline is not None:
            body["deadline"] = _iso(self.deadline)
        return body


def _logs(prediction: Prediction, now: float, status: str) -> str:
    if status in ("starting", "aborted"):
        return ""
    lines = [f"Running {prediction.model.ref}..."]
    if status == "succeeded":
        lines.append("Prediction complete.")
    elif status == "failed":
        lines.append(f"Error: {prediction.error}")
    elif status == "canceled":
        lines.append("Prediction canceled.")
    return "\n".join(lines) + "\n"


def _count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _tokens(model: SimModel, given: dict[str, Any]) -> list[str]:
    """A language model's reply, quoting the prompt, as streamed tokens (words)."""
    prompt = " ".join(str(given.get("prompt", "")).split())[:200]
    reply = f"This is {model.ref} on the Replicate simulator. You wrote: {prompt}"
    words = reply.split(" ")
    tokens = [w + " " for w in words[:-1]] + [words[-1]]
    return tokens[: given.get("max_tokens", 512)]


# --- output files --------------------------------------------------------------------------


@cache
def _clip(seconds: int) -> bytes:
    """A bundled H.264 MP4 clip of ``seconds`` (4, 6 or 8), read once."""
    return (resources.files(__package__) / "media" / f"clip-{seconds}s.mp4").read_bytes()


def render(prediction: Prediction, n: int, ext: str) -> bytes | None:
    """The bytes of output file ``n`` of a succeeded prediction (None if it has none)."""
    kind, given = prediction.model.kind, prediction.input
    seed = int.from_bytes(prediction.id.encode()[:8].ljust(8, b"0"), "big") + n
    if kind == "image" and ext == "png" and n < given.get("num_outputs", 1):
        side = 64 if given.get("megapixels", "1") == "1" else 32
        width, height = (int(x) for x in given.get("aspect_ratio", "1:1").split(":"))
        scale = side / min(width, height)
        return media.png(round(width * scale), round(height * scale), seed)
    if kind == "video" and ext == "mp4" and n == 0:
        return _clip(int(given.get("duration", 8)))
    if kind == "audio" and n == 0 and ext == given.get("audio_format", "mp3"):
        text = str(given.get("text", ""))
        seconds = max(0.5, len(text) / CHARS_PER_SECOND / float(given.get("speed", 1)))
        if ext == "mp3":
            return media.mp3_silence(seconds)
        rate = int(given.get("sample_rate", 32000))
        pcm = media.tone(seconds, rate)
        return {"wav": media.wav, "flac": media.flac}.get(ext, lambda p, r: p)(pcm, rate)
    return None


# --- webhooks ------------------------------------------------------------------------------


def _loopback(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.hostname in LOOPBACK_HOSTS


async def _send(app: Starlette, prediction: Prediction, events: list[str]) -> None:
    """POST the prediction, as it is now, to its webhook; retry on errors; log the result."""
    state = app.state
    snapshot = prediction.as_json()
    body = json.dumps(snapshot).encode()
    webhook_id = "msg_" + secrets.token_hex(12)
    stamp = int(time.time())
    secret = new_secret() if prediction.bad_signature else state.webhook_secret
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, webhook_id, stamp, body),
    }
    assert prediction.webhook is not None
    for copy in range(2 if prediction.duplicate_webhooks else 1):
        status, attempts = None, 0
        for pause in (*WEBHOOK_RETRIES, None):
            attempts += 1
            try:
                answer = await state.http.post(prediction.webhook, content=body, headers=headers)
                status = answer.status_code
            except httpx.HTTPError:
                status = None
            if (status is not None and status < 400) or pause is None:
                break
            await asyncio.sleep(pause)
        state.deliveries.append(
            {
                "prediction": prediction.id,
                "events": events,
                "status": snapshot["status"],
                "webhook_id": webhook_id,
                "copy": copy,
                "answer": status,
                "attempts": attempts,
            }
        )


async def _until(prediction: Prediction, when: Callable[[], float]) -> None:
    """Sleep until ``when()`` (re-read whenever the prediction changes, e.g. is canceled)."""
    while True:
        prediction.changed.clear()
        if (left := when() - time.time()) <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(prediction.changed.wait(), left)


async def _deliver(app: Starlette, prediction: Prediction) -> None:
    events = prediction.events
    if "start" in events:
        await _send(app, prediction, ["start"])
    if "logs" in events:
        await _until(prediction, lambda: min(prediction.started, prediction.end()))
        if prediction.status(time.time()) == "processing":
            await _send(app, prediction, ["logs"])
    await _until(prediction, prediction.end)
    final = [e for e in ("output", "completed") if e in events]
    if "output" in final and prediction.status(time.time()) != "succeeded":
        final.remove("output")  # no output came
    if final:
        await _send(app, prediction, final)


def _start_delivery(app: Starlette, prediction: Prediction) -> None:
    task = asyncio.get_running_loop().create_task(_deliver(app, prediction))
    app.state.tasks.add(task)
    task.add_done_callback(app.state.tasks.discard)


# --- parsing headers and bodies ------------------------------------------------------------


def _wait_seconds(request: Request) -> float | None:
    """``Prefer: wait`` (60 s) or ``wait=N`` (1..60), None when absent."""
    prefer = request.headers.get("prefer")
    if prefer is None:
        return None
    match = re.fullmatch(r"wait(?:=([1-9]|[1-5][0-9]|60))?", prefer.strip())
    if match is None:
        raise _invalid(
            "- Prefer: must be 'wait' or 'wait=n' where n is a number of seconds between 1 and 60\n"
        )
    return float(match.group(1) or 60)


def _cancel_after(request: Request) -> float | None:
    value = request.headers.get("cancel-after")
    if value is None:
        return None
    value = value.strip()
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", value)
    if not value or match is None:
        raise _invalid(f"- Cancel-After: invalid duration {value!r}\n")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 5:
        raise _invalid("- Cancel-After: the minimum allowed duration is 5 seconds\n")
    return float(total)


def _events(body: dict[str, Any]) -> frozenset[str]:
    given = body.get("webhook_events_filter")
    if given is None:
        return frozenset(("output", "completed"))
    if not isinstance(given, list) or any(e not in WEBHOOK_EVENTS for e in given):
        raise _invalid(f"- webhook_events_filter: must be a list of {', '.join(WEBHOOK_EVENTS)}\n")
    return frozenset(given)


def _marker_error(model: SimModel, given: dict[str, Any]) -> str | None:
    text = str(given.get(model.text_field, "")).lower()
    if "[nsfw]" in text:
        return NSFW_ERROR
    if "[fail]" in text:
        return FAIL_ERROR
    return None


def _take_failure(
    knobs: dict[str, Any], kind: str, path: str | None = None
) -> dict[str, Any] | None:
    for i, failure in enumerate(knobs["fail"]):
        if failure["kind"] == kind and failure.get("path") in (
            None,
            path,
            (path or "").removeprefix("/v1"),
        ):
            return knobs["fail"].pop(i)
    return None


# --- endpoints -----------------------------------------------------------------------------


def _model(owner: str, name: str) -> SimModel:
    model = MODELS.get(f"{owner}/{name}")
    if model is None:
        raise _not_found(
            f"Model {owner}/{name} not found (the simulator knows {', '.join(MODELS)})."
        )
    return model


def _by_version(ref: Any) -> tuple[SimModel, str]:
    """The model and the ``version`` field for ``POST /v1/predictions``'s ``version``."""
    if not isinstance(ref, str) or not ref:
        raise _invalid("- version: version is required\n")
    name, _, version = ref.partition(":")
    if not version and name in MODELS:  # owner/name: an official model
        return MODELS[name], "hidden"
    model = VERSIONS.get(version or name)
    if model is None or (version and model.ref != name):
        raise _invalid(
            "- version: Invalid version or not permitted\n",
            invalid_fields=[
                {
                    "type": "invalid_version",
                    "field": "version",
                    "description": "Invalid version or not permitted",
                }
            ],
        )
    return model, model.version


async def _create(
    request: Request, body: dict[str, Any], model: SimModel, version: str
) -> Response:
    state = request.app.state
    wait = _wait_seconds(request)
    cancel_after = _cancel_after(request)
    given, problems = validate_input(model.input_schema, body.get("input"))
    if problems:
        raise _invalid(describe(problems), invalid_fields=[p.as_dict() for p in problems])
    webhook = body.get("webhook")
    if webhook is not None and not (isinstance(webhook, str) and _loopback(webhook)):
        raise _invalid(
            "- webhook: the simulator only delivers webhooks to http(s)://127.0.0.1, localhost or [::1]\n"
        )
    events = _events(body)
    knobs = state.knobs
    step = float(knobs["step_seconds"])
    failure = _take_failure(knobs, "prediction")
    error = _marker_error(model, given) or (
        str(failure.get("error") or "Prediction failed: simulated failure") if failure else None
    )
    now = round(time.time(), 6)  # what created_at shows, so list filters match it exactly
    state.seq += 1
    prediction = Prediction(
        id=_prediction_id(),
        seq=state.seq,
        model=model,
        version=version,
        input=given,
        created=now,
        started=now + step,
        finished=now + 2 * step + float(knobs["slow_seconds"]),
        error=error,
        base_url=str(request.base_url).rstrip("/"),
        deadline=now + cancel_after if cancel_after is not None else None,
        webhook=webhook,
        events=events,
        duplicate_webhooks=bool(knobs["webhook_duplicates"]),
        bad_signature=bool(knobs["webhook_bad_signature"]),
    )
    state.predictions[prediction.id] = prediction
    if webhook is not None and events:
        _start_delivery(request.app, prediction)
    if wait is not None:
        limit = now + wait
        while time.time() < min(prediction.end(), limit):
            if await request.is_disconnected():
                break
            await asyncio.sleep(min(0.02, max(0.0, min(prediction.end(), limit) - time.time())))
    now = time.time()
    if prediction.status(now) in TERMINAL:
        return JSONResponse(prediction.as_json(now), 201)
    # Unfinished, it is shown as it was created (starting), as Replicate answers a create
    # whose wait ran out, even while it is processing.
    return JSONResponse(prediction.as_json(prediction.created), 202)


async def create_official(request: Request, body: dict[str, Any]) -> Response:
    params = request.path_params
    return await _create(request, body, _model(params["owner"], params["name"]), "hidden")


async def create_by_version(request: Request, body: dict[str, Any]) -> Response:
    model, version = _by_version(body.get("version"))
    return await _create(request, body, model, version)


def _prediction(request: Request) -> Prediction:
    prediction = request.app.state.predictions.get(request.path_params["id"])
    if prediction is None:
        raise _not_found()
    return prediction


async def get_prediction(request: Request, body: dict[str, Any]) -> Response:
    return JSONResponse(_prediction(request).as_json())


async def cancel_prediction(request: Request, body: dict[str, Any]) -> Response:
    prediction = _prediction(request)
    now = time.time()
    if prediction.status(now) not in TERMINAL:
        prediction.canceled_at = now
        prediction.changed.set()
    return JSONResponse(prediction.as_json(now))


def _cursor(direction: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{direction}{seq}".encode()).decode().rstrip("=")


def _read_cursor(value: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        if raw[0] in "np":
            return raw[0], int(raw[1:])
    except (ValueError, IndexError):
        pass
    raise ReplicateError(400, "Invalid cursor", "The cursor is not one this API gave out.")


def _when(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ReplicateError(
            400, "Invalid parameter", f"{name} must be an ISO 8601 date-time"
        ) from None


async def list_predictions(request: Request, body: dict[str, Any]) -> Response:
    state = request.app.state
    after, before = _when(request, "created_after"), _when(request, "created_before")
    rows = [
        p
        for p in reversed(state.predictions.values())  # newest first
        if (after is None or p.created >= after) and (before is None or p.created < before)
    ]
    size = int(state.knobs["page_size"])
    cursor = request.query_params.get("cursor")
    if cursor is None:
        page = rows[:size]
    else:
        direction, seq = _read_cursor(cursor)
        if direction == "n":  # older than seq
            page = [p for p in rows if p.seq < seq][:size]
        else:  # newer than seq: the page just before it
            page = [p for p in rows if p.seq > seq][-size:]
    url = str(request.url.replace(query="")).rstrip("/")
    older = bool(page) and rows[-1].seq < page[-1].seq
    newer = bool(page) and rows[0].seq > page[0].seq
    now = time.time()
    return JSONResponse(
        {
            "next": f"{url}?cursor={_cursor('n', page[-1].seq)}" if older else None,
            "previous": f"{url}?cursor={_cursor('p', page[0].seq)}" if newer else None,
            "results": [p.as_json(now) for p in page],
        }
    )


async def get_model(request: Request, body: dict[str, Any]) -> Response:
    model = _model(request.path_params["owner"], request.path_params["name"])
    runs = sum(1 for p in request.app.state.predictions.values() if p.model is model)
    return JSONResponse(
        {
            "url": f"https://replicate.com/{model.ref}",
            "owner": model.owner,
            "name": model.name,
            "description": model.description,
            "visibility": "public",
            "is_official": True,
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "cover_image_url": None,
            "default_example": None,
            "run_count": runs,
            "latest_version": {
                "id": model.version,
                "created_at": "2025-10-15T00:00:00.000000Z",
                "cog_version": "0.16.8",
                "openapi_schema": model.openapi_schema(),
            },
        }
    )


async def webhook_secret(request: Request, body: dict[str, Any]) -> Response:
    return JSONResponse({"key": request.app.state.webhook_secret})


async def unknown_path(request: Request, body: dict[str, Any]) -> Response:
    raise _not_found(f"No such endpoint: {request.method} {request.url.path}")


# --- plumbing ------------------------------------------------------------------------------

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


def _check_token(request: Request, token: str) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ReplicateError(401, "Unauthenticated", "You did not pass an authentication token")
    if not secrets.compare_digest(given.strip(), token):
        raise ReplicateError(
            401, "Unauthenticated", "You did not pass a valid authentication token"
        )


def _endpoint(handler: Handler, token: str) -> Callable[[Request], Awaitable[Response]]:
    """Wraps a ``/v1`` endpoint: recording, latency, the token, the failure queue, then
    Replicate's problem bodies."""

    async def endpoint(request: Request) -> Response:
        state = request.app.state
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        headers = {k: v for k, v in request.headers.items() if k != "authorization"}
        state.requests.append(
            {"method": request.method, "path": request.url.path, "headers": headers, "json": body}
        )
        try:
            if state.knobs["latency"]:
                await asyncio.sleep(float(state.knobs["latency"]))
            _check_token(request, token)
            failure = _take_failure(state.knobs, "error", request.url.path)
            if failure is not None:
                raise canned_error(
                    int(failure.get("status", 500)), int(failure.get("retry_after", 1))
                )
            if not isinstance(body, dict):
                raise ReplicateError(400, "Bad request", "The request body must be a JSON object.")
            return await handler(request, body)
        except ReplicateError as error:
            return error.response()

    return endpoint


def default_knobs(step_seconds: float = 0.05) -> dict[str, Any]:
    return {
        "step_seconds": step_seconds,
        "slow_seconds": 0.0,
        "latency": 0.0,
        "page_size": 100,
        "webhook_duplicates": False,
        "webhook_bad_signature": False,
        "fail": [],
    }


_NUMBER_KNOBS = ("step_seconds", "slow_seconds", "latency")
_FLAG_KNOBS = ("webhook_duplicates", "webhook_bad_signature")


def _check_knobs(update: Any) -> dict[str, Any]:
    if not isinstance(update, dict) or set(update) - set(default_knobs()):
        raise ValueError(f"knobs are an object with {', '.join(default_knobs())}")
    for key in _NUMBER_KNOBS:
        value = update.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{key} is a number of seconds")
    if "page_size" in update and (
        not isinstance(update["page_size"], int) or not 1 <= update["page_size"] <= 1000
    ):
        raise ValueError("page_size is an integer from 1 to 1000")
    for key in _FLAG_KNOBS:
        if key in update and not isinstance(update[key], bool):
            raise ValueError(f"{key} is true or false")
    fail = update.get("fail", [])
    fail = [fail] if isinstance(fail, dict) else fail
    if not isinstance(fail, list) or not all(
        isinstance(f, dict) and f.get("kind") in ("error", "prediction") for f in fail
    ):
        raise ValueError("fail is a list of objects whose kind is error or prediction")
    for f in fail:
        status, retry_after = f.get("status", 500), f.get("retry_after", 1)
        if not (isinstance(status, int) and 400 <= status <= 599):
            raise ValueError("a failure's status is an HTTP error status, 400 to 599")
        if not (isinstance(retry_after, int) and retry_after >= 0):
            raise ValueError("a failure's retry_after is a whole number of seconds")
    return {**update, "fail": fail}


async def knobs_endpoint(request: Request) -> Response:
    state = request.app.state
    if request.method == "DELETE":
        state.knobs = default_knobs(state.default_step)
    elif request.method == "POST":
        try:
            update = _check_knobs(await request.json())
        except ValueError as error:  # also JSON errors
            return ReplicateError(400, "Invalid knobs", str(error)).response()
        state.knobs["fail"].extend(update.pop("fail"))
        state.knobs.update(update)
    return JSONResponse(state.knobs)


async def requests_endpoint(request: Request) -> Response:
    if request.method == "DELETE":
        request.app.state.requests.clear()
    return JSONResponse(list(request.app.state.requests))


async def webhooks_endpoint(request: Request) -> Response:
    return JSONResponse(list(request.app.state.deliveries))


def _files_endpoint(token: str) -> Callable[[Request], Awaitable[Response]]:
    async def files(request: Request) -> Response:
        state = request.app.state
        try:
            _check_token(request, token)
        except ReplicateError as error:
            return error.response()
        params = request.path_params
        prediction = state.predictions.get(params["id"])
        data = None
        if prediction is not None and prediction.status(time.time()) == "succeeded":
            key = (prediction.id, params["n"], params["ext"])
            data = state.files.get(key)
            if data is None:
                data = render(prediction, params["n"], params["ext"])
                if data is not None:
                    state.files[key] = data
                    while len(state.files) > MAX_FILES:
                        state.files.popitem(last=False)
        if data is None:
            return _not_found().response()
        return Response(data, media_type=_CONTENT_TYPES[params["ext"]])

    return files


ENDPOINTS: list[tuple[str, str, Handler]] = [
    ("/v1/models/{owner}/{name}/predictions", "POST", create_official),
    ("/v1/models/{owner}/{name}", "GET", get_model),
    ("/v1/predictions", "POST", create_by_version),
    ("/v1/predictions", "GET", list_predictions),
    ("/v1/predictions/{id}", "GET", get_prediction),
    ("/v1/predictions/{id}/cancel", "POST", cancel_prediction),
    ("/v1/webhooks/default/secret", "GET", webhook_secret),
]


def create_app(
    api_token: str, *, webhook_secret: str | None = None, step_seconds: float = 0.05
) -> Starlette:
    """The simulator. Every ``/v1`` request and output download must bear ``api_token`` as
    a Bearer token; webhooks are signed with ``webhook_secret`` (a fresh ``whsec_`` secret
    when None); ``step_seconds`` is the default of the ``step_seconds`` knob."""
    routes = [
        Route(path, _endpoint(handler, api_token), methods=[method])
        for path, method, handler in ENDPOINTS
    ]
    routes += [
        Route(
            "/v1/{rest:path}",
            _endpoint(unknown_path, api_token),
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        ),
        Route("/_sim/knobs", knobs_endpoint, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/requests", requests_endpoint, methods=["GET", "DELETE"]),
        Route("/_sim/webhooks", webhooks_endpoint, methods=["GET"]),
        Route("/_sim/files/{id}/{n:int}.{ext:str}", _files_endpoint(api_token), methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for task in list(app.state.tasks):
            task.cancel()
        await asyncio.gather(*app.state.tasks, return_exceptions=True)
        await app.state.http.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    state = app.state
    state.default_step = step_seconds
    state.knobs = default_knobs(step_seconds)
    state.webhook_secret = webhook_secret or new_secret()
    state.predictions = OrderedDict()
    state.seq = 0
    state.requests = deque(maxlen=RECORDED)
    state.deliveries = deque(maxlen=RECORDED)
    state.files = OrderedDict()
    state.tasks = set()
    state.http = httpx.AsyncClient(timeout=10, follow_redirects=False, trust_env=False)
    return app


def sandbox_app(*, api_key: str) -> Starlette:
    """The simulator as ``apimodels serve --sandbox`` runs it (``ProviderSpec.simulator``):
    predictions take about ``SANDBOX_STEP_SECONDS`` in each state, so a task can be watched."""
    return create_app(api_key, step_seconds=SANDBOX_STEP_SECONDS)
