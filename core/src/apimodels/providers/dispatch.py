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
from .framing import READERS
from .keys import PooledKey
from .runtime import Route
from .types import Output, Usage
from .upstream import send

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


def _upstream_request(
    route: Route, request: UnifiedRequest
) -> tuple[httpx.Request, PooledKey | None]:
    """The upstream request, signed with one of the provider's keys (and which one)."""
    provider = route.provider
    key = provider.keys.pick() if provider.keys is not None else None
    try:
        built = provider.hooks.build_request(
            model=route.model,
            request=request,
            upstream=provider.upstream if key is None else key.upstream,
        )
    except APIError as exc:
        raise scrubbed(route, exc) from None
    if built is None:
        raise UpstreamError(
            f"provider {provider.name} cannot serve this request", code="not_supported"
        )
    if provider.config.headers:  # an instance's own headers (registry.toml)
        built.headers.update(provider.config.headers)
    return built, key


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
    """The client's error for an upstream error response: the plugin's mapping, scrubbed."""
    return scrubbed(route, route.provider.hooks.parse_error(model=route.model, response=response))


def scrubbed(route: Route, error: APIError) -> APIError:
    """``error`` without the provider's keys, should the upstream have echoed one back: every
    error a hook returns or raises passes here before a client can see it."""
    for secret in route.provider.secrets():
        if secret in error.message:
            error.message = error.message.replace(secret, "***")
    return error


def _refused(route: Route, key: PooledKey | None, error: APIError) -> None:
    """Rest the key an upstream refused (several keys only)."""
    if key is not None and route.provider.keys is not None:
        route.provider.keys.refused(key, error)


async def call(route: Route, request: UnifiedRequest, estimate: Usage) -> Priced:
    """A non-streaming call: the normalized output and its cost (``charge``)."""
    provider = route.provider
    upstream_request, key = _upstream_request(route, request)
    assert provider.client is not None
    response = await send(
        provider.client,
        upstream_request,
        provider=provider.name,
        max_retries=provider.config.max_retries,
    )
    try:
        await raise_for_status(route, response)
        output = provider.hooks.parse_response(
            model=route.model, request=request, response=response
        )
    except APIError as exc:  # mapped, or an error the upstream reported in a 2xx body
        _refused(route, key, exc)
        raise scrubbed(route, exc) from None
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


class ClientStream:
    """How a relayed stream is written for its client: Chat Completions chunks as
    server-sent events, ended by ``data: [DONE]``, or by an ``{"error": ...}`` event when
    the stream fails after its first byte (the OpenAI SDKs raise it as an ``APIError``).

    Other front ends (the Responses and Messages APIs) subclass it to write their own
    events from the same chunks; one instance serves one stream, so it may keep state.
    """

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """The bytes of one normalized chunk (b"": nothing to send for it)."""
        return _sse(fastjson.dumps(chunk))

    def end(self, result: StreamResult) -> bytes:
        """The last bytes, once the stream is settled: its error, or its normal end."""
        if result.error is not None:
            return _sse(fastjson.dumps(result.error.body()))
        return b"data: [DONE]\n\n"


class Relay:
    """Relays one upstream stream to the client, event by event.

    A pump task reads the upstream in its provider's framing (``framing``) and queues each
    normalized chunk for the client. The pump, not the client's request, owns the upstream
    stream: if the client leaves (or its task is cancelled), the pump keeps reading for at
    most ``DRAIN_SECONDS`` to learn the final usage. ``on_end`` is called exactly once, by
    the pump, with the :class:`StreamResult`; the client's last event is sent after the
    future it returns, if any (a failed stream's row). The plugin's ``parse_stream_event``
    gets one ``state`` dict per stream.
    """

    def __init__(
        self,
        route: Route,
        request: UnifiedRequest,
        response: httpx.Response,
        on_end: Callable[[StreamResult], asyncio.Future[bool] | None],
        estimate: Usage,
        client: ClientStream | None = None,
    ) -> None:
        self.route = route
        self.request = request
        self.response = response
        self.on_end = on_end
        self.estimate = estimate
        self.client = client or ClientStream()
        self.result = StreamResult()
        self.state: dict[str, Any] = {}
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._begun = asyncio.get_running_loop().create_future()
        self._drain_until: float | None = None
        self._pump = asyncio.get_running_loop().create_task(self._run())
        _background.add(self._pump)
        self._pump.add_done_callback(_background.discard)

    async def begun(self) -> None:
        """Wait for the first chunk (or the end): until then nothing is sent to the client,
        so an error the upstream reports before its first chunk is still a plain HTTP error
        (raised here), and the stream could still be sent elsewhere."""
        try:
            await asyncio.shield(self._begun)
        except BaseException:
            self.abandon()
            raise
        error = self.result.error
        if self.result.chunks == 0 and error is not None:
            raise error

    def _event(self, event: str | None, data: str | bytes) -> tuple[dict[str, Any] | None, bool]:
        route = self.route
        try:
            parsed = route.provider.hooks.parse_stream_event(
                model=route.model, request=self.request, data=data, event=event, state=self.state
            )
        except APIError as exc:  # an error the upstream reported inside the stream
            raise scrubbed(route, exc) from None
        except Exception as exc:
            raise UpstreamError(f"{route.provider.name} sent a malformed stream event") from exc
        if parsed is None:
            return None, False
        if parsed.usage is not None:
            self.result.usage, self.result.cost_micros = charge(route, parsed.usage, self.estimate)
            if parsed.chunk is not None and isinstance(parsed.chunk.get("usage"), dict):
                parsed.chunk["usage"]["cost"] = usd_number(self.result.cost_micros)
        return parsed.chunk, parsed.done

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
            if settled is not None:  # the last event goes out once that is committed
                await asyncio.shield(settled)  # never raises: failures are logged by the bill
            self._end(result)

    #: What is relayed, as error messages name it.
    what = "stream"

    async def _relay(self, result: StreamResult) -> None:
        """Read the upstream's events into the queue (raise to end the stream in error)."""
        provider = self.route.provider
        framing = provider.spec.stream_format
        done = False
        events = READERS[framing](self.response, provider.config.max_response_bytes, provider.name)
        async for event, data in events:
            if self._drain_until is not None and time.monotonic() > self._drain_until:
                break  # the client left long ago; stop waiting for the usage
            if framing == "sse" and data == "[DONE]":  # OpenAI's terminal event
                done = True
                break
            chunk, done = self._event(event, data)
            if chunk is not None and not result.client_gone:
                result.chunks += 1
                self._queue.put_nowait(self.client.chunk(chunk))
                if not self._begun.done():
                    self._begun.set_result(None)
            if done:
                break
        else:
            done = done or framing == "bytes"  # a byte stream is whole at its end
        if not done and not result.client_gone:
            raise UpstreamError(f"{provider.name} ended the stream before it was complete")

    def _end(self, result: StreamResult) -> None:
        """The client's last event (after the settle), then the end of the queue."""
        self._queue.put_nowait(self.client.end(result))
        self._queue.put_nowait(None)
        if not self._begun.done():
            self._begun.set_result(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while (item := await self._queue.get()) is not None:
                if item:
                    yield item
        except (asyncio.CancelledError, GeneratorExit):
            self.abandon()
            raise

    def disconnect(self) -> None:
        """The client left: end its events now (the pump drains the upstream, bounded)."""
        self.abandon()
        self._queue.put_nowait(None)

    def abandon(self) -> None:
        """The client is gone (or never read): the pump drains the upstream, bounded."""
        if self._pump.done() or self.result.client_gone:
            return
        self.result.client_gone = True
        self._drain_until = time.monotonic() + DRAIN_SECONDS


async def open_stream(
    route: Route,
    request: UnifiedRequest,
    on_end: Callable[[StreamResult], asyncio.Future[bool] | None],
    estimate: Usage,
    client: ClientStream | None = None,
) -> Relay:
    """Start a streaming call and wait for its first chunk. Errors until then raise, and
    settling the call is then the caller's (it may try another route, or answer the error,
    free); after that they end the stream with ``client``'s error event."""

    def settle(result: StreamResult) -> asyncio.Future[bool] | None:
        if result.error is not None and not result.chunks and not result.client_gone:
            return None  # raised by begun(): the caller's to settle
        return on_end(result)

    relay = Relay(route, request, await send_streaming(route, request), settle, estimate, client)
    await relay.begun()
    return relay


async def send_streaming(route: Route, request: UnifiedRequest) -> httpx.Response:
    """Send a request whose answer is read as a stream; an error status raises (mapped)."""
    provider = route.provider
    assert provider.client is not None
    upstream_request, key = _upstream_request(route, request)
    response = await send(
        provider.client,
        upstream_request,
        provider=provider.name,
        max_retries=provider.config.max_retries,
        stream=True,
    )
    try:
        await raise_for_status(route, response)
    except APIError as exc:
        _refused(route, key, exc)
        raise
    return response
