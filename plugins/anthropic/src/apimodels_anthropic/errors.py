"""Anthropic's errors (``{"type": "error", "error": {"type", "message"}}``, in an error
answer or as a stream's ``error`` event) as the errors the gateway answers.

Only the client's own mistakes carry Anthropic's words (``invalid_request_error``: they
name the field); the others get the gateway's, so nothing of the upstream account leaks.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from apimodels import (
    APIError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
)

PROVIDER = "anthropic"
#: Anthropic's status for "overloaded" (not an HTTP standard one).
OVERLOADED_STATUS = 529


def _retry_after(headers: httpx.Headers | None) -> dict[str, str]:
    value = headers.get("retry-after") if headers is not None else None
    return {"retry-after": value} if value else {}


def from_error(error: Any, headers: httpx.Headers | None = None) -> APIError | None:
    """The gateway's error for Anthropic's ``error`` object, or None if it is not one of
    the types Anthropic documents."""
    if not isinstance(error, dict) or not isinstance(error.get("type"), str):
        return None
    kind, message = error["type"], error.get("message")
    if kind == "invalid_request_error":
        return InvalidRequest(
            str(message or f"{PROVIDER} rejected the request"), code="upstream_rejected"
        )
    if kind == "request_too_large":
        return PayloadTooLarge(f"the request is larger than {PROVIDER} accepts")
    if kind in ("authentication_error", "permission_error"):
        # The upstream refused the gateway's own key: not the client's fault.
        return UpstreamError(
            f"{PROVIDER} rejected the gateway's credentials", code="upstream_auth_error"
        )
    if kind == "billing_error":
        return UpstreamError(
            f"{PROVIDER} refused the gateway's account (billing)", code="upstream_billing_error"
        )
    if kind == "not_found_error":
        return NotFound(f"{PROVIDER}: the model or resource was not found", code="model_not_found")
    if kind == "rate_limit_error":
        return RateLimited(
            f"{PROVIDER} is rate limiting requests; retry later", headers=_retry_after(headers)
        )
    if kind == "overloaded_error":
        return UpstreamOverloaded(
            f"{PROVIDER} is overloaded; retry shortly", headers=_retry_after(headers)
        )
    if kind == "timeout_error":
        return UpstreamTimeout(f"{PROVIDER} timed out answering")
    if kind == "api_error":
        return UpstreamError(f"{PROVIDER} failed while answering")
    return None  # a type Anthropic does not document: the status decides


def from_response(response: httpx.Response) -> APIError | None:
    """The gateway's error for an error answer; None (the core's generic mapping) when
    its body is not Anthropic's, except that 529 is always "overloaded"."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code == OVERLOADED_STATUS and not (
        isinstance(error, dict) and error.get("type") == "overloaded_error"
    ):
        error = {"type": "overloaded_error"}
    return from_error(error, response.headers)
