"""Prometheus metrics: what this gateway served, what its upstreams did, what it charged,
and what its database holds (``GET /metrics``; every metric is listed in
docs/self-hosting.md, "Metrics").

The cost on the path every call takes is a few dictionary lookups and increments: each
label set is resolved (``.labels()``, several microseconds) once per process, then its
children are kept by a small key, (path, model, status) for a request.

With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` names a folder where each
process writes its values (prometheus-client's multiprocess mode; ``apimodels serve
--workers N`` sets one up), and a scrape of any worker sums them all. What the database
holds (holds pending, unfinished tasks) is read from it at each scrape instead: the same
figure from every worker, whichever process made it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import sqlite_utils
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..billing.ledger import Ledger
from ..catalog import ProviderConfig
from ..errors import AuthenticationError
from ..providers.upstream import ResponseTooLarge, UpstreamClient
from ..schemas import ENDPOINTS
from ..tasks.store import Finish, TaskStore
from .logs import current_request
from .tracing import Tracing

if TYPE_CHECKING:
    from ..policy.audit import Violation
    from ..policy.chain import Policy
    from ..providers.runtime import Gateway

__all__ = [
    "CountedTaskStore",
    "MeasuredClient",
    "Metrics",
    "RequestObserver",
    "multiprocess_dir",
]

#: Request latencies, from a cached answer to a long stream (seconds).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Upstream latencies, until the answer's headers (a stream) or its whole body.
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
#: A request to a path no route serves, labelled as one (the path itself is the client's).
UNMATCHED = "unmatched"
#: What the model endpoints' fast lane answers without Starlette's routing.
_MODEL_PATHS = frozenset(f"/v1/{path}" for path in ENDPOINTS)


def multiprocess_dir() -> str | None:
    """The folder of prometheus-client's multiprocess mode, when it is on (it is decided
    when prometheus-client is imported, from the same variable)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """One gateway's metrics and the registry ``/metrics`` reads."""

    def __init__(self, db: sqlite_utils.Database, *, token: str | None = None) -> None:
        folder = multiprocess_dir()
        # In multiprocess mode the values live in files; a scrape collects them from there.
        own = None if folder else CollectorRegistry()
        self.token = token
        self.requests = Counter(
            "apimodels_requests",
            "HTTP requests answered, by route, model, provider and status.",
            ["route", "model", "provider", "status"],
            registry=own,
        )
        self.request_seconds = Histogram(
            "apimodels_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (a stream's last byte).",
            ["route", "model", "provider", "status"],
            buckets=REQUEST_BUCKETS,
            registry=own,
        )
        self.upstream_seconds = Histogram(
            "apimodels_upstream_duration_seconds",
            "Upstream answers' latency, by provider: until the headers of a stream, the "
            "whole body otherwise.",
            ["provider"],
            buckets=UPSTREAM_BUCKETS,
            registry=own,
        )
        self.upstream_errors = Counter(
            "apimodels_upstream_errors",
            "Upstream requests that failed, by provider and reason: the HTTP status of an "
            "error answer (400-599), or connect, timeout, connection, too_large.",
            ["provider", "reason"],
            registry=own,
        )
        self.charged = Counter(
            "apimodels_credits_charged_micros",
            "Credits charged for calls (synchronous and streamed), micro-USD.",
            ["model", "provider"],
            registry=own,
        )
        self.tasks_finished = Counter(
            "apimodels_tasks_finished",
            "Tasks that ended, by status (succeeded, failed, canceled).",
            ["status"],
            registry=own,
        )
        self.webhooks = Counter(
            "apimodels_webhook_deliveries",
            "Attempts to deliver a task's webhook, by outcome: delivered, retrying, failed "
            "(given up).",
            ["outcome"],
            registry=own,
        )
        self.refusals = Counter(
            "apimodels_policy_refusals",
            "Requests refused for content, by source (policy: the gateway's; upstream: the "
            "provider's) and category.",
            ["source", "category"],
            registry=own,
        )
        self.registry = own or CollectorRegistry()
        if folder:
            MultiProcessCollector(self.registry, folder)
        self.registry.register(DatabaseCollector(db))
        self._requests: dict[tuple[str, str | None, int], tuple[Any, Any]] = {}
        self._charged: dict[tuple[str, ...], Any] = {}

    # --- the hooks -----------------------------------------------------------------------

    def request(self, scope: Scope, status: int, seconds: float) -> None:
        """Count an answered request (``RequestObserver``)."""
        route = scope.get("route")  # set by Starlette's router, with its path template
        if route is not None:
            path = route.path
        else:
            path = scope["path"] if scope["path"] in _MODEL_PATHS else UNMATCHED
        served = scope["state"].get("route")  # the model route a model endpoint resolved
        key = (path, served.model.id if served is not None else None, status)
        children = self._requests.get(key)
        if children is None:
            model, provider = (served.model.id, served.model.provider) if served else ("", "")
            labels = (path, model, provider, str(status))
            children = self._requests[key] = (
                self.requests.labels(*labels),
                self.request_seconds.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)

    def charge(self, billed_as: tuple[str, ...], micros: int) -> None:
        """Count credits charged for a call (``Biller.on_charge``; ``Route.billed_as``)."""
        child = self._charged.get(billed_as)
        if child is None:
            child = self._charged[billed_as] = self.charged.labels(billed_as[0], billed_as[1])
        child.inc(micros)

    def count_refusals(self, chain: Policy) -> None:
        """Count every refusal the policy audits (its own and upstreams', requests'
        and tasks'): its one door, ``refuse``, counts before it records."""
        record = chain.refuse
        refusals = self.refusals

        def refuse(violation: Violation) -> None:
            refusals.labels(violation.source, violation.category).inc()
            record(violation)

        chain.refuse = refuse  # type: ignore[method-assign]

    def measure_upstreams(self, gateway: Gateway, tracing: Tracing | None = None) -> None:
        """Give every provider a connection pool that measures its calls (at startup, once
        the gateway has opened its pools, before any call), and traces them if asked."""
        for provider in gateway.providers.values():
            if provider.client is not None and not isinstance(provider.client, MeasuredClient):
                provider.client = MeasuredClient(provider.config, provider.name, self, tracing)

    # --- the endpoint --------------------------------------------------------------------

    async def endpoint(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus's text format; with a token set, only for its bearer."""
        if self.token is not None:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                raise AuthenticationError(
                    "GET /metrics needs the metrics token: Authorization: Bearer <token>",
                    code="invalid_metrics_token",
                )
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestObserver:
    """ASGI middleware around the whole app: each request's log context (its request id on
    every log line), its metrics (route, model, provider, status, duration) and, when
    tracing is on, its span."""

    def __init__(self, app: ASGIApp, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.tracing is None:
            await self._observe(scope, receive, send)
            return
        with self.tracing.request(scope["method"], scope["path"]) as span:
            try:
                await self._observe(scope, receive, send)
            finally:
                state = scope["state"]
                served = state.get("route")
                span.set_attribute("apimodels.request_id", state.get("request_id", ""))
                if served is not None:
                    span.set_attribute("apimodels.model", served.model.id)
                    span.set_attribute("apimodels.provider", served.model.provider)
                self.tracing.answered(span, state.get("status", 500))

    async def _observe(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.setdefault("state", {})
        current_request.set(state)
        started = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            status = status or 499  # the client left before any answer
            raise
        finally:
            state["status"] = status or 500
            self.metrics.request(scope, status or 500, time.perf_counter() - started)


class MeasuredClient(UpstreamClient):
    """A provider's connection pool that times each upstream answer and counts failures."""

    def __init__(
        self,
        config: ProviderConfig,
        provider: str,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        super().__init__(config)
        self._tracing = tracing
        self._seconds = metrics.upstream_seconds.labels(provider)
        self._errors = metrics.upstream_errors
        self._provider = provider
        self._failed: dict[str, Any] = {}

    def _failure(self, reason: str) -> None:
        child = self._failed.get(reason)
        if child is None:
            child = self._failed[reason] = self._errors.labels(self._provider, reason)
        child.inc()

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        if self._tracing is None:
            return await self._measured(request, stream)
        with self._tracing.upstream(self._provider, request.headers) as span:
            response = await self._measured(request, stream)
            self._tracing.answered(span, response.status_code)
            return response

    async def _measured(self, request: httpx.Request, stream: bool) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await super().send(request, stream=stream)
        except httpx.ConnectError:
            self._failure("connect")
            raise
        except httpx.TimeoutException:
            self._failure("timeout")
            raise
        except ResponseTooLarge:
            self._failure("too_large")
            raise
        except httpx.TransportError:
            self._failure("connection")
            raise
        self._seconds.observe(time.perf_counter() - started)
        if response.status_code >= 400:
            self._failure(str(response.status_code))
        return response


class CountedTaskStore(TaskStore):
    """The task store, counting tasks as they end and webhooks as they are attempted."""

    def __init__(self, db: sqlite_utils.Database, ledger: Ledger, metrics: Metrics) -> None:
        super().__init__(db, ledger)
        self._finished = metrics.tasks_finished
        self._webhooks = metrics.webhooks

    def finish(self, task_id: str, end: Finish, *, billing: bool = True) -> bool:
        ended = super().finish(task_id, end, billing=billing)
        if ended:
            self._finished.labels(end.status).inc()
        return ended

    def webhook_attempted(
        self, task_id: str, attempts: int, *, state: str, retry_in: float, error: str | None
    ) -> None:
        super().webhook_attempted(task_id, attempts, state=state, retry_in=retry_in, error=error)
        self._webhooks.labels("retrying" if state == "pending" else state).inc()


class DatabaseCollector(Collector):
    """What the database holds at the time of a scrape, for every process at once. Each
    query reads a partial index (a few rows), never a whole table."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        query: Callable[..., Any] = self.db.execute
        holds, held = query(
            "SELECT COUNT(*), COALESCE(SUM(hold_micros), 0) FROM usage WHERE hold_state = 'pending'"
        ).fetchone()
        reservations, reserved = query(
            "SELECT COUNT(*), COALESCE(SUM(amount_micros), 0) FROM reservations"
        ).fetchone()
        unfinished = dict(
            query(
                "SELECT status, COUNT(*) FROM tasks WHERE status IN ('queued', 'running')"
                " GROUP BY status"
            ).fetchall()
        )
        webhooks = query("SELECT COUNT(*) FROM tasks WHERE webhook_state = 'pending'").fetchone()[0]
        yield GaugeMetricFamily(
            "apimodels_holds_pending",
            "Calls and tasks holding credits now (a hold per call that is not settled yet).",
            value=holds,
        )
        yield GaugeMetricFamily(
            "apimodels_reservations",
            "Credits set aside by gateway processes for accounts' calls in flight (rows).",
            value=reservations,
        )
        held_micros = GaugeMetricFamily(
            "apimodels_held_micros",
            "Credits held now, micro-USD: by holds, and by processes' reservations.",
            labels=["kind"],
        )
        held_micros.add_metric(["holds"], held)
        held_micros.add_metric(["reservations"], reserved)
        yield held_micros
        tasks = GaugeMetricFamily(
            "apimodels_tasks", "Unfinished tasks, by status (queued, running).", labels=["status"]
        )
        for status in ("queued", "running"):
            tasks.add_metric([status], unfinished.get(status, 0))
        yield tasks
        yield GaugeMetricFamily(
            "apimodels_webhooks_pending",
            "Tasks whose webhook waits for its (next) delivery attempt.",
            value=webhooks,
        )
