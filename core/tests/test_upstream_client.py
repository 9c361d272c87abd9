"""The core's upstream client over a real socket: what plugins get back, and what is never
carried from one call to the next."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trustme
from aiohttp import web

from apimodels.catalog import ProviderConfig
from apimodels.errors import UpstreamError
from apimodels.providers import dispatch
from apimodels.providers.framing import lines as _lines
from apimodels.providers.types import Upstream
from apimodels.providers.upstream import ResponseTooLarge, UpstreamClient, send


async def _site(app: web.Application) -> tuple[web.AppRunner, int]:
    """``app`` served on an ephemeral port of 127.0.0.1."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _serve(seen: list[dict[str, str]]) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        seen.append({"cookie": request.headers.get("cookie", ""), "body": await request.text()})
        body = gzip.compress(json.dumps({"ok": True, "n": len(seen)}).encode())
        response = web.Response(body=body, content_type="application/json")
        response.headers["content-encoding"] = "gzip"
        response.set_cookie("session", f"account-{len(seen)}")
        return response

    app = web.Application()
    app.router.add_post("/v1/echo", handle)
    runner, port = await _site(app)
    # A host name, not an IP: aiohttp's default cookie jar ignores cookies from IP hosts.
    return runner, f"http://localhost:{port}/v1"


def test_a_json_request_is_what_httpx_would_build() -> None:
    upstream = Upstream("acme", "https://api.acme.test/v1", "k")
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo"}], "n": 1}
    ours = upstream.json_request("POST", "/chat/completions", body, {"authorization": "Bearer k"})
    theirs = httpx.Request(
        "POST", upstream.url("/chat/completions"), headers={"authorization": "Bearer k"}, json=body
    )
    assert ours.content == theirs.content
    assert sorted(ours.headers.multi_items()) == sorted(theirs.headers.multi_items())
    assert (ours.method, ours.url) == (theirs.method, theirs.url)
    # Put together without httpx's constructor, it is what one leaves: read, and the same.
    assert vars(ours).keys() == vars(theirs).keys()
    assert (ours.read(), ours.extensions) == (theirs.read(), theirs.extensions)
    assert b"".join(ours.stream) == theirs.content
    # A plugin's own content type wins, as with httpx; the length is always the body's.
    typed = upstream.json_request(
        "POST", "/x", body, {"content-type": "application/vnd.acme+json", "content-length": "1"}
    )
    assert typed.headers["content-type"] == "application/vnd.acme+json"
    assert typed.headers["content-length"] == str(len(typed.content))
    # Header names are case-insensitive: one of each, as httpx.Request(json=...) sends.
    capitalised = upstream.json_request(
        "POST", "/x", body, {"Content-Type": "application/json", "Host": "api.acme.test"}
    )
    names = [name.lower() for name, _ in capitalised.headers.multi_items()]
    assert sorted(names) == ["content-length", "content-type", "host"]


def test_answers_are_read_decoded_and_no_cookie_crosses_calls() -> None:
    async def scenario() -> None:
        seen: list[dict[str, str]] = []
        runner, base_url = await _serve(seen)
        config = ProviderConfig(package="acme", base_url=base_url)
        client = UpstreamClient(config)
        upstream = Upstream("acme", base_url, "k")
        try:
            for n in (1, 2):
                request = upstream.json_request("POST", "/echo", {"n": n}, {})
                response = await client.send(request)
                assert response.status_code == 200
                assert response.json() == {"ok": True, "n": n}  # gunzipped
                assert response.text == response.content.decode()
                assert await response.aread() == response.content
                assert "content-encoding" not in response.headers  # no longer true of it
                assert response.headers["content-type"].startswith("application/json")
                assert response.request is request
                await response.aclose()
        finally:
            await client.aclose()
            await runner.cleanup()
        assert [s["body"] for s in seen] == ['{"n":1}', '{"n":2}']
        assert seen[1]["cookie"] == ""  # the first answer's Set-Cookie was not kept

    asyncio.run(scenario())


def test_an_answer_longer_than_max_response_bytes_is_refused() -> None:
    """Declared, chunked or compressed: past the cap the call fails (502), and the
    connection is not reused half-read."""
    limit = 64 * 1024
    big = b'{"pad": "' + b"x" * (limit + 10) + b'"}'

    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/json")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(big), 4096):
            await response.write(big[i : i + 4096])
        await response.write_eof()
        return response

    async def bomb(request: web.Request) -> web.Response:
        response = web.Response(body=gzip.compress(big), content_type="application/json")
        response.headers["content-encoding"] = "gzip"  # 200 bytes that inflate past the cap
        return response

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    async def main() -> None:
        app = web.Application()
        for name, handler in [("declared", declared), ("chunked", chunked), ("bomb", bomb)]:
            app.router.add_get(f"/{name}", handler)
        app.router.add_get("/small", small)
        runner, port = await _site(app)
        config = ProviderConfig(package="x", max_response_bytes=limit)
        client = UpstreamClient(config)
        try:
            for name in ("declared", "chunked", "bomb"):
                request = httpx.Request("GET", f"http://127.0.0.1:{port}/{name}")
                try:
                    await send(client, request, provider="acme", max_retries=0)
                except UpstreamError as exc:
                    assert exc.code == "upstream_response_too_large", name
                    assert exc.status == 502 and "acme" in exc.message
                else:
                    raise AssertionError(f"{name}: a {len(big)}-byte answer was read")
            # Under the cap, and on the same pool afterwards: read as usual.
            ok = await send(
                client,
                httpx.Request("GET", f"http://127.0.0.1:{port}/small"),
                provider="acme",
                max_retries=0,
            )
            assert ok.json() == {"ok": True}
        finally:
            await client.aclose()
            await runner.cleanup()

    asyncio.run(main())


def test_a_streamed_error_answer_is_read_only_up_to_error_bytes() -> None:
    """An upstream's error answer on a stream is mapped from its first bytes: the rest of a
    huge body is never read (review finding: it was read whole, past any cap)."""
    pulled = 0

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            nonlocal pulled
            for _ in range(2560):  # 10 MiB
                pulled += 1
                yield b'{"error": {"message": "' + b"x" * 4096

    seen: list[httpx.Response] = []

    def parse_error(model: Any, response: httpx.Response) -> UpstreamError:
        seen.append(response)
        return UpstreamError("acme failed")

    hooks = SimpleNamespace(parse_error=parse_error)
    upstream = Upstream("acme", "http://127.0.0.1", "k")
    route: Any = SimpleNamespace(
        model=None, provider=SimpleNamespace(hooks=hooks, upstream=upstream, secrets=lambda: [])
    )
    response = httpx.Response(500, stream=Endless(), request=httpx.Request("GET", "http://x"))
    with pytest.raises(UpstreamError):
        asyncio.run(dispatch.raise_for_status(route, response))
    assert len(seen[0].content) == dispatch.ERROR_BYTES
    assert pulled <= dispatch.ERROR_BYTES // 4096 + 1


def test_stream_lines_end_at_lf_crlf_or_cr_and_long_ones_are_refused() -> None:
    def stream(*chunks: bytes) -> httpx.Response:
        class Chunks(httpx.AsyncByteStream):
            async def __aiter__(self):  # type: ignore[no-untyped-def]
                for chunk in chunks:
                    yield chunk

        return httpx.Response(200, stream=Chunks())

    async def lines(response: httpx.Response, limit: int = 100) -> list[str]:
        return [line async for line in _lines(response, limit, "acme")]

    assert asyncio.run(lines(stream(b"data: a\r\n", b"data: b\n\nda", b"ta: c"))) == [
        "data: a",
        "data: b",
        "",
        "data: c",
    ]
    assert asyncio.run(lines(stream(b"x\ry\r", b"\nz"))) == ["x", "y", "", "z"]
    assert asyncio.run(lines(stream(b"\xe2\x82", b"\xac\n"))) == ["€"]
    with pytest.raises(UpstreamError) as caught:
        asyncio.run(lines(stream(b"a" * 60, b"a" * 60, b"\n")))
    assert caught.value.code == "upstream_response_too_large"


# The lean HTTP/1.1 client (providers/http1.py) against a raw socket server: keep-alive,
# inflation and header injection, what the fault suite through the gateway does not reach.

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


Closing = Callable[[str, threading.Event, threading.Event], Awaitable[None]]


def _run_closing(test: Closing) -> None:
    """Run ``test`` against a blocking upstream in a thread that answers each connection's
    one POST with the connection's number, and closes its first connection (at its
    keep-alive timeout, say) once told to: ``test(origin, close, closed)``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    close, closed = threading.Event(), threading.Event()

    def serve() -> None:
        with listener:
            for number in (1, 2):
                try:
                    conn, _ = listener.accept()
                except TimeoutError:  # the second call never came: it went into the first
                    return
                with conn:
                    conn.settimeout(5)
                    data = b""
                    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                        data += conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n%d" % number)
                    if number == 1:
                        close.wait(5)
                closed.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        asyncio.run(test(f"http://127.0.0.1:{listener.getsockname()[1]}", close, closed))
    finally:
        close.set()
        thread.join(10)


async def _post(client: UpstreamClient, origin: str) -> bytes:
    request = httpx.Request("POST", f"{origin}/v1/audio/speech", json={"input": "a"})
    return (await send(client, request, provider="acme", max_retries=0)).content


def test_a_connection_the_upstream_closed_unseen_by_a_busy_loop_is_not_reused() -> None:
    """The upstream closes an idle connection while the event loop is busy elsewhere: its
    end is in the socket, not yet read, when the next call takes a connection. That call
    goes on a new one: written into the closed one it would fail (a 502, as a POST is never
    sent again), as calls of tests/faults/test_overdraft.py did under CPU load."""

    async def test(origin: str, close: threading.Event, closed: threading.Event) -> None:
        client = _client()
        assert await _post(client, origin) == b"1"
        close.set()
        assert closed.wait(5)  # the loop blocked meanwhile, as a busy one is
        assert await _post(client, origin) == b"2"
        await client.aclose()

    _run_closing(test)


def test_a_connection_whose_end_was_read_is_not_reused_before_it_is_told() -> None:
    """The loop has read the upstream's end of an idle connection (its transport closes)
    but not yet told the connection (``connection_lost`` comes a turn later): the next
    call does not take it either."""

    async def test(origin: str, close: threading.Event, closed: threading.Event) -> None:
        client = _client()
        assert await _post(client, origin) == b"1"
        [connection] = client.pool._open
        close.set()
        assert closed.wait(5)
        assert connection.transport is not None
        while not connection.transport.is_closing():  # one turn of the loop at a time
            await asyncio.sleep(0)
        assert not connection.closed  # not told yet
        assert await _post(client, origin) == b"2"
        await client.aclose()

    _run_closing(test)


def test_the_read_timeout_times_each_request_on_a_kept_connection() -> None:
    """One connection: answered, idle in the pool past the read timeout (still kept), a
    steady answer slower in total than the timeout, then one that stops: only the last
    times out, and only after the timeout from its own last byte."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            head = await _request(reader)
            if b"/drip" in head:  # 0.4 s in all, a byte every 0.1 s
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
                for _ in range(4):
                    await asyncio.sleep(0.1)
                    writer.write(b"x")
            elif b"/hang" in head:
                await reader.read()  # until the client gives up
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def test(origin: str) -> None:
        client = _client(timeout=0.25)
        loop = asyncio.get_running_loop()
        assert (await client.send(httpx.Request("GET", f"{origin}/a"))).content == b"ok"
        await asyncio.sleep(0.4)  # idle, past the timeout armed by the first request
        assert (await client.send(httpx.Request("GET", f"{origin}/b"))).content == b"ok"
        assert (await client.send(httpx.Request("GET", f"{origin}/drip"))).content == b"xxxx"
        started = loop.time()
        with pytest.raises(httpx.ReadTimeout):
            await client.send(httpx.Request("GET", f"{origin}/hang"))
        assert 0.2 < loop.time() - started < 1.0
        await client.aclose()
        assert connections == 1

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


def test_https_upstreams_are_verified_against_the_trusted_authorities(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real providers are HTTPS: a certificate from a trusted authority for the host is
    accepted (and the connection reused); one the machine does not trust, or for another
    host, fails the call before anything is sent (a free 502)."""
    authority = trustme.CA()
    cert = authority.issue_cert("localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_tls)
    (tmp_path / "ca.pem").write_bytes(authority.cert_pem.bytes())
    peers: list[Any] = []

    async def hello(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"tls": request.secure})

    async def main(trusted: bool, host: str) -> None:
        app = web.Application()
        app.router.add_get("/hello", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        client = UpstreamClient(ProviderConfig(package="x"))
        try:
            for _ in range(2):
                request = httpx.Request("GET", f"https://{host}:{port}/hello")
                if trusted:
                    response = await send(client, request, provider="acme", max_retries=0)
                    assert response.status_code == 200 and response.json() == {"tls": True}
                else:
                    with pytest.raises(UpstreamError) as info:
                        await send(client, request, provider="acme", max_retries=0)
                    assert info.value.status == 502
        finally:
            await client.aclose()
            await runner.cleanup()

    # The machine's authorities (as ssl.create_default_context loads them) do not know ours.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    asyncio.run(main(trusted=False, host="localhost"))
    assert peers == []  # the handshake failed: no request reached the server
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    asyncio.run(main(trusted=True, host="localhost"))
    assert len(peers) == 2 and peers[0] == peers[1]  # one kept-alive connection, two calls
    peers.clear()
    asyncio.run(main(trusted=False, host="127.0.0.1"))  # the certificate names localhost only
    assert peers == []
