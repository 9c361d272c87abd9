"""The core's own fallback implementations, asked after every plugin (``trylast``)."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx

from ..billing.pricing import price_usage as _price_usage
from ..catalog import ModelConfig, Pricing
from ..errors import APIError, InvalidRequest, NotFound, RateLimited, UpstreamError
from ..hookspecs import hookimpl
from ..schemas import TaskRequest, UnifiedRequest
from .types import AudioStream, Usage


@hookimpl(trylast=True)
def estimate_usage(model: ModelConfig, request: UnifiedRequest) -> Usage | None:
    """A job's hold from the model's catalog maxima, when its plugin has no estimate."""
    if not isinstance(request, TaskRequest):
        return None
    return Usage(
        images=model.max_outputs if model.pricing.per_image is not None else 0,
        outputs=model.max_outputs,
        seconds=(model.max_output_seconds or Decimal(0)) * model.max_outputs,
        run_seconds=model.max_run_seconds or Decimal(0),
    )


@hookimpl(trylast=True)
def price_usage(model: ModelConfig, pricing: Pricing, usage: Usage) -> Decimal:
    return _price_usage(pricing, usage, model.id)


def upstream_message(response: httpx.Response) -> str | None:
    """The human message of a JSON error body in the common shapes, if any."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        if isinstance(error, dict):
            msg = error.get("message") or error.get("detail") or error.get("title")
            return str(msg) if msg else None
        if isinstance(error, str):
            return error
    return None


@hookimpl(trylast=True)
def parse_error(model: ModelConfig, response: httpx.Response) -> APIError:
    status = response.status_code
    name = model.provider
    if status in (401, 403):
        # The upstream refused the gateway's own credentials: not the client's fault.
        return UpstreamError(
            f"{name} rejected the gateway's credentials", code="upstream_auth_error"
        )
    if status == 402:
        # The upstream wants payment from the gateway's own account (OpenRouter's credits
        # ran out): the operator's to fix, not the client's; another route may serve.
        return UpstreamError(
            f"{name} refused the gateway's account (payment required)",
            code="upstream_payment_required",
        )
    if status == 404:
        return NotFound(upstream_message(response) or f"{name}: not found", code="model_not_found")
    if status == 429:
        headers = (
            {"retry-after": response.headers["retry-after"]}
            if "retry-after" in response.headers
            else {}
        )
        return RateLimited(f"{name} is rate limiting requests; retry later", headers=headers)
    if 400 <= status < 500:
        message = upstream_message(response) or f"{name} rejected the request"
        return InvalidRequest(
            message, code="upstream_rejected", status=status if status != 413 else 400
        )
    return UpstreamError(f"{name} failed with HTTP {status}")


@hookimpl(trylast=True)
def parse_audio_stream(response: httpx.Response) -> AudioStream:
    return AudioStream(response.headers.get("content-type") or "application/octet-stream")
