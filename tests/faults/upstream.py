"""A fake OpenAI-shaped upstream that misbehaves where an ASGI app cannot: on the wire.

A raw asyncio TCP server speaking just enough HTTP/1.1 (keep-alive, Content-Length request
bodies), run on 127.0.0.1 in a thread with its own event loop. It serves
``POST /v1/chat/completions`` (JSON, or server-sent events with ``stream: true``: one chunk
per token, the usage chunk when ``stream_options.include_usage`` asks for it, then
``[DONE]``), ``POST /v1/embeddings`` and ``POST /v1/audio/speech`` (a real WAV file). By
default a chat answer uses 12 prompt tokens and 5 completion tokens (fewer when
``max_tokens`` asks for fewer), times ``n``; an embedding a token per 4 characters.

Faults (a :class:`Fault`) are chosen per request: by a tag ``[fault:NAME]`` anywhere in the
request body (``upstream.tags[NAME]``, for concurrent tests), else the first one queued with
``upstream.queue(...)`` (optionally only for one path), else ``upstream.sticky``:

- ``usage={...}``: the usage object replaced by this one (JSON answers and the usage chunk)
- ``no_usage``: no usage at all (no ``usage`` key; no usage chunk in a stream)
- ``status=500`` / ``429``: an OpenAI-shaped error answer (429 with ``retry-after: 1``)
- ``reset``: read the request, then close with SO_LINGER 0 (a TCP reset, no answer)
- ``hang``: read the request, never answer (until the client gives up)
- ``drip=S``: the answer in pieces (SSE events, or quarters of a body) S seconds apart
- ``malformed``: a 200 whose JSON (or SSE event) is cut off mid-object
- ``cut``: close the connection mid-body (a stream after its second chunk; no ``[DONE]``)
- ``big=N``: a chat answer of about N bytes (one content string; one SSE line when streamed)
- ``chunked``: send a JSON answer with chunked transfer encoding (no Content-Length)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from apimodels.providers import media

WAV = media.wav(media.tone(0.2))
PROMPT_TOKENS, COMPLETION_TOKENS = 12, 5
WORDS = ["Hello", " from", " the", " fake", " upstream", "."]
_TAG = re.compile(rb"\[fault:(\w+)\]")
Answer = tuple[str, list[bytes], bool]  # content type, body parts, streamed (SSE)


@dataclass(frozen=True)
class Fault:
    usage: dict[str, Any] | None = None
    no_usage: bool = False
    status: int | None = None
    reset: bool = False
    hang: bool = False
    drip: float = 0.0
    malformed: bool = False
    cut: bool = False
    big: int = 0
    chunked: bool = False


OK = Fault()


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    fault: Fault
    tag: str | None  # the fault's name, when the request named it


@dataclass
class FakeUpstream:
    api_key: str
    url: str = ""
    sticky: Fault = OK
    tags: dict[str, Fault] = field(default_factory=dict)
    log: list[Received] = field(default_factory=list)
    _queue: deque[tuple[str | None, Fault]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def received(self) -> int:
        """How many requests with the right key reached the upstream so far."""
        return len(self.log)

    def queue(self, *faults: Fault, path: str | None = None) -> None:
        """Faults for the next requests (to ``path`` only, when given), one each, in order."""
        with self._lock:
            self._queue.extend((path, f) for f in faults)

    def reset(self) -> None:
        """No faults queued or sticky, and nothing received."""
        with self._lock:
            self._queue.clear()
            self.log.clear()
            self.sticky = OK

    def _take(self, path: str, raw: bytes) -> tuple[Fault, str | None]:
        if (tag := _TAG.search(raw)) is not None:
            return self.tags[tag[1].decode()], tag[1].decode()
        for entry in self._queue:
            if entry[0] in (None, path):
                self._queue.remove(entry)
                return entry[1], None
        return self.sticky, None

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection's requests, one after the other (keep-alive)."""
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
                raw = await reader.readexactly(int(headers.get("content-length") or 0))
                if not await self._answer(
                    method, target.split("?")[0], headers, raw, reader, writer
                ):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], raw: bytes,
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    ) -> bool:  # fmt: skip
        """Answer one request; False when the connection must not be used again."""
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return await _write(writer, 401, "application/json", [_error(401)])
        with self._lock:
            fault, tag = self._take(path, raw)
            self.log.append(Received(path, json.loads(raw or b"{}"), fault, tag))
        if fault.reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if fault.hang:
            await reader.read()  # until the gateway gives up and closes
            return False
        if fault.status is not None:
            extra = {"retry-after": "1"} if fault.status == 429 else {}
            return await _write(
                writer, fault.status, "application/json", [_error(fault.status)], extra
            )
        if method != "POST" or path not in ANSWERS:
            return await _write(writer, 404, "application/json", [_error(404)])
        ctype, parts, streamed = ANSWERS[path](self.log[-1].body, fault)
        if not streamed:
            whole = parts[0][: len(parts[0]) // 2] if fault.malformed else parts[0]
            n = 4 if fault.drip else 1
            parts = [whole[i * len(whole) // n : (i + 1) * len(whole) // n] for i in range(n)]
        chunked = streamed or fault.chunked
        return await _write(writer, 200, ctype, parts, chunked=chunked, fault=fault)


async def _write(
    writer: asyncio.StreamWriter,
    status: int,
    ctype: str,
    parts: list[bytes],
    extra: dict[str, str] | None = None,
    *,
    chunked: bool = False,
    fault: Fault = OK,
) -> bool:
    """Send an answer (as ``fault`` says); False when the connection was cut."""
    length = "transfer-encoding: chunked" if chunked else f"content-length: {sum(map(len, parts))}"
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"content-type: {ctype}", length]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    if fault.cut:  # a stream after two events; a body after half of it
        parts = parts[:2] if chunked else [b"".join(parts)[: sum(map(len, parts)) // 2]]
    for i, part in enumerate(parts):
        if fault.drip and i:
            await asyncio.sleep(fault.drip)
        for at in range(0, len(part), 1 << 20):  # big bodies a MiB at a time
            piece = part[at : at + (1 << 20)]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
    if fault.cut:
        await asyncio.sleep(0.05)  # what was sent is read before the connection drops
        return False
    writer.write(b"0\r\n\r\n" if chunked else b"")
    await writer.drain()
    return True


def _error(status: int) -> bytes:
    code = {429: "rate_limit_exceeded", 401: "invalid_api_key", 404: "not_found"}.get(status)
    kind = "requests" if status == 429 else "server_error"
    error = {"message": HTTPStatus(status).phrase, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _chat(body: dict[str, Any], fault: Fault) -> Answer:
    per = min(COMPLETION_TOKENS, body.get("max_completion_tokens") or body.get("max_tokens") or 99)
    out, words = per * (body.get("n") or 1), ["x" * fault.big] if fault.big else WORDS[:per]
    usage = fault.usage if fault.usage is not None else {
        "prompt_tokens": PROMPT_TOKENS, "completion_tokens": out, "total_tokens": PROMPT_TOKENS + out
    }  # fmt: skip
    base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model")}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(words)}
        choices = [
            {"index": i, "message": message, "finish_reason": "stop"}
            for i in range(body.get("n") or 1)
        ]
        answer = {**base, "object": "chat.completion", "choices": choices}
        answer |= {} if fault.no_usage else {"usage": usage}
        return "application/json", [json.dumps(answer).encode()], False

    def event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}

    chunks = [event({"role": "assistant", "content": ""})]
    chunks += [event({"content": w}) for w in words] + [event({}, "stop")]
    if not fault.no_usage and (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    if fault.malformed:
        events[1] = events[1][: len(events[1]) // 2] + b"\n\n"
    return "text/event-stream", [*events, b"data: [DONE]\n\n"], True


def _embeddings(body: dict[str, Any], fault: Fault) -> Answer:
    items = body["input"] if isinstance(body.get("input"), list) else [body.get("input")]
    data = [
        {"object": "embedding", "index": i, "embedding": [0.1, -0.2, 0.3]}
        for i in range(len(items))
    ]
    answer: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
    tokens = sum(max(1, len(str(item)) // 4) for item in items)  # about 4 characters a token
    if not fault.no_usage:
        answer["usage"] = (
            fault.usage
            if fault.usage is not None
            else {"prompt_tokens": tokens, "total_tokens": tokens}
        )
    return "application/json", [json.dumps(answer).encode()], False


ANSWERS = {
    "/v1/chat/completions": _chat,
    "/v1/embeddings": _embeddings,
    "/v1/audio/speech": lambda body, fault: ("audio/wav", [WAV], False),
}


@contextlib.contextmanager
def fake_upstream(api_key: str) -> Iterator[FakeUpstream]:
    """Serve a :class:`FakeUpstream` on 127.0.0.1 (its ``url`` set) until the block ends."""
    upstream, loop = FakeUpstream(api_key), asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(upstream.connection, "127.0.0.1", 0)

    async def stop() -> None:
        server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield upstream
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
