"""The HTTP client side: one pooled connection set per provider, and sending with retries
that are safe.

Plugins build ``httpx.Request`` objects and read ``httpx.Response`` objects; underneath,
the core sends them with its own lean HTTP/1.1 client (``http1``): one write per request,
responses parsed by httptools, keep-alive connections. Against aiohttp behind the same
httpx-shaped adapter it took a third less of the gateway's CPU per call; httpx's own pool
fell from 1,825 to 430 requests per second between 4 and 32 concurrent connections (see
docs/performance.md). No redirects are followed, no proxy setting from the environment is
used, and no cookie an upstream sets while serving one account rides along on another's.

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

import httpx

from ..catalog import ProviderConfig
from ..errors import UpstreamError, UpstreamTimeout
from .http1 import (
    BodyTooLarge,
    ConnectFailed,
    Connection,
    Inflater,
    Pool,
    ProtocolFailed,
    ReadFailed,
    ReadTimedOut,
)

_RETRY_STATUSES = {502, 503, 504}
_IDEMPOTENT = {"GET", "HEAD"}
# Hop-by-hop and encoding headers that no longer describe the bytes handed to plugins.
_DROPPED = {
    b"content-encoding",
    b"transfer-encoding",
    b"content-length",
    b"connection",
    b"keep-alive",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Request headers this client writes itself from the body it sends.
_FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}


class ResponseTooLarge(Exception):
    """An upstream answer longer than the provider's ``max_response_bytes``."""


def _translated(exc: BaseException) -> httpx.TransportError:
    """The lean client's failure as the httpx exception plugins and ``send`` know."""
    if isinstance(exc, ReadTimedOut):
        return httpx.ReadTimeout(str(exc))
    if isinstance(exc, ConnectFailed):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, ProtocolFailed):
        return httpx.RemoteProtocolError(str(exc))
    return httpx.ReadError(str(exc))


_FAILURES = (ReadFailed, ReadTimedOut, ConnectFailed, OSError)


class _Body(httpx.AsyncByteStream):
    """A streamed upstream body, its connection returned to the pool once read whole."""

    def __init__(self, connection: Connection, encoding: bytes | None, limit: int) -> None:
        self._connection = connection
        self._inflater = _inflater(encoding)
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        inflater = self._inflater
        try:
            async for chunk in self._connection.chunks():
                if inflater is not None:
                    chunk = inflater.feed(chunk, self._limit)
                yield chunk
        except _FAILURES as exc:
            raise _translated(exc) from exc

    async def aclose(self) -> None:
        self._connection.release()


def _inflater(encoding: bytes | None) -> Inflater | None:
    if encoding is None or encoding.strip().lower() in (b"identity", b""):
        return None
    return Inflater(encoding.strip().lower().decode("latin-1"))


def _headers(connection: Connection) -> tuple[list[tuple[bytes, bytes]], bytes | None, int]:
    """The response's headers for plugins, its content-encoding, its content-length (-1:
    not given)."""
    kept = []
    encoding = None
    length = -1
    for name, value in connection.headers:
        lower = name.lower()
        if lower in _DROPPED:
            if lower == b"content-encoding":
                encoding = value
            elif lower == b"content-length" and value.strip().isdigit():
                length = int(value)
            continue
        kept.append((name, value))
    return kept, encoding, length


class _ReadResponse(httpx.Response):
    """An ``httpx.Response`` around a body already read (and inflated).

    ``httpx.Response(content=...)`` would run the bytes through httpx's decoders and
    headers machinery again: about 20 us a call. Set as ``read()`` leaves it instead.
    """

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, request: httpx.Request
    ) -> None:
        super().__init__(status, headers=headers, stream=httpx.ByteStream(body), request=request)
        self._content = body


def _head(request: httpx.Request, content: bytes) -> bytes:
    """The request line and headers, framed for ``content`` (a Content-Length always,
    never chunks: the body is whole). A CR or LF in a header is refused (it would be a
    header of the attacker's making)."""
    url = request.url
    lines = [
        b"%s: %s\r\n" % (name, value)
        for name, value in request.headers.raw
        if name.lower() not in _FRAMING
    ]
    if content or request.method not in _IDEMPOTENT:
        lines.append(b"content-length: %d\r\n" % len(content))
    block = b"".join(lines)
    if block.count(b"\n") != len(lines) or block.count(b"\r") != len(lines):
        raise httpx.LocalProtocolError("a request header holds a line break")
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (request.method.encode(), url.raw_path, block)


class UpstreamClient:
    """A provider's connection pool (created lazily, inside the running event loop)."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._pool: Pool | None = None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(
                limit=self.config.max_connections,
                connect_timeout=self.config.connect_timeout,
                read_timeout=self.config.timeout,
            )
        return self._pool

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """One attempt; failures come back as httpx's exception classes."""
        try:
            content = request.content
        except httpx.RequestNotRead:  # multipart bodies are built lazily
            content = request.read()
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        head = _head(request, content)
        try:
            connection = await self.pool.acquire(
                scheme, url.host, url.port or _DEFAULT_PORTS[scheme]
            )
        except ConnectFailed as exc:
            raise httpx.ConnectError(str(exc)) from exc
        limit = self.config.max_response_bytes
        try:
            connection.send(head, content, request.method, limit=0 if stream else limit)
            await connection.head()
            headers, encoding, length = _headers(connection)
            if stream:
                body = _Body(connection, encoding, limit)
                return httpx.Response(
                    connection.status, headers=headers, stream=body, request=request
                )
            if length > limit:
                raise ResponseTooLarge
            data = await _read(connection, _inflater(encoding), limit)
        except BodyTooLarge:
            connection.close()
            raise ResponseTooLarge from None
        except _FAILURES as exc:
            connection.close()
            raise _translated(exc) from exc
        except BaseException:  # too large, cancelled...: never pooled half read
            connection.close()
            raise
        status = connection.status
        connection.release()
        return _ReadResponse(status, headers, data, request)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


async def _read(connection: Connection, inflater: Inflater | None, limit: int) -> bytes:
    """The whole body (the connection stops it past ``limit`` bytes read; inflated, it is
    counted again as it inflates)."""
    while not connection.complete:
        await connection.wait()
    if connection.error is not None:
        raise connection.error
    chunks = connection.take()
    if inflater is None:
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    body = bytearray()
    for chunk in chunks:
        body += inflater.feed(chunk, limit)
        if len(body) > limit:
            raise ResponseTooLarge
    return bytes(body)


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
