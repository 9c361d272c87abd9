"""A lean HTTP/1.1 client for the upstream calls: keep-alive connections on asyncio
protocols, responses parsed by httptools (the parser uvicorn serves with).

The gateway's upstream calls need little of a general client: no redirects, cookies,
proxies or authentication schemes, one request at a time per connection. What they do need
is cheap: a request leaves in one write (request line, headers and body), a response is
parsed in C, and a connection waits in the pool for the next call. Measured against
aiohttp and httpx on the gateway's path, see docs/performance.md.

An idle connection is reused only while the upstream has not closed it (at its keep-alive
timeout, say): ``Connection.reusable`` checks the socket, not only what the event loop has
read of it, since a busy loop reads an upstream's end late.

Timeouts: ``connect_timeout`` bounds opening a connection (TLS included); ``read_timeout``
bounds each wait for the upstream's next bytes (as aiohttp's ``sock_read``), so a slow but
steady stream lives on and a silent one ends. Compressed answers (gzip, deflate) are
inflated, and counted against the caller's limit as they are.
"""

from __future__ import annotations

import asyncio
import select
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator

import httptools

__all__ = [
    "BodyTooLarge",
    "ConnectFailed",
    "Connection",
    "Inflater",
    "Pool",
    "ProtocolFailed",
    "ReadFailed",
    "ReadTimedOut",
]


class ConnectFailed(Exception):
    """No connection could be made: the request was never sent."""


class ReadFailed(Exception):
    """The connection failed (reset, closed early) after the request may have been sent."""


class ProtocolFailed(ReadFailed):
    """The upstream's bytes are not HTTP/1.1 (or an encoding this client cannot read)."""


class ReadTimedOut(Exception):
    """The upstream sent nothing for ``read_timeout`` seconds."""


class BodyTooLarge(Exception):
    """A body read whole grew past the caller's limit (the connection is dropped)."""


#: A stream's bytes read ahead of its reader before the socket stops being read.
_HIGH_WATER = 1 << 20
_BODYLESS = frozenset({"HEAD"})


class Inflater:
    """A ``content-encoding`` undone as bytes arrive."""

    def __init__(self, encoding: str) -> None:
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = zlib.decompressobj()
        else:
            raise ProtocolFailed(f"unsupported content-encoding {encoding!r}")
        self._deflate = encoding == "deflate"
        self._started = False

    def feed(self, data: bytes, limit: int) -> bytes:
        """``data`` inflated; more than ``limit`` bytes stop it (the caller's too large)."""
        try:
            if self._deflate and not self._started:  # "deflate" is zlib, or raw deflate
                self._started = True
                try:
                    return self._z.decompress(data, limit + 1)
                except zlib.error:
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._z.decompress(data, limit + 1)
        except zlib.error as exc:
            raise ProtocolFailed("the compressed answer is corrupt") from exc


class Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its response parsed as it comes."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wake_on_body = False
        self._limit = 0  # the most of a body read whole; 0: streamed, the reader's to bound
        self._until_eof = False  # a body without length or chunks ends with the connection
        self._head_only = False
        self._paused = False
        self._last_read = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._readable = select.poll()  # polled before each reuse (``reusable``)
        self._readable.register(transport.get_extra_info("socket"), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        if self.idle_since:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFailed(f"the upstream's answer is not HTTP/1.1 ({exc})"))
            self.close()

    def eof_received(self) -> bool:
        return False  # closes the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and self._until_eof and not self.complete:
            self.on_message_complete()  # its body was everything up to the end
        elif not self.complete:
            self._fail(ReadFailed("the upstream closed the connection"))
        self.pool.lost(self)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        self.headers_done = True
        framed = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length" or (
                lower == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                framed = True
        bodyless = self.status in (204, 304) or 100 <= self.status < 200
        self._until_eof = not framed and not bodyless
        if self._until_eof:
            self.keep_alive = False
        self._wake()
        if self._head_only:  # no body follows, whatever the headers say
            self.keep_alive = False
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.complete or self._error is not None:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._limit and self._buffered > self._limit:
            self._fail(BodyTooLarge())
            self.close()
            return
        if self._wake_on_body:  # streamed: its reader takes the chunks as they come
            if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self.complete:
            return
        self.complete = True
        self._wake()

    # the caller's side

    def send(self, head: bytes, body: bytes, method: str, *, limit: int) -> None:
        """Write the request; its answer is read whole, up to ``limit`` bytes, or streamed
        (``limit`` 0: each chunk wakes the reader)."""
        assert self.transport is not None
        self.idle_since = 0.0
        self._head_only = method in _BODYLESS
        self._wake_on_body = not limit
        self._limit = limit
        self._last_read = self.loop.time()
        self.transport.write(head + body if body else head)

    async def wait(self) -> None:
        """Until there is something new to read (headers, a body chunk, the end), or raise
        the connection's failure."""
        if self._error is not None:
            raise self._error
        if self._timer is None:
            self._arm()
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    @property
    def error(self) -> BaseException | None:
        """Why the connection failed, if it did (a body past its limit included, which may
        have arrived whole in one read, before anyone waited)."""
        return self._error

    async def head(self) -> None:
        while not self.headers_done:
            await self.wait()

    def take(self) -> list[bytes]:
        """The body bytes read so far (and the socket read again, if it had paused)."""
        chunks = list(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return chunks

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        while True:
            for chunk in self.take():
                yield chunk
            if self.complete:
                return
            await self.wait()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._stop_timer()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _arm(self) -> None:
        self._timer = self.loop.call_at(self._last_read + self.pool.read_timeout, self._check)

    def _check(self) -> None:
        """The read timeout. Armed by a request's first wait and left to run out rather
        than cancelled when the answer is complete (arming and cancelling a timer per
        request cost as much as building the request): the next request on the
        connection finds it armed, and is timed by it from its own last read."""
        self._timer = None
        if self.complete or self.closed or self.idle_since:  # nothing is being waited for
            return
        if self._paused:  # the reader is behind, not the upstream
            self._last_read = self.loop.time()
        if self.loop.time() - self._last_read >= self.pool.read_timeout:
            self._fail(ReadTimedOut(f"no answer in {self.pool.read_timeout:g} s"))
            self.close()
        else:  # bytes came meanwhile: wait from the last of them
            self._arm()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def reusable(self) -> bool:
        """Whether this idle connection can carry the next request. The upstream closes idle
        connections at its keep-alive timeout (5 s for uvicorn): if its end reached the
        socket since the event loop last read it, or was read but not yet told to this
        connection (``connection_lost`` comes a turn later), a request written now is lost,
        a 502 that is never sent again (a POST), the more often the busier the loop. Bytes
        nobody asked for make it unusable too."""
        transport = self.transport
        return (
            not self.closed
            and transport is not None
            and not transport.is_closing()  # (then its socket is open: safe to poll)
            and not self._readable.poll(0)  # one poll(2) that does not wait
        )

    def release(self) -> None:
        """The caller is done: back to the pool if the response was read whole and the
        connection may be kept, else closed."""
        if self.complete and self.keep_alive and not self.closed and self._error is None:
            self._reset()
            self.pool.idle(self)
        else:
            self.close()

    def close(self) -> None:
        self._stop_timer()
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool.lost(self)


class Pool:
    """Keep-alive connections to any number of origins, at most ``limit`` open at once (a
    caller waits for one to free up)."""

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        keepalive_seconds: float = 30.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_seconds = keepalive_seconds
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._open: set[Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tls: ssl.SSLContext | None = None

    async def acquire(self, scheme: str, host: str, port: int) -> Connection:
        key = (scheme, host, port)
        while True:
            idle = self._idle.get(key)
            now = self.loop.time()
            while idle:
                connection = idle.pop()
                if now - connection.idle_since < self.keepalive_seconds and connection.reusable():
                    return connection
                connection.close()
            if len(self._open) < self.limit:
                return await self._connect(key)
            if not self._evict_idle():
                waiter = self.loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    def _evict_idle(self) -> bool:
        """Close one idle connection to another origin to make room; False if none."""
        for connections in self._idle.values():
            if connections:
                connections.pop(0).close()
                return True
        return False

    async def _connect(self, key: tuple[str, str, int]) -> Connection:
        scheme, host, port = key
        connection = Connection(self, key)
        self._open.add(connection)
        tls = self._context() if scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(
                    lambda: connection, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._open.discard(connection)
            self._wake_one()
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._open.discard(connection)
            self._wake_one()
            connection.close()
            raise
        return connection

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def idle(self, connection: Connection) -> None:
        connection.idle_since = self.loop.time()
        self._idle.setdefault(connection.key, []).append(connection)
        self._wake_one()

    def lost(self, connection: Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
