"""apimodels provider plugin for Replicate: models run as predictions (long-running jobs).

Every Replicate model is served through apimodels' tasks API (``POST /v1/tasks``); image
models also answer ``POST /v1/images/generations`` (the core runs the task and waits).
The plugin is sans-I/O: it builds Replicate's requests and reads its predictions; the core
sends them, polls, takes the webhooks, copies the output files and bills. (The core calls a
provider's hooks only for its own models, so they need not check.)

- ``upstream`` in registry.toml is ``owner/name`` (an official model, run at
  ``/models/{owner}/{name}/predictions``), or ``owner/name:version`` / a bare version id
  (run at ``/predictions`` with ``version``).
- Statuses: starting -> queued, processing -> running, succeeded, failed, canceled; aborted
  (canceled before it started) -> canceled.
- Usage: ``metrics.predict_time`` (seconds of hardware) for ``per_run_second`` prices; the
  token counts of language models; one character per input character of speech models.
  The core adds the images, files and seconds of video it measures in the outputs.
- Output files are downloaded with the API token only from Replicate's own hosts.
- Webhooks are checked with the Standard Webhooks signature and a 5-minute timestamp window,
  keyed by ``REPLICATE_WEBHOOK_SECRET`` (from ``GET /v1/webhooks/default/secret``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx

from apimodels import (
    APIError,
    InvalidRequest,
    Job,
    Modality,
    ModelConfig,
    PermissionDenied,
    ProviderSpec,
    Upstream,
    UpstreamError,
    Usage,
    hookimpl,
    signing,
)

from .models import MODELS

apimodels_hook_api = ">=2,<3"  # the hook-API versions this plugin is written for
NAME = "replicate"
_STATUS = {
    "starting": "queued",
    "processing": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
    "aborted": "canceled",
}
# Replicate's image models answer this way when their safety checker blocks every output.
_NSFW_MARKERS = ("nsfw content", "nsfw_content", "flagged as sensitive", "safety checker")
_TRUSTED_FILE_HOSTS = ("replicate.delivery", "replicate.com")


@hookimpl
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    register(
        ProviderSpec(
            name=NAME,
            base_url="https://api.replicate.com/v1",
            api_key_env="REPLICATE_API_TOKEN",
            simulator="apimodels_replicate.simulator:sandbox_app",  # imported only when a simulator runs
            description="Replicate: image, video, audio and language models run as predictions",
            webhook_secret_env="REPLICATE_WEBHOOK_SECRET",
            data_sent="task inputs (prompts, and images or audio given as inputs)",
        )
    )


def _headers(upstream: Upstream, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {upstream.api_key}", **extra}


def _official_name(upstream_id: str) -> str | None:
    """``owner/name`` of an official model reference, None for a version reference."""
    if ":" in upstream_id or "/" not in upstream_id:
        return None
    return upstream_id


@hookimpl
def input_schema(model: ModelConfig) -> dict[str, Any] | None:
    known = MODELS.get(model.upstream.split(":", 1)[0])
    return None if known is None else known.input_schema


@hookimpl
def estimate_usage(model: ModelConfig, request: Any) -> Usage | None:
    """The most a prediction can cost: the catalog's maxima, scaled by what the input asks
    (``num_outputs`` images, ``duration`` seconds of video, the text of a speech model)."""
    given: dict[str, Any] = getattr(request, "input", None) or {}
    outputs = given.get("num_outputs", 1) if isinstance(given.get("num_outputs"), int) else 1
    outputs = max(1, min(outputs, model.max_outputs))
    seconds = model.max_output_seconds or Decimal(0)
    duration = given.get("duration")
    if isinstance(duration, int | float) and not isinstance(duration, bool) and duration > 0:
        seconds = min(seconds, Decimal(str(duration))) if seconds else Decimal(str(duration))
    text = given.get("text") or given.get("prompt") or ""
    usage = Usage(
        images=outputs if model.modality is Modality.image else 0,
        outputs=outputs if model.modality in (Modality.video, Modality.speech) else 0,
        seconds=seconds * outputs,
        run_seconds=model.max_run_seconds or Decimal(0),
    )
    if model.modality is Modality.speech and isinstance(text, str):
        usage.characters = len(text)
    if model.modality is Modality.chat:
        max_tokens = given.get("max_tokens") or given.get("max_new_tokens")
        cap = model.max_output_tokens or 4096
        usage.output_tokens = (
            max_tokens if isinstance(max_tokens, int) and 0 < max_tokens < cap else cap
        )
        prompt = json.dumps(given, ensure_ascii=False)
        usage.input_tokens = len(prompt.encode()) // 2 + 16  # bytes/2 bounds BPE tokens above
    return usage


@hookimpl
def build_job_request(
    model: ModelConfig,
    input: dict[str, Any],
    upstream: Upstream,
    webhook_url: str | None,
    wait_seconds: int | None,
) -> httpx.Request | None:
    body: dict[str, Any] = {"input": input}
    if webhook_url:
        body["webhook"] = webhook_url
        body["webhook_events_filter"] = ["completed"]
    headers = _headers(upstream)
    if wait_seconds:
        headers["prefer"] = f"wait={max(1, min(60, wait_seconds))}"
    official = _official_name(model.upstream)
    if official is not None:
        url = f"{upstream.base_url}/models/{official}/predictions"
    else:
        url = f"{upstream.base_url}/predictions"
        body["version"] = model.upstream
    return httpx.Request("POST", url, json=body, headers=headers)


@hookimpl
def build_job_poll(model: ModelConfig, job_id: str, upstream: Upstream) -> httpx.Request | None:
    return httpx.Request(
        "GET", f"{upstream.base_url}/predictions/{job_id}", headers=_headers(upstream)
    )


@hookimpl
def build_job_cancel(model: ModelConfig, job_id: str, upstream: Upstream) -> httpx.Request | None:
    return httpx.Request(
        "POST", f"{upstream.base_url}/predictions/{job_id}/cancel", headers=_headers(upstream)
    )


def _trusted(url: str, upstream: Upstream) -> bool:
    """Replicate's own hosts get the API token; any other host gets no credentials."""
    parts, api = urlsplit(url), urlsplit(upstream.base_url)
    host = parts.hostname or ""
    if host == api.hostname:
        return parts.scheme == api.scheme
    secure = parts.scheme == "https"  # never the token in cleartext
    return secure and any(host == h or host.endswith("." + h) for h in _TRUSTED_FILE_HOSTS)


def _decimal(value: Any) -> Decimal:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return Decimal(str(value))
    return Decimal(0)


@hookimpl
def parse_job(model: ModelConfig, data: dict[str, Any], upstream: Upstream) -> Job | None:
    status = _STATUS.get(data.get("status", ""))
    if status is None or not isinstance(data.get("id"), str):
        raise UpstreamError("Replicate sent a prediction that could not be read")
    metrics = data.get("metrics") or {}
    usage = Usage(run_seconds=_decimal(metrics.get("predict_time")).quantize(Decimal("0.001")))
    job = Job(id=data["id"], status=status, usage=usage)  # type: ignore[arg-type]
    if status == "failed":
        message = str(data.get("error") or "the prediction failed")
        if any(marker in message.lower() for marker in _NSFW_MARKERS):
            job.error_code = "content_policy_violation"
        else:
            job.error_code = "upstream_failed"
        job.error_message = f"Replicate: {message[:500]}"
    if status != "succeeded":
        return job
    output = data.get("output")
    if model.modality is Modality.chat:
        job.text = "".join(output) if isinstance(output, list) else str(output or "")
        usage.input_tokens = int(metrics.get("input_token_count") or 0)
        usage.output_tokens = int(metrics.get("output_token_count") or 0)
        return job
    urls = output if isinstance(output, list) else [output]
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise UpstreamError("Replicate's output is not a file URL")
        headers = _headers(upstream) if _trusted(url, upstream) else {}
        job.files.append(httpx.Request("GET", url, headers=headers))
    if model.modality is Modality.speech:
        given = data.get("input") or {}
        text = given.get("text") or given.get("prompt") or ""
        usage.characters = int(metrics.get("input_token_count") or len(text))
    return job


@hookimpl
def verify_webhook(
    headers: Mapping[str, str], body: bytes, upstream: Upstream
) -> dict[str, Any] | None:
    if not upstream.webhook_secret or not signing.verify(upstream.webhook_secret, headers, body):
        raise PermissionDenied("The webhook signature is not valid (or its timestamp is too old)")
    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidRequest("The webhook body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The webhook body is not a prediction")
    return data


@hookimpl
def parse_error(model: ModelConfig, response: httpx.Response) -> APIError | None:
    """Replicate's RFC 7807 problems: invalid input stays a 400 naming what is wrong."""
    try:
        problem = json.loads(response.content)
    except ValueError:
        return None
    if response.status_code == 422 and isinstance(problem, dict):
        detail = str(problem.get("detail") or problem.get("title") or "invalid input")
        return InvalidRequest(f"Replicate rejected the input: {detail[:500]}", code="invalid_input")
    return None
