"""``GET /v1/responses/{id}``: a stored Responses API answer, to the account that made it.

``POST /v1/responses`` itself is the chat pipeline in the Responses API's shape
(``apimodels.dialects.responses``, served by ``Frontend.dialect``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from ..errors import NotFound
from ..store.accounts import KeyStore
from ..store.responses import StoredResponses


def retrieve_endpoint(
    keys: KeyStore, stored: StoredResponses
) -> Callable[[Request], Awaitable[Response]]:
    async def retrieve(request: Request) -> Response:
        principal = keys.authenticate(request.headers.get("authorization"))
        response_id = request.path_params["response_id"]
        found = stored.get(response_id, principal.account_id)
        if found is None:  # unknown, or another account's: the same answer
            raise NotFound(
                f"No response with id '{response_id}' found.", code="not_found", param="response_id"
            )
        return Response(found[0], media_type="application/json")

    return retrieve
