"""The HTTP client side: one pooled connection set per provider, and sending with retries
that are safe.

Plugins build ``httpx.Request`` objects and read ``httpx.Response`` objects; underneath,
the core sends them with aiohttp's connection pool. In our benchmark httpx's own pool fell
from 1,825 to 430 requests per second between 4 and 32 concurrent connections, and going
through httpx's client on top of aiohttp still cost about 65 us per call; this adapter
keeps httpx's types for plugins and pays neither.

An answer read whole is read up to the provider's ``max_response_bytes``: past it the
connection is dropped and the call fails (502), so an upstream cannot fill the gateway's
memory.

A request is retried only when it cannot have reached the upstream (the connection was
never made), or when it is idempotent (GET/HEAD) and the upstream answered a transient
502/503/504. A POST that may have reached the upstream is never re-sent: it could be
billed twice there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx

from ..catalog import ProviderConfig
from ..errors import UpstreamError, UpstreamTimeout

_RETRY_STATUSES = {502, 503, 504}
_IDEMPOTENT = {"GET", "HEAD"}
# Hop-by-hop and encoding headers that no longer describe the bytes handed to plugins.
_DROPPED = {"content-encoding", "transfer-encoding", "content-length", "connection", "keep-alive"}


class ResponseTooLarge(Exception):
    """An upstream answer longer than the provider's ``max_response_bytes``."""


class _Body(httpx.AsyncByteStream):
    """A streamed upstream body, with aiohttp's failures as httpx's."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        self._response.release()


def _headers(response: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in response.raw_headers if k.decode().lower() not in _DROPPED]


class _ReadResponse(httpx.Response):
    """An ``httpx.Response`` around a body aiohttp has already read and decoded.

    ``httpx.Response(content=...)`` would run the bytes through httpx's decoders and
    headers machinery again: about 20 us a call. Set as ``read()`` leaves it instead.
    """

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, request: httpx.Request
    ) -> None:
        super().__init__(status, headers=headers, stream=httpx.ByteStream(body), request=request)
        self._content = body


class UpstreamClient:
    """A provider's connection pool (created lazily, inside the running event loop)."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.timeout
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.config.max_connections, keepalive_timeout=30.0, ttl_dns_cache=300
            )
            # trust_env=False: never route upstream traffic through an ambient proxy setting.
            # No cookie jar: a cookie an upstream sets while serving one account must never
            # ride along on another account's request.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """One attempt; aiohttp's failures come back as httpx's exception classes."""
        try:
            content = request.content
        except httpx.RequestNotRead:  # multipart bodies are built lazily
            content = request.read()
        try:
            response = await self.session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=content or None,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc
        if stream:
            return httpx.Response(
                response.status, headers=_headers(response), stream=_Body(response), request=request
            )
        try:
            body = await self._read(response)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc
        except ResponseTooLarge:
            response.close()  # never hand a half-read connection back to the pool
            raise
        finally:
            response.release()
        return _ReadResponse(response.status, _headers(response), body, request)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, up to ``max_response_bytes``."""
        limit = self.config.max_response_bytes
        if (response.content_length or 0) > limit:
            raise ResponseTooLarge
        # The common case, one read and no copies; a compressed body is counted as it is
        # inflated instead (its declared length says nothing of what it inflates to).
        if response.content_length is not None and "content-encoding" not in response.headers:
            return await response.read()
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise ResponseTooLarge
        return bytes(body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def send(
    client: UpstreamClient,
    request: httpx.Request,
    *,
    provider: str,
    max_retries: int,
    stream: bool = False,
) -> httpx.Response:
    """Send ``request``; map transport failures to 502/504. The caller closes streams."""
    attempt = 0
    while True:
        try:
            response = await client.send(request, stream=stream)
        except httpx.ConnectError as exc:  # never reached the upstream: safe to send again
            if attempt >= max_retries:
                raise UpstreamError(
                    f"could not connect to {provider}", code="upstream_unreachable"
                ) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"{provider} did not answer in time") from exc
        except ResponseTooLarge:
            raise too_large(provider, client.config.max_response_bytes) from None
        except httpx.TransportError as exc:
            raise UpstreamError(
                f"connection to {provider} failed", code="upstream_connection_error"
            ) from exc
        else:
            if (
                response.status_code in _RETRY_STATUSES
                and request.method in _IDEMPOTENT
                and attempt < max_retries
            ):
                await response.aclose()
            else:
                return response
        attempt += 1
        await asyncio.sleep(min(0.05 * 2**attempt, 1.0))


def too_large(provider: str, limit: int) -> UpstreamError:
    return UpstreamError(
        f"{provider} sent an answer larger than the gateway reads ({limit} bytes)",
        code="upstream_response_too_large",
    )
