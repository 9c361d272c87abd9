"""apimodels provider plugin for Anthropic's Messages API (Claude).

Sans-I/O: these hooks build the upstream ``httpx.Request`` and read the upstream
``httpx.Response``; the core sends, retries, streams and bills. Clients speak Chat
Completions to the gateway; ``messages`` maps requests and answers to and from Anthropic's
Messages, ``stream`` its named stream events, ``errors`` its error types.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from apimodels import (
    APIError,
    ChatRequest,
    ModelConfig,
    Output,
    ProviderSpec,
    StreamEvent,
    UnifiedRequest,
    Upstream,
    Usage,
    fastjson,
    hookimpl,
)

from . import errors, messages, stream

apimodels_hook_api = ">=2,<3"  # the hook-API versions this plugin is written for

PROVIDER = errors.PROVIDER
#: The API version every request names (``anthropic-version``): Messages as documented.
API_VERSION = "2023-06-01"
#: Tokens the Messages format adds around each message (an upper bound).
_MESSAGE_OVERHEAD = 8
#: Tokens allowed per image in the estimate: Anthropic resizes an image to at most about
#: 1.15 megapixels, some 1,600 tokens (width x height / 750); newer tokenizers count more.
_IMAGE_ALLOWANCE = 2500


@hookimpl
def register_providers(register: Any) -> None:
    register(
        ProviderSpec(
            name=PROVIDER,
            base_url="https://api.anthropic.com/v1",
            api_key_env="ANTHROPIC_API_KEY",
            simulator="apimodels_anthropic.simulator:create_app",  # imported only when a simulator runs
            description="Anthropic: Claude chat (Messages API) with tools, images, prompt caching",
            stream_format="sse",
            data_sent="prompts and messages, with the images in them, and tool definitions",
        )
    )


def _bytes(value: Any) -> int:
    # A token is at least one byte of the text it stands for: bytes bound tokens.
    return len(value.encode()) if isinstance(value, str) else len(json.dumps(value).encode())


@hookimpl
def estimate_usage(model: ModelConfig, request: UnifiedRequest) -> Usage | None:
    if not isinstance(request, ChatRequest):
        return None
    extra = request.model_extra or {}
    tools = extra.get("tools")
    prompt = _bytes(request.text()) + (_bytes(tools) if tools else 0)
    for message in request.messages:
        prompt += _MESSAGE_OVERHEAD
        if message.model_extra and message.model_extra.get("tool_calls"):
            prompt += _bytes(message.model_extra["tool_calls"])
        if isinstance(message.content, list):
            images = sum(1 for p in message.content if p.get("type") == "image_url")
            prompt += _IMAGE_ALLOWANCE * images
    return Usage(
        input_tokens=prompt,
        # With caching asked for, the whole prompt may be written to the cache (dearer).
        cache_write_tokens=prompt if messages.uses_cache(request) else 0,
        output_tokens=messages.max_tokens(model, request),
    )


@hookimpl
def build_request(
    model: ModelConfig, request: UnifiedRequest, upstream: Upstream
) -> httpx.Request | None:
    if not isinstance(request, ChatRequest):
        return None
    headers = {"x-api-key": upstream.api_key or "", "anthropic-version": API_VERSION}
    return upstream.json_request("POST", "/messages", messages.to_messages(model, request), headers)


@hookimpl
def parse_response(
    model: ModelConfig, request: UnifiedRequest, response: httpx.Response
) -> Output | None:
    if not isinstance(request, ChatRequest):
        return None
    body = fastjson.loads(response.content)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if body.get("type") == "error":  # never seen with a 2xx, but read as what it says
        raise errors.from_error(body.get("error")) or ValueError("an error of no known type")
    completion = messages.to_completion(model, body)
    return Output(completion, messages.usage(body.get("usage")))


@hookimpl
def parse_stream_event(
    model: ModelConfig,
    request: UnifiedRequest,
    data: str,
    event: str | None,
    state: dict[str, Any],
) -> StreamEvent | None:
    return stream.event(model, request, data, event, state)


@hookimpl
def parse_error(model: ModelConfig, response: httpx.Response) -> APIError | None:
    return errors.from_response(response)
