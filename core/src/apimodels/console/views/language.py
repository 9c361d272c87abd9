"""The language switch: a cookie the page wrapper reads (``i18n.choose``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import i18n
from ..app import PREFIX, Console, page, redirect


def routes(console: Console) -> list[BaseRoute]:
    async def switch(request: Request) -> Response:
        code = request.path_params["code"]
        target = request.query_params.get("next", "")
        # Only a page of the Console (never another site) afterwards.
        if not target.startswith(PREFIX + "/") or target.startswith("//"):
            target = PREFIX + "/dashboard"
        response = redirect(target.removeprefix(PREFIX))
        if code in i18n.LANGUAGES:
            console.set_cookie(request, response, i18n.COOKIE, code, max_age=365 * 86400)
        return response

    return [Route("/language/{code}", page(console, switch, signed_in=False), methods=["GET"])]
