"""``POST /v1/messages/count_tokens``: the input tokens of a Messages API request, as the
model's provider estimates them (the same upper bound the gateway holds credits for), not a
count by the model's own tokenizer. Free, and nothing is sent upstream.

``POST /v1/messages`` itself is the chat pipeline in Anthropic's shape
(``apimodels.dialects.messages``, served by ``Frontend.dialect``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from .. import fastjson
from ..dialects import read_model
from ..dialects.messages import API, CountTokensParams, MessagesAPI, chat_request
from ..schemas import Modality
from .reading import read_json

if TYPE_CHECKING:
    from .app import Frontend


def count_tokens_endpoint(
    frontend: Frontend, dialect: MessagesAPI
) -> Callable[[Request], Awaitable[Response]]:
    async def count_tokens(request: Request) -> Response:
        await frontend.keys.check(dialect.credentials(request.headers))
        params = read_model(CountTokensParams, await read_json(request), API)
        chat = chat_request(params)
        route = frontend.route_for(chat.model, Modality.chat, "messages/count_tokens")
        usage = route.provider.hooks.estimate_usage(model=route.model, request=chat)
        tokens = usage.input_tokens if usage else 0
        body = {"input_tokens": tokens}
        return Response(fastjson.dumps(body), media_type="application/json")

    return count_tokens
