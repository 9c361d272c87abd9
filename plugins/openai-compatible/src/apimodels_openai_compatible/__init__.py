"""apimodels provider plugin for any OpenAI-compatible server: chat completions (streamed or
not) and embeddings from vLLM, Ollama, Groq, Together, DeepSeek, Mistral, OpenRouter or an
in-house endpoint, reached by base URL.

It registers one provider, ``openai-compatible``, with no base URL of its own: each
``[providers.NAME]`` of registry.toml with ``kind = "openai-compatible"`` is an instance,
with its own base URL, key, headers, models and prices, and its server's quirks in
``[providers.NAME.settings]`` (:class:`Settings`).

Sans-I/O, like every provider plugin. What it does beyond passing the body through:

- the output limit goes under the field the server takes (``max_tokens_field``), fields the
  server refuses are dropped (``drop_params``), the instance's ``extra_body`` is added;
- streams ask for the final usage chunk when the server accepts ``stream_options``
  (``stream_usage``); a usage the server reports unasked (Mistral's last chunk, Groq's
  ``x_groq.usage``) is read too; DeepSeek's ``prompt_cache_hit_tokens`` count as cached
  input;
- base64 embeddings: ``encoding_format`` is passed through, and whatever floats come back
  to a base64 request (a server without the field, or one told not to get it through
  ``drop_params``) are encoded by the plugin as OpenAI encodes them (little-endian
  float32): the client gets base64 either way;
- an error the server reports in a 2xx body or inside a stream (``{"error": {...}}``, as
  OpenRouter does once a model has started) is raised as the error it means: its
  ``code`` read as an HTTP status (429 rate limited, 503 overloaded...), else a 502. Errors
  with an HTTP error status are left to the core's mapping.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx

import apimodels_openai
from apimodels import (
    APIError,
    ChatRequest,
    EmbeddingRequest,
    InvalidRequest,
    ModelConfig,
    Output,
    ProviderSpec,
    RateLimited,
    StreamEvent,
    UnifiedRequest,
    Upstream,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
    Usage,
    fastjson,
    hookimpl,
)

from .settings import DEFAULT, Settings

apimodels_hook_api = ">=2,<3"  # the hook-API versions this plugin is written for

__all__ = ["PROVIDER", "Settings", "base64_embedding"]

PROVIDER = "openai-compatible"

#: Statuses an error reported in a body may name that are the client's doing.
_CLIENT_STATUSES = frozenset({400, 404, 413, 422})


@hookimpl
def register_providers(register: Any) -> None:
    register(
        ProviderSpec(
            name=PROVIDER,
            base_url="",  # each instance sets its own
            api_key_env="OPENAI_COMPATIBLE_API_KEY",
            simulator="apimodels_openai_compatible.simulator:create_app",  # imported only when a simulator runs
            settings=Settings,
            description="Any OpenAI-compatible server by base URL: chat, embeddings",
            data_sent="prompts and messages, and text to embed, to the server each instance names",
        )
    )


#: The same upper bounds as OpenAI's (a token is at least a byte of text, plus each
#: message's framing), which hold for the byte-level BPE and SentencePiece tokenizers of
#: the open models these servers run.
estimate_usage = apimodels_openai.estimate_usage


@hookimpl
def build_request(
    model: ModelConfig, request: UnifiedRequest, upstream: Upstream
) -> httpx.Request | None:
    settings: Settings = upstream.settings or DEFAULT  # type: ignore[assignment]
    body = request.passthrough()
    body["model"] = model.upstream
    if isinstance(request, ChatRequest):
        path = "/chat/completions"
        limit = body.pop("max_completion_tokens", None)
        legacy = body.pop("max_tokens", None)
        if limit or legacy:
            body[settings.max_tokens_field] = limit or legacy
        if request.stream and settings.stream_usage:
            # Billing needs the final usage even when the client did not ask (it is then
            # dropped before reaching the client).
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        elif request.stream:
            body.pop("stream_options", None)
    elif isinstance(request, EmbeddingRequest):
        path = "/embeddings"
    else:
        return None
    for name in settings.drop_params:
        body.pop(name, None)
    body.update(settings.extra_body)
    headers = {"authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
    return upstream.json_request("POST", path, body, headers)


def _usage(reported: Any) -> Usage | None:
    """The usage as the server reported it (the core refuses an impossible one), or None."""
    if not isinstance(reported, dict) or "prompt_tokens" not in reported:
        return None
    details = reported.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens", reported.get("prompt_cache_hit_tokens"))  # DeepSeek
    return Usage(
        input_tokens=reported["prompt_tokens"],
        cached_input_tokens=cached or 0,
        output_tokens=reported.get("completion_tokens") or 0,
    )


def reported_error(model: ModelConfig, error: Any) -> APIError:
    """The client's error for ``{"error": ...}`` in a 2xx body or a stream event: its
    ``code`` read as an HTTP status where it is one (OpenRouter's are)."""
    fields = error if isinstance(error, dict) else {"message": error}
    code, name = fields.get("code"), model.provider
    message = str(fields.get("message") or f"{name} reported an error")
    if code == 429:
        return RateLimited(f"{name} is rate limiting requests; retry later")
    if code in (503, 529):
        return UpstreamOverloaded(f"{name} is overloaded; retry later")
    if code == 408:
        return UpstreamTimeout(f"{name} timed out")
    if code in _CLIENT_STATUSES:
        return InvalidRequest(
            message, code="upstream_rejected", status=code if code != 413 else 400
        )
    return UpstreamError(f"{name} reported an error: {message}")


def base64_embedding(vector: list[float]) -> str:
    """An embedding as OpenAI's base64: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@hookimpl
def parse_response(
    model: ModelConfig, request: UnifiedRequest, response: httpx.Response
) -> Output | None:
    body = fastjson.loads(response.content)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if body.get("error"):
        raise reported_error(model, body["error"])
    body["model"] = model.id
    if isinstance(request, EmbeddingRequest) and request.encoding_format == "base64":
        for item in body["data"]:
            if isinstance(item["embedding"], list):  # the server sent floats
                item["embedding"] = base64_embedding(item["embedding"])
    return Output(body, _usage(body.get("usage")))


@hookimpl
def parse_stream_event(
    model: ModelConfig, request: UnifiedRequest, data: str
) -> StreamEvent | None:
    chunk = fastjson.loads(data)
    if not isinstance(chunk, dict):
        raise ValueError("not a JSON object")
    if chunk.get("error"):
        raise reported_error(model, chunk["error"])
    chunk["model"] = model.id
    reported = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage")
    if not reported:
        return StreamEvent(chunk)
    wanted = (
        isinstance(request, ChatRequest)
        and request.stream_options is not None
        and request.stream_options.include_usage
    )
    if not wanted:
        if not chunk.get("choices"):
            return StreamEvent(None, _usage(reported))  # a billing-only chunk
        chunk.pop("usage", None)  # the client did not ask for it
    else:
        chunk["usage"] = reported  # where the client (and the cost) expects it
    return StreamEvent(chunk, _usage(reported))
