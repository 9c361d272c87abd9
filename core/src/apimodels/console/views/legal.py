"""The Terms and the Privacy Policy in force (public), and accepting them."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..app import Console, client_ip, page, redirect


def routes(console: Console) -> list[BaseRoute]:
    def document(kind: str):  # type: ignore[no-untyped-def]
        async def show(request: Request) -> Response:
            doc = console.legal.current.get(kind)
            if doc is None:
                raise HTTPException(404, "This server has not published this document.")
            return console.render(request, "legal.html", doc=doc)

        return show

    async def accept(request: Request) -> Response:
        form = await console.form(request)
        session = request.scope["console_session"]
        kinds = [k for k in form.getlist("document") if isinstance(k, str)]
        console.legal.accept(console.db, session.account_id, kinds, client_ip(request))
        return redirect("/dashboard")

    public = {"signed_in": False}
    return [
        Route("/terms", page(console, document("terms"), **public), methods=["GET"]),
        Route("/privacy", page(console, document("privacy"), **public), methods=["GET"]),
        Route("/legal/accept", page(console, accept), methods=["POST"]),
    ]
