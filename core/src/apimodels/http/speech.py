"""Speech audio relayed to the client as the upstream sends it, billed exactly.

Reuses the chat streams' machinery (``dispatch.Relay``: a pump task that owns the upstream
response, a queue to the client, a bounded drain when the client leaves, ``on_end`` called
once) with raw bytes instead of server-sent events. Billing (see docs/api.md, "Speech"):

- priced per character, the price is known before the call: the hold is the charge, sent
  in ``x-apimodels-cost``;
- priced per token (gpt-4o-mini-tts), the upstream streams events (``AudioStream.events``)
  and reports its usage in the last one: that usage is charged (checked against the
  hold's estimate, like any upstream's). The client gets the audio's bytes, or the events
  with the cost in the last one's usage when it asked for ``stream_format: "sse"``;
- the upstream sent the whole audio: charged, also when the client left before the end
  (the upstream bills the whole text either way; the pump drains it, bounded);
- the upstream failed, cut the stream, sent nothing or an impossible usage: nothing is
  charged. Before the first byte the client gets an ordinary error response; after it,
  the connection is closed without the body's terminating chunk, so no client mistakes a
  cut for the end.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .. import fastjson
from ..billing.biller import Bill, FreeBill
from ..billing.money import format_usd
from ..errors import APIError, InvalidRequest, UpstreamError, UpstreamTimeout
from ..providers.dispatch import Relay, StreamResult, charge, send_streaming
from ..providers.framing import sse_events
from ..providers.runtime import Route
from ..providers.types import AudioStream, Usage
from ..schemas import SpeechRequest, UnifiedRequest

log = logging.getLogger("apimodels")


class AudioRelay(Relay):
    """A :class:`dispatch.Relay` of speech. The queue carries byte chunks (audio, or the
    client's server-sent events), then None at a clean end or the error that cut the stream.

    ``usage`` and ``cost_micros`` are the charge known up front; None when the upstream
    reports it in its last event (``head.events``)."""

    def __init__(
        self,
        route: Route,
        request: UnifiedRequest,
        response: httpx.Response,
        on_end: Callable[[StreamResult], asyncio.Future[bool] | None],
        head: AudioStream,
        estimate: Usage,
        usage: Usage | None = None,
        cost_micros: int | None = None,
    ) -> None:
        self.head, self.usage, self.cost_micros = head, usage, cost_micros
        self.sse = wants_events(request)
        super().__init__(route, request, response, on_end, estimate)

    what = "audio stream"

    async def _relay(self, result: StreamResult) -> None:
        if self.head.events:
            await self._relay_events(result)
        else:
            await self._relay_bytes(result)

    def _past_drain(self) -> None:
        if self._drain_until is not None and time.monotonic() > self._drain_until:
            name = self.route.provider.name
            raise UpstreamTimeout(f"{name} was still sending long after the client left")

    def _send(self, result: StreamResult, chunk: bytes) -> None:
        if chunk and not result.client_gone:
            result.chunks += 1
            self._queue.put_nowait(chunk)

    async def _relay_bytes(self, result: StreamResult) -> None:
        name = self.route.provider.name
        prefix, heard = self.head.prefix, False
        async for chunk in self.response.aiter_raw():
            self._past_drain()
            if not chunk:
                continue
            heard = True
            if prefix:
                chunk, prefix = prefix + chunk, b""
            self._send(result, chunk)
        if not heard:
            raise UpstreamError(f"{name} sent no audio")
        result.usage, result.cost_micros = self.usage, self.cost_micros

    async def _relay_events(self, result: StreamResult) -> None:
        """Unified speech events (``AudioStream``): their audio, or the events themselves;
        the done event's usage is priced by ``Relay._event`` (its cost added to it)."""
        provider = self.route.provider
        name, heard, done = provider.name, False, False
        limit = provider.config.max_response_bytes
        async for event, data in sse_events(self.response, limit, name):
            self._past_drain()
            chunk, done = self._event(event, data)
            if chunk is not None:
                audio = _audio(chunk, name)
                heard = heard or bool(audio)
                self._send(result, _sse(chunk) if self.sse else audio)
            if done:
                break
        if not done:
            raise UpstreamError(f"{name} ended the audio stream before it was complete")
        if not heard:
            raise UpstreamError(f"{name} sent no audio")
        if result.usage is None:  # a done event without usage: charged its estimate
            result.usage, result.cost_micros = charge(self.route, None, self.estimate)

    def _end(self, result: StreamResult) -> None:
        self._queue.put_nowait(result.error)  # type: ignore[arg-type]

    async def next(self) -> bytes | APIError | None:
        """The next chunk; None at a clean end, the error at a cut."""
        try:
            return await self._queue.get()  # type: ignore[return-value]
        except (asyncio.CancelledError, GeneratorExit):
            self.abandon()
            raise


def wants_events(request: UnifiedRequest) -> bool:
    """Whether the client asked for speech events rather than the audio's bytes."""
    return isinstance(request, SpeechRequest) and request.stream_format == "sse"


def _audio(event: dict[str, Any], provider: str) -> bytes:
    """The audio a unified speech event carries (none but a delta's)."""
    if event.get("type") != "speech.audio.delta":
        return b""
    try:
        return base64.b64decode(event.get("audio") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise UpstreamError(f"{provider} sent audio that is not base64") from None


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + fastjson.dumps(event) + b"\n\n"


def settle_audio(bill: Bill | FreeBill, result: StreamResult) -> asyncio.Future[bool] | None:
    """Charge the whole text once the upstream delivered the whole audio (committed with
    its neighbours', after the last chunk); else nothing (the end waits for the row)."""
    if result.usage is not None and result.cost_micros is not None:
        bill.succeed(result.usage, result.cost_micros)
        return None
    return bill.fail(result.error)


async def open_audio_stream(
    route: Route, request: UnifiedRequest, estimate: Usage, bill: Bill | FreeBill
) -> AudioResponse:
    """Send a speech request and start relaying its audio. Errors before the upstream's
    answer raise (the caller releases the hold); after it, ``settle_audio`` settles."""
    provider = route.provider
    response = await send_streaming(route, request)
    try:
        head = provider.hooks.parse_audio_stream(
            model=route.model, request=request, response=response
        )
        if wants_events(request) and not head.events:  # the plugin should have refused it
            raise InvalidRequest(
                f"{route.model.id} does not stream speech events: leave out stream_format",
                param="stream_format",
                code="unsupported_value",
            )
        usage, cost = (None, None) if head.events else charge(route, head.usage, estimate)
    except BaseException as exc:
        await response.aclose()
        if isinstance(exc, Exception) and not isinstance(exc, APIError):
            # an answer the plugin cannot read is the upstream's failure
            raise UpstreamError(f"{provider.name} sent a response that could not be read") from exc
        raise
    relay = AudioRelay(
        route,
        request,
        response,
        lambda result: settle_audio(bill, result),
        head,
        estimate,
        usage,
        cost,
    )
    # A price known up front goes in a header; a usage reported at the end does not.
    headers = {} if cost is None else {"x-apimodels-cost": format_usd(cost)}
    return AudioResponse(relay, headers)


class AudioResponse(Response):
    """Sends the relay's bytes as they come. An error before the first byte is answered as
    an ordinary JSON error; after it, the response ends without its last chunk. Stops
    reading (and lets the relay drain, bounded) when the client leaves."""

    def __init__(self, relay: AudioRelay, headers: dict[str, str]) -> None:
        super().__init__(
            media_type=relay.head.content_type,
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self.relay = relay
        del self.headers["content-length"]  # streamed: chunked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            first = await self.relay.next()
            if isinstance(first, APIError) or first is None:
                error = first or UpstreamError(f"{self.relay.route.provider.name} sent no audio")
                body = json.dumps(error.body(), separators=(",", ":")).encode()
                await Response(body, error.status, error.headers, "application/json")(
                    scope, receive, send
                )
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                await self._relay(first, send)
                group.cancel_scope.cancel()
        finally:
            self.relay.abandon()  # a no-op when the relay finished

    async def _relay(self, first: bytes, send: Send) -> None:
        chunk: bytes | APIError | None = first
        while isinstance(chunk, bytes):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await self.relay.next()
        if chunk is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # else: cut. Returning without the last message makes the server drop the
        # connection mid-body, which every HTTP client reports as an incomplete answer.
