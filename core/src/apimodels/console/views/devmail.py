"""``/console/dev/mail`` (sandbox mode only): the mail the local SMTP sink received, so a
person trying the sandbox can click the links. Never served outside the sandbox."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..app import Console, page


def routes(console: Console) -> list[BaseRoute]:
    sink = console.sink
    if sink is None:
        return []

    async def inbox(request: Request) -> Response:
        return console.render(request, "dev_mail.html", messages=list(reversed(sink.messages())))

    return [Route("/dev/mail", page(console, inbox, signed_in=False), methods=["GET"])]
