"""Routing around a failing upstream: a call tries its model, then its fallbacks, in order.

The routes a call may take (``plan``): the requested model's, then those the request names
in ``models`` (OpenRouter's field), then those its catalog entry lists under ``fallbacks``;
no route twice, none retired or of another modality, at most ``gateway.max_attempts``. The
hold covers the dearest of them; the call is billed once, at the price of the route that
served it, and the answer names that route (``x-apimodels-route``).

Which failures move on to the next route (``falls_through``): those another upstream may not
have: the connection, a timeout, an upstream rate limit, overload or 5xx (``retriable``
errors). Never the client's bad input, never a content-policy refusal, never an error that
a plugin marked ``retriable=False``. No attempt starts after ``gateway.fallback_seconds``.
A stream moves on only before its first chunk: the relay waits for it before answering.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ..errors import APIError, InvalidRequest
from ..schemas import UnifiedRequest
from . import dispatch
from .types import Usage

if TYPE_CHECKING:
    from .runtime import Gateway, Route

log = logging.getLogger("apimodels")
T = TypeVar("T")


@dataclass(slots=True)
class Attempt:
    """One route a call may take, with its own estimate and hold."""

    route: Route
    estimate: Usage
    hold_micros: int


def requested_models(request: UnifiedRequest) -> list[str]:
    """The ``models`` a request names (taken out: it is the gateway's, never the upstream's)."""
    extra = request.model_extra
    if not extra or "models" not in extra:
        return []
    models = extra.pop("models")
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise InvalidRequest("'models' is a list of model ids", param="models")
    return models


def plan(gateway: Gateway, route: Route, request: UnifiedRequest) -> list[Attempt]:
    """The routes a call may take, in order, each estimated (the first must be; a fallback
    that cannot price this request is left out)."""
    first = Attempt(route, *dispatch.estimate(route, request))
    named = requested_models(request)
    if not named and route.model.id not in gateway.fallbacks:
        return [first]  # the usual case: no fallback, nothing more to do
    attempts, seen = [first], {route.model.id}
    candidates: list[Route | None] = [gateway.route(m) for m in named]
    candidates += gateway.fallbacks.get(route.model.id, ())
    now = time.time()
    for other in candidates:
        if len(attempts) >= gateway.catalog.gateway.max_attempts:
            break
        if (
            other is None
            or other.model.id in seen
            or other.model.modality is not route.model.modality
        ):
            continue
        seen.add(other.model.id)
        if other.lifecycle is not None and now >= other.lifecycle.retired_from:
            continue
        try:
            attempts.append(Attempt(other, *dispatch.estimate(other, request)))
        except APIError:  # this fallback cannot take this request: not a route for it
            continue
    return attempts


def falls_through(error: BaseException) -> bool:
    """Whether another route might serve a call that failed with ``error``."""
    return isinstance(error, APIError) and error.retriable


async def first_served(
    attempts: list[Attempt],
    run: Callable[[Attempt], Awaitable[T]],
    deadline_seconds: float,
) -> tuple[Attempt, T]:
    """Run ``run`` on each attempt in turn until one succeeds; the last error otherwise."""
    deadline = time.monotonic() + deadline_seconds
    for i, attempt in enumerate(attempts):
        try:
            attempt.route.provider.ensure_available()
            return attempt, await run(attempt)
        except APIError as exc:
            last = i == len(attempts) - 1
            if last or not falls_through(exc) or time.monotonic() >= deadline:
                raise
            log.warning(
                "%s failed (%s %s); trying %s",
                attempt.route.model.id,
                exc.status,
                exc.code,
                attempts[i + 1].route.model.id,
            )
    raise AssertionError("no attempt")  # pragma: no cover  (attempts is never empty)


def route_header(attempt: Attempt) -> dict[str, str]:
    return {"x-apimodels-route": attempt.route.model.id}
