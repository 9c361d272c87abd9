"""The HTTP front end: OpenAI-compatible ``/v1`` endpoints on Starlette.

Each unified endpoint does the same few steps: authenticate, read and validate the body,
find the route, check the modality and the provider, then hand over to ``dispatch``. Every
answer carries ``x-request-id``; every error is in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from random import getrandbits
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute
from starlette.routing import Route as HTTPRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import fastjson
from ..billing.biller import Bill, Biller, FreeBill
from ..billing.money import format_usd, usd_number
from ..dialects import Dialect, Exchange
from ..dialects.messages import MessagesAPI
from ..dialects.responses import ResponsesAPI
from ..errors import (
    APIError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from ..policy import check_policy
from ..policy.texts import user_texts
from ..providers import dispatch, fallback
from ..providers.runtime import Gateway, Route
from ..providers.types import Usage
from ..schemas import ENDPOINTS, ImageRequest, Modality, SpeechRequest, UnifiedRequest
from ..storage import (
    FILES_PATH,
    LocalStorage,
    Storage,
    StorageError,
    content_type_for,
    extension_for,
)
from ..store.accounts import KeyStore, Principal
from ..store.responses import StoredResponses
from ..tasks.render import absolute_url
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import Idempotency
from .messages_api import count_tokens_endpoint
from .reading import read_json, read_multipart, validation_error
from .receipts import Receipts
from .responses_api import delete_endpoint, retrieve_endpoint
from .speech import open_audio_stream
from .voices import Voices

if TYPE_CHECKING:
    from .tasks import TasksAPI

log = logging.getLogger("apimodels")
DEBUG = bool(os.environ.get("APIMODELS_DEBUG"))
T = TypeVar("T")

_IDEMPOTENCY = IDEMPOTENCY_HEADER.encode()
_ENDPOINT_OF: dict[Modality, str] = {modality: path for path, (_, modality) in ENDPOINTS.items()}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(fastjson.dumps(body), status, headers, media_type="application/json")


def header(request: Request, name: bytes) -> str | None:
    """``request.headers.get(name)`` for a lowercase ``name``, read from the ASGI scope:
    without building Starlette's ``Headers``, nor raising a ``KeyError`` inside it for a
    header the request does not have (most have no Idempotency-Key)."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def error_response(exc: APIError) -> Response:
    return json_response(exc.body(), exc.status, exc.headers)


def new_request_id() -> str:
    """``req_`` + time in microseconds (hex) + 48 random bits: unique, and in time order, so
    new usage rows append to their index instead of landing on a random page. An id is no
    secret (every lookup by it is the account's own), so its bits come from ``random``
    (seeded from the system's entropy, again in each forked worker) rather than a system
    call per request."""
    return f"req_{time.time_ns() // 1000:013x}{getrandbits(48):012x}"


class RequestContext:
    """ASGI middleware: a request id on every response, the body size limit, and the fast
    lane of the model endpoints.

    Pure ASGI (not BaseHTTPMiddleware) to keep it to a few microseconds per request. A
    ``POST`` to a model endpoint goes straight to its endpoint: those answer every error
    themselves (``_with_errors``), so Starlette's routing and exception layers would only
    add their cost to the path every call takes. Anything else, including a model path
    under a ``root_path``, goes through Starlette.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        endpoints: dict[str, Callable[[Request], Awaitable[Response]]] | None = None,
        shapes: dict[str, Dialect] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.endpoints = endpoints or {}
        self.shapes = shapes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # and any the endpoint added (a deprecated model's Deprecation and Sunset)
                extra = scope["state"].get("headers", ())
                message["headers"] = [*message.get("headers", []), header, *extra]
            await send(message)

        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                answer = error_in_shape(self.shapes, scope["path"], _too_large(limit), request_id)
                await answer(scope, receive, send_with_id)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        endpoint = self.endpoints.get(scope["path"]) if scope["method"] == "POST" else None
        if endpoint is not None:
            scope["app"] = self.app  # as Starlette would set it (request.app)
            response = await endpoint(Request(scope, limited_receive, send_with_id))
            await response(scope, limited_receive, send_with_id)
            return
        await self.app(scope, limited_receive, send_with_id)


def error_in_shape(
    shapes: dict[str, Dialect], path: str, exc: APIError, request_id: str
) -> Response:
    """``exc`` in the error shape of the API ``path`` belongs to: a dialect's own (the
    Messages API's under ``/v1/messages``), else OpenAI's."""
    for prefix, dialect in shapes.items():
        if path == prefix or path.startswith(prefix + "/"):
            return json_response(dialect.error_body(exc, request_id), exc.status, exc.headers)
    return error_response(exc)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than this server accepts ({limit} bytes)")


class Frontend:
    """The endpoints, bound to one assembled gateway and key store."""

    def __init__(
        self,
        gateway: Gateway,
        keys: KeyStore,
        biller: Biller,
        idempotency: Idempotency,
        tasks: TasksAPI | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.gateway = gateway
        self.keys = keys
        self.biller = biller
        self.idempotency = idempotency
        self.tasks = tasks
        self.storage = storage  # where images asked for as URLs are kept
        self.models_body = json.dumps(self._models_list(), separators=(",", ":")).encode()
        self.voices = Voices(gateway)

    def _model_object(self, route: Route) -> dict[str, Any]:
        m = route.model
        return {
            "id": m.id,
            "object": "model",
            "created": 0,
            "owned_by": m.provider,
            "provider": m.provider,
            "modality": m.modality.value,
            "pricing": m.pricing.as_dict(),
            # The bounds of what a call can be charged for (docs/api.md, "Credits and billing").
            "context_tokens": m.context_tokens,
            "max_output_tokens": m.max_output_tokens,
            "deprecated_at": m.deprecated_at and m.deprecated_at.isoformat(),
            "retires_at": m.retires_at and m.retires_at.isoformat(),
            "replacement": m.replacement,
            "description": m.description,
        }

    def _alias_object(self, alias: str, route: Route) -> dict[str, Any]:
        return {**self._model_object(route), "id": alias, "alias_of": route.model.id}

    def _models_list(self) -> dict[str, Any]:
        routes = sorted(self.gateway.routes.values(), key=lambda r: r.model.id)
        aliases = sorted(self.gateway.aliases.items())
        data = [self._model_object(r) for r in routes]
        data += [self._alias_object(alias, route) for alias, route in aliases]
        return {"object": "list", "data": data}

    async def list_models(self, request: Request) -> Response:
        await self.keys.check(request.headers.get("authorization"))
        return Response(self.models_body, media_type="application/json")

    async def get_model(self, request: Request) -> Response:
        await self.keys.check(request.headers.get("authorization"))
        model_id = request.path_params["model_id"]
        route = self.gateway.route(model_id)
        if route is None:
            raise _unknown_model(model_id)
        if route.model.id != model_id:
            return json_response(self._alias_object(model_id, route))
        return json_response(self._model_object(route))

    def unified(self, path: str) -> Callable[[Request], Awaitable[Response]]:
        schema, modality = ENDPOINTS[path]
        multipart = modality is Modality.transcription

        async def endpoint(request: Request) -> Response:
            principal = await self.keys.check(header(request, b"authorization"))
            return await self._replayable(request, principal, call)

        async def call(request: Request, principal: Principal) -> Response:
            started = time.perf_counter()
            body = await (read_multipart(request) if multipart else read_json(request))
            try:
                unified = schema.model_validate(body)
            except ValidationError as exc:
                raise validation_error(exc) from None
            return await self._serve(request, principal, unified, path, modality, started)

        endpoint.__name__ = path.replace("/", "_")
        return endpoint

    def dialect(self, dialect: Dialect, path: str) -> Callable[[Request], Awaitable[Response]]:
        """A chat endpoint in another API's shape (``apimodels.dialects``): the same
        pipeline as ``/v1/chat/completions``, its request and answer translated."""

        async def endpoint(request: Request) -> Response:
            principal = await self.keys.check(dialect.credentials(request.headers))
            return await self._replayable(request, principal, call)

        async def call(request: Request, principal: Principal) -> Response:
            started = time.perf_counter()
            exchange = dialect.read(await read_json(request), principal.account_id)
            return await self._serve(
                request, principal, exchange.chat, path, Modality.chat, started, exchange
            )

        endpoint.__name__ = path.replace("/", "_")
        return endpoint

    async def _replayable(
        self,
        request: Request,
        principal: Principal,
        call: Callable[[Request, Principal], Awaitable[Response]],
    ) -> Response:
        """``call``, or the answer it gave before when the request repeats an
        Idempotency-Key (http/idempotency.py)."""
        idempotency_key = header(request, _IDEMPOTENCY)
        if idempotency_key is None:
            return await call(request, principal)
        return await self.idempotency.run(
            request, principal.account_id, idempotency_key, lambda: call(request, principal)
        )

    def route_for(self, model: str, modality: Modality, path: str) -> Route:
        """The route of ``model`` (an id or alias), if it is a ``modality`` model (404, 400)."""
        route = self.gateway.route(model)
        if route is None:
            raise _unknown_model(model)
        if route.model.modality is not modality:
            raise _wrong_modality(route, path)
        return route

    async def _serve(
        self,
        request: Request,
        principal: Principal,
        unified: UnifiedRequest,
        path: str,
        modality: Modality,
        started: float,
        exchange: Exchange | None = None,
    ) -> Response:
        """The life of a call once its request is read: route, lifecycle, policy, the hold,
        dispatch, billing; the answer in ``exchange``'s shape when it has one."""
        route = self.route_for(unified.model, modality, path)
        request.scope["state"]["route"] = route  # the model and provider, for metrics
        if route.lifecycle is not None:  # 410 once retired; dated headers before that
            request.scope["state"]["headers"] = route.lifecycle.at(time.time())
        route.provider.ensure_available()
        if route.jobs:
            return await self._through_task(request, principal, route, unified, started)
        if isinstance(unified, SpeechRequest):
            self.voices.resolve(route, unified.voice)
        request_id = request.scope["state"]["request_id"]
        await check_policy(
            self.gateway, route, unified, principal.account_id, principal.key_id, request_id
        )
        # The estimate also refuses an unpriced variant: all before any hold or I/O. The
        # hold covers the dearest route the call may take (its fallbacks').
        attempts = fallback.plan(self.gateway, route, unified)
        estimate = attempts[0].estimate
        hold = max(a.hold_micros for a in attempts)
        deadline = self.gateway.catalog.gateway.fallback_seconds
        stream = bool(getattr(unified, "stream", False))
        if stream and IDEMPOTENCY_HEADER in request.headers:
            raise InvalidRequest(
                "Streaming requests cannot be replayed: send them without Idempotency-Key",
                param="Idempotency-Key",
                code="idempotency_not_supported",
            )
        # Speech streams its audio as it comes, unless it must be replayable.
        audio = modality is Modality.speech and IDEMPOTENCY_HEADER not in request.headers
        bill = await self.biller.open(request_id, principal, route, hold, stream=stream or audio)
        guard = (bill, principal, route, unified, request_id)
        if audio:
            return await self._guarded(open_audio_stream(route, unified, estimate, bill), *guard)
        if stream:

            def open_stream(attempt: fallback.Attempt) -> Awaitable[dispatch.Relay]:
                # A writer per attempt: one that failed before its first chunk wrote nothing
                # the client saw, but may have ended its own events.
                client = exchange.stream() if exchange is not None else None

                def on_end(result: dispatch.StreamResult) -> asyncio.Future[bool] | None:
                    if attempt is not attempts[0] and isinstance(bill, Bill):
                        bill.billed_as = attempt.route.billed_as  # the route that served
                    charged = client.charged if client is not None else None
                    settled = settle_stream(bill, attempt.route, attempt.estimate, result, charged)
                    if result.error is not None and result.chunks:  # before: _guarded's
                        try:  # a refusal mid-stream is audited like any other
                            self._refused(result.error, principal, route, unified, request_id)
                        except Exception as exc:
                            log.error("auditing %s failed: %s", request_id, type(exc).__name__)
                    return settled

                return dispatch.open_stream(
                    attempt.route, unified, on_end, attempt.estimate, client
                )

            served, relay = await self._guarded(
                fallback.first_served(attempts, open_stream, deadline), *guard
            )
            return RelayResponse(relay, fallback.route_header(served))

        def call_upstream(attempt: fallback.Attempt) -> Awaitable[dispatch.Priced]:
            return dispatch.call(attempt.route, unified, attempt.estimate)

        served, priced = await self._guarded(
            fallback.first_served(attempts, call_upstream, deadline), *guard
        )
        if served is not attempts[0] and isinstance(bill, Bill):
            bill.billed_as = served.route.billed_as  # billed as the route that served
        if isinstance(unified, ImageRequest) and unified.response_format == "url":
            # A model that answers bytes: kept in the output store, answered as URLs (a
            # failure to store them fails the call, which is then free).
            await self._guarded(self._image_urls(priced, request, principal), *guard)
        # The charge commits after the answer goes out, with its neighbours' within
        # gateway.commit_delay_ms, off the answer's latency (docs/self-hosting.md).
        bill.succeed(priced.usage, priced.cost_micros)
        return _priced_response(priced, started, exchange, fallback.route_header(served))

    async def _image_urls(
        self, priced: dispatch.Priced, request: Request, principal: Principal
    ) -> None:
        """Replace each ``b64_json`` image of an answer by a signed URL of the output store."""
        body = priced.output.body
        items = body.get("data") if isinstance(body, dict) else None
        if not items or not any("b64_json" in item for item in items):
            return  # the upstream answered URLs itself
        if self.storage is None:
            raise ServiceUnavailable("image URLs need output storage; ask for b64_json instead")
        fmt = str(body.get("output_format") or "png")
        content_type = {"jpeg": "image/jpeg", "webp": "image/webp"}.get(fmt, "image/png")
        origin = str(request.base_url)
        request_id = request.scope["state"]["request_id"]
        for index, item in enumerate(items):
            data = item.pop("b64_json", None)
            if data is None:
                continue
            key = self.storage.object_key(
                principal.account_id, request_id, index, extension_for(content_type)
            )
            try:
                await self.storage.put(key, base64.b64decode(data), content_type)
            except StorageError as exc:
                raise ServiceUnavailable(f"the image could not be stored: {exc}") from None
            item["url"] = absolute_url(self.storage.url(key), origin)

    async def _through_task(
        self,
        request: Request,
        principal: Principal,
        route: Route,
        unified: UnifiedRequest,
        started: float,
    ) -> Response:
        """An image model its upstream runs as jobs, on the synchronous endpoint: run it as
        a task and wait (``tasks.sync_wait_seconds``), then answer like any image call."""
        if self.tasks is None or not isinstance(unified, ImageRequest):
            raise InvalidRequest(
                f"'{route.model.id}' runs as a long job upstream: use POST /v1/tasks",
                code="use_tasks",
                param="model",
            )
        if unified.response_format == "b64_json":
            raise InvalidRequest(
                f"{route.model.id} answers image URLs only: leave out response_format",
                param="response_format",
            )
        try:
            task = await self.tasks.run_sync(principal, route, image_task_input(route, unified))
        except UpstreamTimeout as exc:  # the task goes on: an answer, kept for retries
            if exc.code != "task_still_running":
                raise
            return error_response(exc)
        if task["status"] != "succeeded":
            raise task_error(task)
        rendered = self.tasks.render(task, request)
        body = {
            "created": int(time.time()),
            "data": [{"url": item["url"]} for item in rendered["output"] or []],
            "usage": {"cost": rendered["cost"]},
            "task_id": task["id"],
        }
        headers = {
            "x-apimodels-cost": format_usd(task["cost_micros"] or 0),
            "openai-processing-ms": str(int((time.perf_counter() - started) * 1000)),
        }
        return json_response(body, headers=headers)

    async def _guarded(
        self,
        upstream_call: Awaitable[T],
        bill: Bill | FreeBill,
        principal: Principal,
        route: Route,
        unified: UnifiedRequest,
        request_id: str,
    ) -> T:
        """Await the upstream call; if it fails, release the hold (waiting for the release,
        so a retry sees the credits) and audit an upstream safety refusal, then re-raise."""
        try:
            return await upstream_call
        except Exception as exc:
            await _settled(bill.fail(exc))
            self._refused(exc, principal, route, unified, request_id)
            raise
        except BaseException:
            bill.fail(None)  # cancelled: the client left; release without waiting
            raise

    def _refused(
        self,
        exc: Exception,
        principal: Principal,
        route: Route,
        unified: UnifiedRequest,
        request_id: str,
    ) -> None:
        """Audit an upstream's content-policy refusal (it cost nothing: the bill failed)."""
        if self.gateway.policy is not None:
            self.gateway.policy.upstream_refused(
                exc,
                principal.account_id,
                principal.key_id,
                route.model,
                lambda: user_texts(unified),
                request_id,
            )

    async def list_voices(self, request: Request) -> Response:
        await self.keys.check(request.headers.get("authorization"))
        return Response(self.voices.body, media_type="application/json")


async def _settled(future: asyncio.Future[bool] | None) -> None:
    """Wait until a settle is committed (shielded: a leaving client cannot cancel it)."""
    if future is not None:
        await asyncio.shield(future)


def settle_stream(
    bill: Bill | FreeBill,
    route: Route,
    estimate: Usage,
    result: dispatch.StreamResult,
    charged: Callable[[Usage, int], None] | None = None,
) -> asyncio.Future[bool] | None:
    """Bill a finished stream (see docs/api.md, "Streams"):

    - the upstream reported usage: that usage, also when the client left early;
    - the client left, or the stream ended without a (readable) usage: the estimate of
      what was delivered, namely the estimated input and one output token per chunk
      relayed (capped by the hold);
    - the upstream failed or cut the stream: nothing, like every failed call.

    ``charged`` is told what is charged, if anything (a dialect's last event shows it).
    Returns what the client's last event waits for: a failed stream's row. A charge is
    committed with its neighbours' (``gateway.commit_delay_ms``), after the last event,
    as an answered call's is.
    """
    if (
        result.usage is not None
        and result.cost_micros is not None
        and (result.error is None or result.client_gone)
    ):
        if charged is not None:
            charged(result.usage, result.cost_micros)
        bill.succeed(result.usage, result.cost_micros)
        return None
    if result.chunks and (result.client_gone or result.error is None):
        delivered = Usage(input_tokens=estimate.input_tokens, output_tokens=result.chunks)
        try:
            cost = min(dispatch.price(route, delivered), bill.hold_micros)
        except Exception as exc:  # free rather than an open bill pinning its credits
            log.error("pricing a stream of %s failed: %s", route.model.id, type(exc).__name__)
            return bill.fail(exc)
        if charged is not None:
            charged(delivered, cost)
        bill.succeed(delivered, cost)
        return None
    if result.error is None and not result.client_gone:  # ended, with nothing in it: free
        return bill.fail(UpstreamError("the stream ended with neither content nor usage"))
    return bill.fail(result.error)


class RelayResponse(StreamingResponse):
    """A server-sent-event response that never strands its upstream stream or its hold:
    if the client leaves before (or while) it is read, the relay finishes in the background.

    Sent by one coroutine, with one plain task watching for the client to leave (which
    ends the relay's events for it): Starlette's own streaming sets up an anyio task group
    and cancel scopes for that, a tenth of a stream's CPU time."""

    def __init__(self, relay: dispatch.Relay, headers: dict[str, str] | None = None) -> None:
        super().__init__(
            relay,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})},
        )
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self.relay
        watcher = asyncio.get_running_loop().create_task(_client_left(receive))
        watcher.add_done_callback(lambda task: task.cancelled() or relay.disconnect())
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            async for chunk in relay:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            relay.abandon()  # a no-op when the relay finished


async def _client_left(receive: Receive) -> None:
    """Return once the client has gone (what else it sends is not read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _priced_response(
    priced: dispatch.Priced,
    started: float,
    exchange: Exchange | None = None,
    route: dict[str, str] | None = None,
) -> Response:
    output = priced.output
    headers = {
        "x-apimodels-cost": format_usd(priced.cost_micros),
        "openai-processing-ms": str(int((time.perf_counter() - started) * 1000)),
        **(route or {}),
    }
    if isinstance(output.body, dict):
        usage = output.body.get("usage")
        if not isinstance(usage, dict):
            usage = output.body["usage"] = {}
        usage["cost"] = usd_number(priced.cost_micros)  # a number; the header keeps the string
        if exchange is not None:
            return json_response(exchange.answer(output.body), headers=headers)
        return json_response(output.body, headers=headers)
    return Response(output.body, media_type=output.content_type, headers=headers)


#: How a failed task's error reaches a synchronous caller.
_TASK_ERRORS: dict[str, type[APIError]] = {
    "content_policy_violation": PermissionDenied,
    "invalid_input": InvalidRequest,
    "timeout": UpstreamTimeout,
}


def task_error(task: dict[str, Any]) -> APIError:
    code = task["error_code"] or "upstream_failed"
    message = task["error_message"] or "the image could not be made"
    return _TASK_ERRORS.get(code, UpstreamError)(message, code=code)


def image_task_input(route: Route, request: ImageRequest) -> dict[str, Any]:
    """An images request as a job's input: the prompt, the count when the model takes one,
    and any extra field the model's input schema names (``aspect_ratio``, ``seed``...)."""
    properties = (route.input_schema or {}).get("properties", {})
    task_input: dict[str, Any] = {"prompt": request.prompt}
    if request.n > 1:
        if "num_outputs" not in properties:
            raise InvalidRequest(f"{route.model.id} makes one image per request", param="n")
        task_input["num_outputs"] = request.n
    for name, value in (request.model_extra or {}).items():
        if name in properties:
            task_input[name] = value
    if request.size is not None and "size" not in properties:
        raise InvalidRequest(
            f"{route.model.id} does not take 'size'; send its own fields "
            f"({', '.join(sorted(properties)) or 'none'})",
            param="size",
        )
    return task_input


def _unknown_model(model_id: str) -> NotFound:
    return NotFound(
        f"The model '{model_id}' does not exist or is not served here. GET /v1/models lists the models.",
        code="model_not_found",
        param="model",
    )


def _wrong_modality(route: Route, path: str) -> InvalidRequest:
    right = _ENDPOINT_OF.get(route.model.modality)
    where = f"POST /v1/{right}" if right else "the tasks API"
    return InvalidRequest(
        f"'{route.model.id}' is a {route.model.modality.value} model and is not served by "
        f"/v1/{path}; use {where}.",
        code="wrong_modality",
        param="model",
    )


#: What this process counted since it started (``GET /health`` shows them).
COUNTERS = {"client_disconnects": 0}


def _with_errors(
    endpoint: Callable[[Request], Awaitable[Response]],
    dialect: Dialect | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint`` answering every error itself: in OpenAI's shape, or ``dialect``'s."""

    def answer(exc: APIError, request: Request) -> Response:
        if dialect is None:
            return error_response(exc)
        request_id = request.scope["state"].get("request_id", "?")
        return json_response(dialect.error_body(exc, request_id), exc.status, exc.headers)

    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except APIError as exc:
            return answer(exc, request)
        except ClientDisconnect:  # the client left while sending: not the server's error
            COUNTERS["client_disconnects"] += 1
            log.debug("%s: the client left", request.scope["state"].get("request_id"))
            return Response(status_code=400)  # nobody is left to read it
        except Exception as exc:  # answered here, so no traceback reaches any log
            return answer(_internal(request, exc), request)

    wrapped.__name__ = endpoint.__name__
    return wrapped


def _http_errors(
    shapes: dict[str, Dialect],
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """Starlette's routing errors (404, 405) in the error shape of the path's API."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path
        if exc.status_code == 404:
            error: APIError = NotFound(f"Unknown path: {request.method} {path}", code="unknown_url")
        else:
            code = "method_not_allowed" if exc.status_code == 405 else None
            # A 405 names the methods the path takes in Allow (RFC 9110), as Starlette's
            # router set it.
            error = InvalidRequest(
                exc.detail or "Bad request", code=code, status=exc.status_code, headers=exc.headers
            )
        request_id = request.scope.get("state", {}).get("request_id", "?")
        return error_in_shape(shapes, path, error, request_id)

    return http_error


_openai_routing_error = _http_errors({})


class InternalError(APIError):
    status = 500
    type = "server_error"
    default_code = "internal_error"


def _internal(request: Request, exc: Exception) -> InternalError:
    """Log an unexpected error; the client's answer names only the request id."""
    request_id = request.scope.get("state", {}).get("request_id", "?")
    # The class name only: a message or traceback could carry upstream details
    # (APIMODELS_DEBUG=1 logs the traceback, for a developer's own machine).
    log.error(
        "internal error in %s: %s",
        request_id,
        type(exc).__name__,
        exc_info=exc if DEBUG else None,
    )
    return InternalError(f"The server had an error processing your request ({request_id}).")


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(_internal(request, exc))


def create_app(
    gateway: Gateway,
    keys: KeyStore,
    biller: Biller,
    idempotency: Idempotency,
    *,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    tasks: TasksAPI | None = None,
    storage: Storage | None = None,
    extra_routes: Sequence[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = (),
    mounts: Sequence[BaseRoute] = (),
) -> ASGIApp:
    frontend = Frontend(gateway, keys, biller, idempotency, tasks, storage)
    receipts = Receipts(keys, biller.ledger)

    async def health(request: Request) -> Response:
        biller.ledger.commit()  # answers once this process's queued charges are committed
        return json_response({"status": "ok", "counters": COUNTERS})

    # The model endpoints: answered in RequestContext's fast lane, and routed by Starlette
    # too (a GET gets its 405 there). First: Starlette tries routes in order, a regex each.
    endpoints = {f"/v1/{path}": _with_errors(frontend.unified(path)) for path in ENDPOINTS}
    # Other API shapes of chat (apimodels.dialects), each answering errors in its own shape.
    stored = StoredResponses(idempotency.db, biller.ledger)
    messages = MessagesAPI()
    shapes: dict[str, Dialect] = {"/v1/messages": messages}  # errors in Anthropic's shape
    endpoints["/v1/responses"] = _with_errors(frontend.dialect(ResponsesAPI(stored), "responses"))
    endpoints["/v1/messages"] = _with_errors(frontend.dialect(messages, "messages"), messages)
    endpoints["/v1/messages/count_tokens"] = _with_errors(
        count_tokens_endpoint(frontend, messages), messages
    )
    routes = [
        *(HTTPRoute(path, endpoint, methods=["POST"]) for path, endpoint in endpoints.items()),
        HTTPRoute(
            "/v1/responses/{response_id}",
            _with_errors(retrieve_endpoint(keys, stored)),
            methods=["GET"],
        ),
        HTTPRoute(
            "/v1/responses/{response_id}",
            _with_errors(delete_endpoint(keys, stored)),
            methods=["DELETE"],
        ),
        HTTPRoute("/v1/credits", _with_errors(receipts.credits), methods=["GET"]),
        HTTPRoute("/v1/usage", _with_errors(receipts.usage), methods=["GET"]),
        HTTPRoute(
            "/v1/generation/{request_id}", _with_errors(receipts.generation), methods=["GET"]
        ),
        HTTPRoute("/v1/models", _with_errors(frontend.list_models), methods=["GET"]),
        HTTPRoute("/v1/audio/voices", _with_errors(frontend.list_voices), methods=["GET"]),
        HTTPRoute("/v1/models/{model_id:path}", _with_errors(frontend.get_model), methods=["GET"]),
        HTTPRoute("/health", health, methods=["GET"]),
    ]
    if tasks is not None:
        routes += [
            HTTPRoute("/v1/tasks", _with_errors(tasks.submit), methods=["POST"]),
            HTTPRoute("/v1/tasks", _with_errors(tasks.list), methods=["GET"]),
            HTTPRoute("/v1/tasks/{id}", _with_errors(tasks.get), methods=["GET"]),
            HTTPRoute("/v1/tasks/{id}", _with_errors(tasks.delete), methods=["DELETE"]),
            HTTPRoute("/v1/tasks/{id}/cancel", _with_errors(tasks.cancel), methods=["POST"]),
            HTTPRoute(
                "/webhooks/{provider}/{id}", _with_errors(tasks.upstream_webhook), methods=["POST"]
            ),
        ]
    routes.append(HTTPRoute("/v1/files", files_api, methods=["GET", "POST"]))  # not here: 404
    if isinstance(storage, LocalStorage):
        routes.append(files_route(storage))
    # Features assembled elsewhere (top-ups...), each endpoint answering errors the same way.
    routes += [HTTPRoute(p, _with_errors(e), methods=m) for p, e, m in extra_routes]
    routes += mounts  # apps of their own (the Console), answering their errors themselves

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        await gateway.open()
        if on_startup is not None:
            await on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()
            await gateway.aclose()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_errors(shapes), Exception: _internal_error},
    )
    app.state.gateway = gateway
    app.state.keys = keys
    app.state.biller = biller
    app.state.storage = storage
    return RequestContext(app, gateway.catalog.gateway.max_body_bytes, endpoints, shapes)


def files_route(storage: LocalStorage) -> HTTPRoute:
    """``GET /v1/files/{key}?expires=&signature=``: a stored output, streamed from disk.

    No API key: the URL's signature is the credential (403 if tampered or expired)."""

    async def get_file(request: Request) -> Response:
        if not request.path_params["key"]:  # OpenAI's Files API (client.files.list()): not here
            raise NotFound(f"Unknown path: GET {request.url.path}", code="unknown_url")
        query = request.query_params
        path, st = await storage.locate(
            request.path_params["key"], query.get("expires"), query.get("signature")
        )
        left = max(0, int(query["expires"]) - int(time.time()))
        headers = {
            "cache-control": f"private, max-age={left}",
            "x-content-type-options": "nosniff",
            # An output is data, never a page: no script in it runs with the gateway's origin.
            "content-security-policy": "sandbox; default-src 'none'",
        }
        return FileResponse(
            path, headers=headers, media_type=content_type_for(path.name), stat_result=st
        )

    return HTTPRoute(f"{FILES_PATH}{{key:path}}", _with_errors(get_file), methods=["GET"])


async def files_api(request: Request) -> Response:
    """``/v1/files``, OpenAI's Files API (``client.files.list()``): not served here. Answered
    as the unknown path it is, rather than redirected to the signed-file route's prefix."""
    return await _openai_routing_error(request, HTTPException(404))
