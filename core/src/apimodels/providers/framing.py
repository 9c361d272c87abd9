"""Reading a streamed upstream answer as events, in the framing its provider declares
(``ProviderSpec.stream_format``): server-sent events, newline-delimited JSON, or raw bytes.

Each reader yields ``(event, data)`` pairs for ``parse_stream_event``: the SSE event name
(None when the event has none, and always for the other framings) and its payload. No line
is held past the provider's ``max_response_bytes``: an upstream cannot fill the gateway's
memory with one endless line.

The SSE reader is the WHATWG algorithm in a dozen lines rather than ``httpx-sse``: that
library reads through httpx's line decoder, which has no such bound, and these readers sit
on the path every streamed chunk takes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import httpx

from .upstream import too_large

StreamFormat = Literal["sse", "ndjson", "bytes"]


async def lines(response: httpx.Response, limit: int, provider: str) -> AsyncIterator[str]:
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


async def sse_events(
    response: httpx.Response, limit: int, provider: str
) -> AsyncIterator[tuple[str | None, str]]:
    """Server-sent events: ``event:`` names the next event, ``data:`` lines join with
    newlines, a blank line dispatches; comments, ``id:`` and ``retry:`` are skipped. An event
    the upstream did not end with a blank line before closing is still dispatched."""
    name: str | None = None
    data: list[str] = []
    async for line in lines(response, limit, provider):
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = None, []
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value or None
    if data:
        yield name, "\n".join(data)


async def ndjson_events(
    response: httpx.Response, limit: int, provider: str
) -> AsyncIterator[tuple[str | None, str]]:
    """One JSON document per line; blank lines are keep-alives."""
    async for line in lines(response, limit, provider):
        if line.strip():
            yield None, line


async def byte_events(
    response: httpx.Response, limit: int, provider: str
) -> AsyncIterator[tuple[str | None, bytes]]:
    """Each chunk as the upstream sent it (its size is the transport's, not a message's)."""
    async for chunk in response.aiter_raw():
        yield None, chunk


READERS = {"sse": sse_events, "ndjson": ndjson_events, "bytes": byte_events}
