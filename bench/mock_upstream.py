"""A minimal OpenAI-shaped upstream with a fixed latency, for benchmarks.

Deliberately tiny (raw ASGI, canned bytes) so that the benchmark measures the gateway, not
the mock. Latency in seconds comes from the MOCK_LATENCY environment variable (default 0);
MOCK_STATUS=503 makes it an upstream that refuses every call at once (bench/fallback.py).
Run: ``python -m uvicorn --app-dir bench mock_upstream:app --port 9000``.
"""

from __future__ import annotations

import asyncio
import json
import os

LATENCY = float(os.environ.get("MOCK_LATENCY", "0"))
STATUS = int(os.environ.get("MOCK_STATUS", "200"))

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
FAILED = b'{"error": {"message": "overloaded", "type": "server_error", "code": null}}'
FAILED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(FAILED)).encode()),
]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the request body
        message = await receive()
        more = message.get("more_body", False)
    if LATENCY:
        await asyncio.sleep(LATENCY)
    if STATUS != 200:
        await send({"type": "http.response.start", "status": STATUS, "headers": FAILED_HEADERS})
        await send({"type": "http.response.body", "body": FAILED})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
