"""A minimal OpenAI-shaped upstream with a fixed latency, for benchmarks.

Deliberately tiny (raw ASGI, canned bytes) so that the benchmark measures the gateway, not
the mock. Latency in seconds comes from the MOCK_LATENCY environment variable (default 0);
MOCK_STATUS=503 makes it an upstream that refuses every call at once (bench/fallback.py).
A request with ``"stream":true`` is answered with server-sent events: MOCK_CHUNKS deltas
(default 16) MOCK_GAP seconds apart (default 0.01), the usage, then ``[DONE]``.
Run: ``python -m uvicorn --app-dir bench mock_upstream:app --port 9000``.
"""

from __future__ import annotations

import asyncio
import json
import os

LATENCY = float(os.environ.get("MOCK_LATENCY", "0"))
STATUS = int(os.environ.get("MOCK_STATUS", "200"))
CHUNKS = int(os.environ.get("MOCK_CHUNKS", "16"))
GAP = float(os.environ.get("MOCK_GAP", "0.01"))

BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the benchmark upstream."},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _event(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
             "model": "gpt-4o-mini", "choices": choices, "usage": usage}  # fmt: skip
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


DELTA = _event({"content": "word "})
LAST = _event({}, "stop") + _event(
    {}, usage={"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}
)
FAILED = b'{"error": {"message": "overloaded", "type": "server_error", "code": null}}'
FAILED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(FAILED)).encode()),
]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    more, body = True, b""
    while more:  # read the request body
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if LATENCY:
        await asyncio.sleep(LATENCY)
    if STATUS != 200:
        await send({"type": "http.response.start", "status": STATUS, "headers": FAILED_HEADERS})
        await send({"type": "http.response.body", "body": FAILED})
        return
    if b'"stream":true' in body or b'"stream": true' in body:
        await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        await send({"type": "http.response.body", "body": _event({"role": "assistant"}),
                    "more_body": True})  # fmt: skip
        for _ in range(CHUNKS):
            await asyncio.sleep(GAP)
            await send({"type": "http.response.body", "body": DELTA, "more_body": True})
        await send({"type": "http.response.body", "body": LAST + b"data: [DONE]\n\n"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
