"""``RequestContext``: the request id, the body limit, and the model endpoints' fast lane."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from apimodels.http.app import RequestContext, _with_errors, read_json


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    await PlainTextResponse(f"starlette {scope['method']} {scope['path']}")(scope, receive, send)


async def _endpoint(request: Request) -> Response:
    body = await read_json(request)
    return PlainTextResponse(f"fast {body['n']}")


def _call(app: RequestContext, method: str, path: str, body: bytes = b'{"n": 1}', **scope: Any):
    sent: list[dict[str, Any]] = []
    chunks = [body[i : i + 4] for i in range(0, len(body), 4)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    http = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    asyncio.run(app({**http, **scope}, receive, send))
    headers = dict(sent[0]["headers"])
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), headers


def test_model_posts_take_the_fast_lane_and_everything_else_starlette() -> None:
    app = RequestContext(_inner, 1000, {"/v1/chat/completions": _with_errors(_endpoint)})
    status, body, headers = _call(app, "POST", "/v1/chat/completions")
    assert (status, body) == (200, b"fast 1")
    assert headers[b"x-request-id"].startswith(b"req_")
    assert _call(app, "GET", "/v1/chat/completions")[1] == b"starlette GET /v1/chat/completions"
    assert _call(app, "POST", "/v1/models")[1] == b"starlette POST /v1/models"
    # Under a root_path the path differs: Starlette, which knows how to strip it, routes it.
    under = _call(app, "POST", "/gw/v1/chat/completions", root_path="/gw")
    assert under[1] == b"starlette POST /gw/v1/chat/completions"


def test_the_fast_lane_keeps_the_body_limit_and_the_error_shape() -> None:
    app = RequestContext(_inner, 16, {"/v1/chat/completions": _with_errors(_endpoint)})
    # No content-length: the limit is enforced while the body streams in.
    status, body, headers = _call(app, "POST", "/v1/chat/completions", b'{"n": "' + b"x" * 40)
    assert status == 413 and b'"invalid_request_error"' in body
    assert headers[b"x-request-id"].startswith(b"req_")
    status, body, _ = _call(app, "POST", "/v1/chat/completions", b"[1]")
    assert status == 400 and b'"invalid_json"' in body
    status, body, _ = _call(app, "POST", "/v1/chat/completions", b'{"n": NaN}')
    assert status == 400 and b'"invalid_json"' in body
