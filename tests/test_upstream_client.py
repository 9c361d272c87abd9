"""The lean HTTP/1.1 client under the upstream calls (providers/http1.py), against a raw
socket server on 127.0.0.1: what the fault suite through the gateway does not reach."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

import httpx
import pytest

from apimodels.catalog import ProviderConfig
from apimodels.providers.upstream import ResponseTooLarge, UpstreamClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def _run(handler: Handler, test: Callable[[str], Awaitable[None]]) -> None:
    """Serve ``handler`` (each connection closed when it returns or the client leaves)
    while ``test`` runs against it."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await test(f"http://127.0.0.1:{port}")
            await asyncio.wait_for(asyncio.gather(*handlers), 5)

    asyncio.run(main())


def _client(**settings: object) -> UpstreamClient:
    return UpstreamClient(ProviderConfig(package="x", **settings))  # type: ignore[arg-type]


def test_keep_alive_and_an_idle_connection_the_upstream_closed() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(2):  # two answers per connection, then it closes it
            head = await _request(reader)
            body = head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async def test(origin: str) -> None:
        client = _client()
        for i in range(5):
            r = await client.send(httpx.Request("POST", f"{origin}/{i}?q=1", json={"i": i}))
            assert (r.status_code, r.content) == (200, f"/{i}?q=1".encode())
            await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        await client.aclose()
        assert connections == 3

    _run(handler, test)


def test_a_compressed_answer_is_inflated_and_bounded() -> None:
    small, big = gzip.compress(b'{"ok": true}'), gzip.compress(b"x" * 100_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await _request(reader)
            body = big if b"/big" in head else small
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await writer.drain()

    async def test(origin: str) -> None:
        client = _client(max_response_bytes=10_000)
        r = await client.send(httpx.Request("GET", f"{origin}/small"))
        assert r.json() == {"ok": True} and "content-encoding" not in r.headers
        with pytest.raises(ResponseTooLarge):  # 100 kB once inflated, from 200 bytes
            await client.send(httpx.Request("GET", f"{origin}/big"))
        await client.aclose()

    _run(handler, test)


def test_a_line_break_in_a_header_is_never_sent() -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(1000))

    async def test(origin: str) -> None:
        client = _client()
        request = httpx.Request("GET", origin, headers={"x-a": "1\r\nx-injected: yes"})
        with pytest.raises(httpx.LocalProtocolError):
            await client.send(request)
        await client.aclose()

    _run(handler, test)
    assert received == []
