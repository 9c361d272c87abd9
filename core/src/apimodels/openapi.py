"""The OpenAPI 3.1 document of a running server (``GET /openapi.json``) and its docs page
(``GET /docs``, rendered by the vendored Redoc in ``static/redoc/``).

Made once at startup from two tables: :data:`PUBLIC`, the public routes with the pydantic
models that validate their requests (``schemas``, the dialects, ``http.tasks``) and
describe their answers (``http.answers``), and the admin API's own table
(``admin.api.ENDPOINTS``), whose models both validate and shape. Nothing is written by
hand twice: ``tests/test_openapi.py`` checks that the document lists exactly the routes
the app serves, and ``tests/test_openapi_fuzz.py`` holds the server's answers to it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from . import __version__
from .admin.api import ENDPOINTS as ADMIN_ENDPOINTS
from .dialects.messages import CountTokensParams, CreateMessageParams
from .dialects.responses import CreateResponse
from .http import answers as a
from .http.tasks import TaskCreate
from .schemas import (
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    SpeechRequest,
    TranscriptionRequest,
)

#: Security schemes by name (``bearer``: an account's API key; ``apiKey``: the same key as
#: Anthropic's clients send it; ``adminToken``: an admin token, docs/admin.md).
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key, sk-am-..."},
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "The API key as Anthropic's clients send it (Messages API only)",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "An admin token, sk-adm-... (apimodels admin-tokens create)",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The metrics token, when gateway.metrics_token_env sets one",
    },
}

BINARY = {"type": "string", "format": "binary"}

#: What each error status means, as the document says it (docs/api.md, "Errors").
STATUSES = {
    400: "Bad input: the field is named in param",
    401: "A missing, unknown, revoked or expired credential",
    402: "Not enough credits for the call's hold",
    403: "A suspended account, a policy refusal, or a read-only admin token",
    404: "An unknown model, object or path",
    409: "The object's state forbids it, or an Idempotency-Key in use",
    410: "The model is retired (names its replacement)",
    413: "The body is larger than the server takes",
    422: "The upstream refused the input",
    429: "A rate limit or spending cap: retry after Retry-After",
    502: "The upstream (or the payment provider) failed",
    503: "The provider is not available or overloaded; or, for readiness, not ready",
    504: "The upstream did not answer in time",
}
#: The errors of any route, of one that takes a credential, of a model call.
ANY = (400, 404, 413)
AUTHED = (*ANY, 401, 403)
MODEL_CALL = (*AUTHED, 402, 409, 410, 422, 429, 502, 503, 504)
TEXT = {"type": "string"}


@dataclass(frozen=True, slots=True)
class Operation:
    """One public route as the document describes it."""

    method: str
    path: str
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = AUTHED
    query: type[BaseModel] | None = None
    security: tuple[str, ...] = ("bearer",)
    #: The credential may be left out (the metrics token, when none is configured).
    optional_auth: bool = False
    error: type[BaseModel] = a.ErrorBody
    #: Other media types of the answer (a stream, audio, text), with their schemas.
    media: dict[str, dict[str, Any]] = field(default_factory=dict)
    multipart: bool = False
    example: dict[str, Any] | None = None
    feature: str | None = None  # "topups", "files": present only when the server has it


CHAT_EXAMPLE = {
    "model": "openai/gpt-6-luna",
    "messages": [{"role": "user", "content": "Hello"}],
}
#: With ``"stream": true``: server-sent events, each a JSON ``data`` line (and a name in the
#: Responses and Messages APIs).
STREAM = {
    "text/event-stream": {
        "type": "object",
        "description": 'Each event of the stream (with "stream": true)',
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": ["data"],
    }
}
#: Speech in the ``response_format`` asked for, typed as its provider types it.
AUDIO = {"audio/*": {**BINARY, "description": "The audio, in the response_format asked for"}}
MESSAGES_AUTH = ("apiKey", "bearer")

#: The public routes, in the order the document lists them.
PUBLIC: tuple[Operation, ...] = (
    Operation("POST", "/v1/chat/completions", "Create a chat completion", "Chat",
              ChatRequest, a.ChatCompletion, media=STREAM, example=CHAT_EXAMPLE,
              errors=MODEL_CALL),
    Operation("POST", "/v1/responses", "Create a response (OpenAI's Responses API)", "Chat",
              CreateResponse, a.ResponseObject, media=STREAM, errors=MODEL_CALL,
              example={"model": "openai/gpt-6-luna", "input": "Hello"}),
    Operation("GET", "/v1/responses/{response_id}", "A stored response", "Chat",
              answer=a.ResponseObject),
    Operation("DELETE", "/v1/responses/{response_id}", "Delete a stored response", "Chat",
              answer=a.ResponseDeleted),
    Operation("POST", "/v1/messages", "Create a message (Anthropic's Messages API)", "Chat",
              CreateMessageParams, a.Message, security=MESSAGES_AUTH,
              error=a.AnthropicErrorBody, media=STREAM, errors=MODEL_CALL,
              example={"model": "anthropic/claude-sonnet-5-5", "max_tokens": 256,
                       "messages": [{"role": "user", "content": "Hello"}]}),
    Operation("POST", "/v1/messages/count_tokens", "Count a message's input tokens", "Chat",
              CountTokensParams, a.TokenCount, security=MESSAGES_AUTH,
              error=a.AnthropicErrorBody, errors=MODEL_CALL,
              example={"model": "anthropic/claude-sonnet-5-5",
                       "messages": [{"role": "user", "content": "Hello"}]}),
    Operation("POST", "/v1/embeddings", "Create embeddings", "Embeddings",
              EmbeddingRequest, a.EmbeddingList, errors=MODEL_CALL,
              example={"model": "openai/text-embedding-3-large", "input": "Hello"}),
    Operation("POST", "/v1/images/generations", "Create images", "Images", ImageRequest,
              a.ImagesResponse, example={"model": "openai/gpt-image-2", "prompt": "a lighthouse"},
              errors=MODEL_CALL),
    Operation("POST", "/v1/audio/speech", "Speak text", "Audio", SpeechRequest, media=AUDIO,
              errors=MODEL_CALL,
              example={"model": "openai/tts-1", "input": "Hello", "voice": "alloy"}),
    Operation("POST", "/v1/audio/transcriptions", "Transcribe audio", "Audio",
              TranscriptionRequest, a.Transcription, multipart=True, media={"text/plain": TEXT},
              errors=MODEL_CALL),
    Operation("GET", "/v1/audio/voices", "The voices of the speech models", "Audio",
              answer=a.VoiceList),
    Operation("GET", "/v1/models", "The models served", "Models", answer=a.ModelList),
    Operation("GET", "/v1/models/{model_id}", "One model (or alias)", "Models",
              answer=a.ModelObject),
    Operation("GET", "/v1/credits", "The account's credits", "Billing", answer=a.Credits),
    Operation("GET", "/v1/usage", "The account's calls and their cost", "Billing",
              answer=a.GenerationList, query=a.UsageQuery),
    Operation("GET", "/v1/generation/{request_id}", "One call and its cost", "Billing",
              answer=a.Generation),
    Operation("POST", "/v1/tasks", "Start a task (video and other slow jobs)", "Tasks",
              TaskCreate, a.Task, status=202, errors=MODEL_CALL,
              example={"model": "replicate/veo-3.1-fast",
                       "input": {"prompt": "waves", "duration": 4}}),
    Operation("GET", "/v1/tasks", "The account's tasks", "Tasks", answer=a.TaskList,
              query=a.TasksQuery),
    Operation("GET", "/v1/tasks/{id}", "One task", "Tasks", answer=a.Task),
    Operation("DELETE", "/v1/tasks/{id}", "Delete a task's outputs and content", "Tasks",
              answer=a.Task, errors=(*AUTHED, 503)),
    Operation("POST", "/v1/tasks/{id}/cancel", "Cancel a task (cost 0)", "Tasks",
              answer=a.Task, errors=(*AUTHED, 409)),
    Operation("POST", "/v1/topups", "Buy credits (a Stripe Checkout page)", "Top-ups",
              a.TopupCreate, a.Topup, status=201, feature="topups", errors=(*AUTHED, 409, 502, 503),
              example={"amount_usd": "20", "method": "card"}),
    Operation("GET", "/v1/topups", "The account's top-up orders", "Top-ups",
              answer=a.TopupList, query=a.PageQuery, feature="topups"),
    Operation("GET", "/v1/topups/{order_id}", "One top-up order", "Top-ups",
              answer=a.Topup, feature="topups"),
    Operation("GET", "/v1/files", "OpenAI's Files API: not served here (404)", "Files",
              security=(), errors=ANY),
    Operation("POST", "/v1/files", "OpenAI's Files API: not served here (404)", "Files",
              security=(), errors=ANY),
    Operation("GET", "/v1/files/{key}", "An output file by its signed URL", "Files",
              security=(), media={"application/octet-stream": BINARY}, feature="files",
              errors=(*ANY, 403)),
    Operation("POST", "/webhooks/{provider}/{id}", "An upstream's signed job event",
              "Webhooks", answer=a.WebhookReceived, security=(), errors=ANY),
    Operation("POST", "/webhooks/stripe", "Stripe's signed payment events", "Webhooks",
              answer=a.WebhookReceived, security=(), feature="topups", errors=ANY),
    Operation("GET", "/health", "This process answers (and its queued charges are written)",
              "Operations", answer=a.Health, security=(), errors=ANY),
    Operation("GET", "/health/live", "Liveness", "Operations", answer=a.Health, security=(),
              errors=ANY),
    Operation("GET", "/health/ready", "Readiness (503 when not ready)", "Operations",
              answer=a.Health, security=(), errors=(*ANY, 503)),
    Operation("GET", "/metrics", "Prometheus metrics", "Operations",
              security=("metricsToken",), optional_auth=True, media={"text/plain": TEXT},
              errors=(*ANY, 401)),
    Operation("GET", "/openapi.json", "This document", "Operations", security=(),
              media={"application/json": {"type": "object"}}, errors=ANY),
    Operation("GET", "/docs", "This document, rendered", "Operations", security=(),
              media={"text/html": TEXT}, errors=ANY),
    Operation("GET", "/docs/redoc.standalone.js", "The renderer of /docs (Redoc, MIT)",
              "Operations", security=(), media={"text/javascript": TEXT}, errors=ANY),
)  # fmt: skip

_PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


def _admin_operations() -> list[Operation]:
    return [
        Operation(
            e.method,
            e.path,
            e.summary,
            "Admin",
            e.body,
            e.response,
            query=e.query,
            security=("adminToken",),
            media={} if e.response else {"application/jsonl": TEXT, "text/csv": TEXT},
            errors=(*AUTHED, *e.conflicts),
        )
        for e in ADMIN_ENDPOINTS
    ]


def operations(features: set[str]) -> list[Operation]:
    """Every operation of a server with ``features`` ("topups", "files")."""
    public = [o for o in PUBLIC if o.feature is None or o.feature in features]
    return public + _admin_operations()


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        branches = [b for b in prop.get("anyOf", ()) if b.get("type") != "null"]
        if branches:  # a query parameter is absent, never null
            prop = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
            prop.update(branches[0] if len(branches) == 1 else {"anyOf": branches})
        out.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": prop.pop("description", ""),
                "schema": prop,
            }
        )
    return out


def _multipart(schema: dict[str, Any]) -> dict[str, Any]:
    """A multipart upload's form: the model's fields, ``file`` as the bytes it reads (its
    name and type come with the part, not as fields)."""
    properties = {
        k: v for k, v in schema["properties"].items() if k not in ("filename", "file_content_type")
    }
    properties["file"] = BINARY
    return {**schema, "properties": properties}


def build_document(features: set[str]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server with ``features``."""
    ops = operations(features)
    requests = {o.body for o in ops if o.body is not None and not o.multipart}
    answers = {o.answer for o in ops if o.answer is not None} | {o.error for o in ops}
    keyed = [(m, "validation") for m in requests] + [(m, "serialization") for m in answers]
    refs, defs = models_json_schema(
        sorted(keyed, key=lambda k: (k[0].__name__, k[1])),
        ref_template="#/components/schemas/{model}",
    )
    components = defs.get("$defs", {})

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return refs[(model, mode)]  # type: ignore[index]

    paths: dict[str, dict[str, Any]] = {}
    for o in ops:
        path = _PATH_PARAM.sub(r"{\1}", o.path)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(o.path)
        ]
        if o.query is not None:
            parameters += _query_parameters(o.query)
        content: dict[str, Any] = {}
        if o.answer is not None:
            content["application/json"] = {"schema": ref(o.answer, "serialization")}
        content.update({media: {"schema": schema} for media, schema in o.media.items()})
        operation: dict[str, Any] = {
            "operationId": f"{o.method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', path)}".rstrip("_"),
            "summary": o.summary,
            "tags": [o.tag],
            "security": [{name: []} for name in o.security] + ([{}] if o.optional_auth else []),
            "responses": {
                str(o.status): {"description": o.summary, "content": content}
                if content
                else {"description": o.summary},
                **{
                    str(code): {
                        "description": STATUSES[code],
                        "content": {"application/json": {"schema": ref(o.error, "serialization")}},
                    }
                    for code in sorted(o.errors)
                },
            },
        }
        if parameters:
            operation["parameters"] = parameters
        if o.body is not None:
            if o.multipart:
                body = {"multipart/form-data": {"schema": _multipart(o.body.model_json_schema())}}
            else:
                body = {"application/json": {"schema": ref(o.body, "validation")}}
                if o.example is not None:
                    body["application/json"]["example"] = o.example
            operation["requestBody"] = {"required": True, "content": body}
        paths.setdefault(path, {})[o.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "apimodels",
            "version": __version__,
            "description": "One endpoint and one API key for many AI model providers "
            "(docs/api.md), and the operator's admin API (docs/admin.md). Errors are "
            'OpenAI\'s {"error": {message, type, code, param}}; the Messages API answers '
            "Anthropic's shape.",
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>apimodels API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><redoc spec-url="openapi.json"></redoc>
<script src="docs/redoc.standalone.js"></script></body></html>
"""


def docs_routes(features: set[str]) -> list[tuple[str, Any, list[str]]]:
    """``/openapi.json``, ``/docs`` and the renderer's script, each made once."""
    document = json.dumps(build_document(features), separators=(",", ":")).encode()
    script = (
        resources.files("apimodels") / "static" / "redoc" / "redoc.standalone.js"
    ).read_bytes()

    async def openapi_json(request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(_PAGE)

    async def renderer(request: Request) -> Response:
        headers = {"cache-control": "public, max-age=86400"}
        return Response(script, media_type="text/javascript", headers=headers)

    return [
        ("/openapi.json", openapi_json, ["GET"]),
        ("/docs", docs, ["GET"]),
        ("/docs/redoc.standalone.js", renderer, ["GET"]),
    ]
