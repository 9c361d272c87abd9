"""One call through the gateway, after authentication and validation:

estimate -> build the upstream request -> send -> map errors -> normalize -> price.

The plugin hooks do the provider-specific parts; this module owns the order and the rule
that a failure anywhere costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .. import fastjson
from ..billing.money import to_micros, usd_number
from ..billing.pricing import usage_ceiling, usage_problem
from ..errors import APIError, UpstreamError, UpstreamTimeout
from ..schemas import UnifiedRequest
from .runtime import Route
from .types import Output, Usage
from .upstream import send, too_large

log = logging.getLogger("apimodels")


@dataclass(slots=True)
class Priced:
    output: Output
    usage: Usage  # as the upstream reported it (checked), or the estimate when it did not
    cost_micros: int


def price(route: Route, usage: Usage) -> int:
    """Micro-USD for a usage at the route's catalog prices, rounded once."""
    amount = route.provider.hooks.price_usage(
        model=route.model, pricing=route.model.pricing, usage=usage
    )
    return to_micros(amount)


def charge(route: Route, usage: Usage | None, estimate: Usage) -> tuple[Usage, int]:
    """The usage an upstream reported, checked, and its price: an answer without usage is
    charged its estimate; a usage that is negative, inconsistent or more than the request
    can use (``pricing.usage_ceiling``) is an unreadable answer, never a price (502)."""
    if usage is None:
        return estimate, price(route, estimate)
    problem = usage_problem(usage, usage_ceiling(route.model, estimate, route.priced))
    if problem is not None:
        log.warning("%s reported an impossible usage: %s", route.provider.name, problem)
        raise UpstreamError(
            f"{route.provider.name} reported a usage this request cannot have used",
            code="upstream_usage_invalid",
        )
    return usage, price(route, usage)


def estimate(route: Route, request: UnifiedRequest) -> tuple[Usage, int]:
    """The most a request can use, and its price: the hold."""
    usage = route.provider.hooks.estimate_usage(model=route.model, request=request)
    if usage is None:
        usage = Usage()
    return usage, price(route, usage)


def _upstream_request(route: Route, request: UnifiedRequest) -> httpx.Request:
    provider = route.provider
    built = provider.hooks.build_request(
        model=route.model, request=request, upstream=provider.upstream
    )
    if built is None:
        raise UpstreamError(
            f"provider {provider.name} cannot serve this request", code="not_supported"
        )
    return built


#: The most of an upstream's error answer the gateway reads (the plugin maps it from this).
ERROR_BYTES = 64 * 1024


async def raise_for_status(route: Route, response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        response.content  # noqa: B018  read whole already (and capped): nothing more to read
    except httpx.ResponseNotRead:  # a stream: its first ERROR_BYTES, never the rest
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) >= ERROR_BYTES:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        response = httpx.Response(
            response.status_code,
            headers=response.headers,
            content=bytes(body[:ERROR_BYTES]),
            request=response.request,
        )
    raise upstream_error(route, response)


def upstream_error(route: Route, response: httpx.Response) -> APIError:
    """The client's error for an upstream error response: the plugin's mapping, with the
    upstream key scrubbed from it should the upstream have echoed it back."""
    error: APIError = route.provider.hooks.parse_error(model=route.model, response=response)
    secret = route.provider.upstream.api_key
    if secret and secret in error.message:
        error.message = error.message.replace(secret, "***")
    return error


async def call(route: Route, request: UnifiedRequest, estimate: Usage) -> Priced:
    """A non-streaming call: the normalized output and its cost (``charge``)."""
    provider = route.provider
    upstream_request = _upstream_request(route, request)
    assert provider.client is not None
    response = await send(
        provider.client,
        upstream_request,
        provider=provider.name,
        max_retries=provider.config.max_retries,
    )
    await raise_for_status(route, response)
    try:
        output = provider.hooks.parse_response(
            model=route.model, request=request, response=response
        )
    except APIError:
        raise
    except Exception as exc:  # an answer the plugin cannot read is the upstream's failure
        raise UpstreamError(f"{provider.name} sent a response that could not be read") from exc
    if output is None:
        raise UpstreamError(f"{provider.name} sent a response that could not be read")
    return Priced(output, *charge(route, output.usage, estimate))


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


#: How long the gateway keeps reading an upstream stream after its client left, to learn
#: the final usage.
DRAIN_SECONDS = 60.0

_background: set[asyncio.Task[None]] = set()


@dataclass(slots=True)
class StreamResult:
    """What a stream turned out to be, filled in as it runs (for billing and logs)."""

    usage: Usage | None = None
    cost_micros: int | None = None
    chunks: int = 0
    error: APIError | None = None
    client_gone: bool = False


class Relay:
    """Relays one upstream server-sent-event stream to the client, chunk by chunk.

    A pump task reads the upstream and queues each normalized chunk for the client. The
    pump, not the client's request, owns the upstream stream: if the client leaves (or
    its task is cancelled), the pump keeps reading for at most ``DRAIN_SECONDS`` to learn
    the final usage. ``on_end`` is called exactly once, by the pump, with the
    :class:`StreamResult`; the client's last event is sent after it is settled.
    """

    def __init__(
        self,
        route: Route,
        request: UnifiedRequest,
        response: httpx.Response,
        on_end: Callable[[StreamResult], asyncio.Future[bool] | None],
        estimate: Usage,
    ) -> None:
        self.route = route
        self.request = request
        self.response = response
        self.on_end = on_end
        self.estimate = estimate
        self.result = StreamResult()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._drain_until: float | None = None
        self._pump = asyncio.get_running_loop().create_task(self._run())
        _background.add(self._pump)
        self._pump.add_done_callback(_background.discard)

    def _event(self, data: str) -> dict[str, Any] | None:
        try:
            event = self.route.provider.hooks.parse_stream_event(
                model=self.route.model, request=self.request, data=data
            )
        except APIError:
            raise
        except Exception as exc:
            raise UpstreamError(
                f"{self.route.provider.name} sent a malformed stream event"
            ) from exc
        if event is None:
            return None
        if event.usage is not None:
            self.result.usage, self.result.cost_micros = charge(
                self.route, event.usage, self.estimate
            )
            if event.chunk is not None and isinstance(event.chunk.get("usage"), dict):
                event.chunk["usage"]["cost"] = usd_number(self.result.cost_micros)
        return event.chunk

    async def _run(self) -> None:
        """Pump the upstream into the queue; settle once, whatever happens; then end."""
        result, name, what = self.result, self.route.provider.name, self.what
        try:
            await self._relay(result)
        except httpx.TimeoutException:
            result.error = UpstreamTimeout(f"{name} stopped sending in time")
        except httpx.HTTPError:
            result.error = UpstreamError(f"{name} ended the {what} before it was complete")
        except APIError as exc:
            result.error = exc
        except Exception as exc:  # never leave a stream unsettled
            log.error("relay of %s failed: %s", name, type(exc).__name__)
            result.error = UpstreamError(f"{name} {what} could not be relayed")
        finally:
            try:
                with contextlib.suppress(Exception):  # closing must not keep the bill open
                    await self.response.aclose()
            finally:  # nor must a cancellation while closing (a bill left open pins credits)
                settled = self.on_end(result)
            if settled is not None:  # the last event goes out once the bill is committed
                await asyncio.shield(settled)  # never raises: failures are logged by the bill
            self._end(result)

    #: What is relayed, as error messages name it.
    what = "stream"

    async def _relay(self, result: StreamResult) -> None:
        """Read the upstream's events into the queue (raise to end the stream in error)."""
        name = self.route.provider.name
        done = False
        limit = self.route.provider.config.max_response_bytes
        async for line in _lines(self.response, limit, name):
            if self._drain_until is not None and time.monotonic() > self._drain_until:
                break  # the client left long ago; stop waiting for the usage
            if not line.startswith("data:"):
                continue  # comments, event names, keep-alives
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = self._event(data)
            if chunk is not None and not result.client_gone:
                result.chunks += 1
                self._queue.put_nowait(_sse(fastjson.dumps(chunk)))
        if not done and not result.client_gone:
            raise UpstreamError(f"{name} ended the stream before it was complete")

    def _end(self, result: StreamResult) -> None:
        """The client's last event (after the settle): the error, or ``[DONE]``."""
        if result.error is not None:
            self._queue.put_nowait(_sse(fastjson.dumps(result.error.body())))
        else:
            self._queue.put_nowait(b"data: [DONE]\n\n")
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while (item := await self._queue.get()) is not None:
                yield item
        except (asyncio.CancelledError, GeneratorExit):
            self.abandon()
            raise

    def abandon(self) -> None:
        """The client is gone (or never read): the pump drains the upstream, bounded."""
        if self._pump.done() or self.result.client_gone:
            return
        self.result.client_gone = True
        self._drain_until = time.monotonic() + DRAIN_SECONDS


async def _lines(response: httpx.Response, limit: int, provider: str) -> AsyncIterator[str]:
    """A stream's lines (ended by LF, CRLF or CR, as SSE allows), none longer than ``limit``
    bytes: a line is held in memory until its end arrives."""
    pending = bytearray()
    async for chunk in response.aiter_raw():
        if b"\r" in chunk:  # a CRLF cut between chunks only adds an empty line: harmless
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        start = 0
        end = chunk.find(b"\n")
        while end != -1:
            pending += chunk[start:end]
            if len(pending) > limit:
                raise too_large(provider, limit)
            yield pending.decode("utf-8", "replace")
            pending.clear()
            start, end = end + 1, chunk.find(b"\n", end + 1)
        pending += chunk[start:]  # appended, never copied whole: linear in the line's length
        if len(pending) > limit:
            raise too_large(provider, limit)
    if pending:
        yield pending.decode("utf-8", "replace")


async def open_stream(
    route: Route,
    request: UnifiedRequest,
    on_end: Callable[[StreamResult], asyncio.Future[bool] | None],
    estimate: Usage,
) -> Relay:
    """Start a streaming call. Errors before the first byte raise (and reach the client as a
    normal error response); after that they end the stream with an error event."""
    return Relay(route, request, await send_streaming(route, request), on_end, estimate)


async def send_streaming(route: Route, request: UnifiedRequest) -> httpx.Response:
    """Send a request whose answer is read as a stream; an error status raises (mapped)."""
    provider = route.provider
    assert provider.client is not None
    response = await send(
        provider.client,
        _upstream_request(route, request),
        provider=provider.name,
        max_retries=provider.config.max_retries,
        stream=True,
    )
    await raise_for_status(route, response)
    return response
