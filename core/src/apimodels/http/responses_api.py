"""``GET`` and ``DELETE /v1/responses/{id}``: a stored Responses API answer, to (and by)
the account that made it.

``POST /v1/responses`` itself is the chat pipeline in the Responses API's shape
(``apimodels.dialects.responses``, served by ``Frontend.dialect``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from .. import fastjson
from ..errors import NotFound
from ..store.accounts import KeyStore
from ..store.responses import StoredResponses


def _not_found(response_id: str) -> NotFound:
    # Unknown, deleted, or another account's: the same answer.
    return NotFound(
        f"No response with id '{response_id}' found.", code="not_found", param="response_id"
    )


def retrieve_endpoint(
    keys: KeyStore, stored: StoredResponses
) -> Callable[[Request], Awaitable[Response]]:
    async def retrieve(request: Request) -> Response:
        principal = await keys.check(request.headers.get("authorization"))
        response_id = request.path_params["response_id"]
        found = stored.get(response_id, principal.account_id)
        if found is None:
            raise _not_found(response_id)
        return Response(found[0], media_type="application/json")

    return retrieve


def delete_endpoint(
    keys: KeyStore, stored: StoredResponses
) -> Callable[[Request], Awaitable[Response]]:
    async def delete(request: Request) -> Response:
        principal = await keys.check(request.headers.get("authorization"))
        response_id = request.path_params["response_id"]
        if not stored.delete(response_id, principal.account_id):
            raise _not_found(response_id)
        body = {"id": response_id, "object": "response", "deleted": True}
        return Response(fastjson.dumps(body), media_type="application/json")

    return delete
