"""OpenTelemetry tracing of a call, when ``[gateway] tracing = true`` and the packages are
installed (``apimodels[tracing]``): a server span for each request the gateway answers
(``POST /v1/chat/completions``, with its status, model, provider and request id) and a
client span for each upstream exchange under it (``upstream openai``), whose W3C
``traceparent`` goes to the upstream, so a provider's own traces can join the caller's.

Where spans go is OpenTelemetry's own configuration: a tracer provider the process already
has (``opentelemetry-instrument apimodels serve``) is used as it is; otherwise one is set up
here exporting over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the standard ``OTEL_*``
variables apply). Everything is imported once, at startup; with tracing off the request
path pays one ``is None`` test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("apimodels")

#: The instrumentation's name, as OpenTelemetry's APIs ask for one.
NAME = "apimodels"


class Tracing:
    """The gateway's spans, on OpenTelemetry's API (imported by ``start_tracing`` only)."""

    def __init__(self) -> None:
        from opentelemetry import propagate, trace

        self.tracer = trace.get_tracer(NAME)
        self._server = trace.SpanKind.SERVER
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._inject = propagate.inject

    @contextmanager
    def request(self, method: str, path: str) -> Iterator[Any]:
        """A request's server span (its attributes are set as the answer becomes known)."""
        attributes = {"http.request.method": method, "url.path": path}
        with self.tracer.start_as_current_span(
            f"{method} {path}", kind=self._server, attributes=attributes
        ) as span:
            yield span

    @contextmanager
    def upstream(self, provider: str, headers: MutableMapping[str, str]) -> Iterator[Any]:
        """An upstream exchange's client span; its context goes out in ``headers``."""
        with self.tracer.start_as_current_span(
            f"upstream {provider}", kind=self._client, attributes={"apimodels.provider": provider}
        ) as span:
            self._inject(headers)
            yield span

    def answered(self, span: Any, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self._error)


def start_tracing() -> Tracing | None:
    """The gateway's tracing, or None (with a warning) without OpenTelemetry installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning(
            "[gateway] tracing is on but OpenTelemetry is not installed: "
            "pip install 'apimodels[tracing]'"
        )
        return None
    if type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider":  # none set yet
        _export_over_otlp(trace)
    return Tracing()


def _export_over_otlp(trace: Any) -> None:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "[gateway] tracing is on but no span exporter is installed: pip install "
            "'apimodels[tracing]' (or run under opentelemetry-instrument); spans are dropped"
        )
        return
    provider = TracerProvider(resource=Resource.create({"service.name": NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
