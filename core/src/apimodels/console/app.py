"""The Console's assembly: its dependencies in one object, page rendering, the signed-in
guard, CSRF on every form and the cookies; the pages themselves are in ``views``.

Mounted at ``/console`` by ``server.assemble`` (on by default in sandbox mode).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import sqlite_utils
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..admin.operators import is_admin, may_operate
from ..billing.ledger import Ledger
from ..billing.money import format_usd
from ..catalog import Catalog
from ..errors import APIError
from ..storage import Storage
from ..store.accounts import KeyStore
from ..tasks.store import TaskStore
from . import i18n, sessions, users
from .config import ConsoleConfig
from .csrf import CSRF, FIELD, PRE_SESSION_COOKIE
from .i18n import _
from .legal import Legal
from .mail import MailSink, Notifier
from .throttle import Throttle

if TYPE_CHECKING:
    from ..http.topups import TopupsAPI
    from ..tasks import TaskRunner

log = logging.getLogger("apimodels.console")
HERE = Path(__file__).parent
PREFIX = "/console"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
Endpoint = Callable[[Request], Awaitable[Response]]


def usd(micros: int | None) -> str:
    """Micro-USD as the Console shows money: "$12.345678" trimmed to whole cents or more."""
    text = format_usd(micros or 0)
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"${whole}.{fraction}".replace("$-", "-$")


def minor(amount: int) -> str:
    """An amount in a currency's minor units (cents, fen) as text: 1234 -> "12.34"."""
    return f"{Decimal(amount).scaleb(-2):.2f}"


@dataclass
class Console:
    """Everything the pages use: the same services the API and the CLI call."""

    config: ConsoleConfig
    catalog: Catalog
    db: sqlite_utils.Database
    ledger: Ledger
    keys: KeyStore
    task_store: TaskStore
    storage: Storage
    notifier: Notifier
    csrf: CSRF
    throttle: Throttle
    legal: Legal
    sandbox: bool = False
    routes_by_model: dict[str, Any] = field(default_factory=dict)
    runner: TaskRunner | None = None
    topups: TopupsAPI | None = None
    sink: MailSink | None = None
    public_url: str | None = None
    templates: Environment = field(init=False)

    def __post_init__(self) -> None:
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            auto_reload=False,
            extensions=["jinja2.ext.i18n"],
        )
        self.templates.install_gettext_callables(  # type: ignore[attr-defined]
            i18n._, i18n.ngettext, newstyle=True
        )
        self.templates.globals["languages"] = i18n.LANGUAGES
        self.templates.filters["usd"] = usd
        self.templates.filters["minor"] = minor
        self.templates.globals["prefix"] = PREFIX

    # --- rendering ------------------------------------------------------------------------

    def origin(self, request: Request) -> str:
        """Where links in mail point: ``public_url``, or the address this request came to."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"{request.url.scheme}://{request.url.netloc}"

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        session: sessions.Session | None = request.scope.get("console_session")
        binding, new_binding = self._binding(request, session)
        body = self.templates.get_template(template).render(
            request=request,
            session=session,
            csrf_field=FIELD,
            csrf_token=self.csrf.token(binding),
            sandbox=self.sandbox,
            language=i18n.current.get(),
            legal_pending=self.legal.pending(self.db, session.account_id) if session else [],
            **context,
        )
        response = HTMLResponse(body, status)
        response.headers["cache-control"] = "no-store"
        response.headers["x-frame-options"] = "DENY"
        response.headers["referrer-policy"] = "same-origin"
        response.headers["content-security-policy"] = (
            "default-src 'self'; img-src 'self' data:; media-src 'self' http: https:;"
            " style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self' http: https:"
        )
        if new_binding:
            self.set_cookie(request, response, PRE_SESSION_COOKIE, binding, max_age=None)
        return response

    def _binding(self, request: Request, session: sessions.Session | None) -> tuple[str, bool]:
        if session is not None:
            return session.token, False
        existing = request.cookies.get(PRE_SESSION_COOKIE)
        return (existing, False) if existing else (self.csrf.new_binding(), True)

    def set_cookie(
        self, request: Request, response: Response, name: str, value: str, max_age: int | None
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=PREFIX,
            httponly=True,
            secure=request.url.hostname not in LOCAL_HOSTS,
            samesite="lax",
        )

    def sign_in(self, request: Request, response: Response, account_id: str) -> None:
        """A new session (never the one the browser had) and its cookie."""
        old = request.cookies.get(sessions.COOKIE)
        if old:
            current = sessions.load(self.db, old)
            if current is not None:
                sessions.revoke(self.db, current.id, current.account_id)
        token = sessions.start(
            self.db,
            account_id,
            days=self.config.session_days,
            user_agent=request.headers.get("user-agent", ""),
            ip=client_ip(request),
            role=sessions.OPERATOR
            if may_operate(self.db, users.get(self.db, account_id))
            else sessions.HOLDER,
        )
        self.set_cookie(
            request, response, sessions.COOKIE, token, max_age=self.config.session_days * 86400
        )

    @staticmethod
    def sign_out(response: Response) -> None:
        response.delete_cookie(sessions.COOKIE, path=PREFIX)

    # --- requests ------------------------------------------------------------------------

    async def form(self, request: Request) -> FormData:
        """The posted form, once its CSRF token checks (403 otherwise)."""
        form = await request.form()
        session: sessions.Session | None = request.scope.get("console_session")
        binding = session.token if session else request.cookies.get(PRE_SESSION_COOKIE)
        sent = form.get(FIELD)
        if not self.csrf.valid(request, binding, sent if isinstance(sent, str) else None):
            raise HTTPException(403, _("The form has expired or did not come from this site."))
        return form


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(PREFIX + path, 303)


def page(
    console: Console, handler: Endpoint, *, signed_in: bool = True, operator: bool = False
) -> Endpoint:
    """An endpoint with the session loaded (``request.scope["console_session"]``); a signed-in
    page sends a visitor without a session to sign in; an ``operator`` page answers 403 to any
    session but an operator's (whose email is still an operator's); errors become pages."""

    async def endpoint(request: Request) -> Response:
        session = sessions.load(console.db, request.cookies.get(sessions.COOKIE))
        request.scope["console_session"] = session
        i18n.current.set(
            i18n.choose(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))
        )
        if signed_in and session is None:
            if request.method != "GET":
                return console.render(request, "error.html", 403, message=_("Sign in first."))
            return redirect(f"/sign-in?next={quote(request.url.path)}")
        if operator and not is_operator(console, session):
            return console.render(request, "error.html", 403, message=_("Operators only."))
        try:
            return await handler(request)
        except HTTPException as exc:
            return console.render(request, "error.html", exc.status_code, message=exc.detail)
        except APIError as exc:
            status = exc.status if exc.status in (400, 402, 403, 404, 409, 422, 429) else 502
            return console.render(request, "error.html", status, message=exc.message)

    return endpoint


def is_operator(console: Console, session: sessions.Session | None) -> bool:
    return (
        session is not None
        and session.role == sessions.OPERATOR
        and is_admin(console.db, session.email) is not None
    )


def build_app(console: Console, routes: list[BaseRoute]) -> Starlette:
    """The Console's ASGI app, mounted at ``/console``."""
    statics = Mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app = Starlette(routes=[*routes, statics])
    app.state.console = console
    return app


def grace(catalog: Catalog) -> timedelta:
    return timedelta(hours=catalog.gateway.key_rotation_grace_hours)


def mount(console: Console) -> Mount:
    from .views import all_routes  # the pages, once at startup

    return Mount(PREFIX, app=build_app(console, all_routes(console)))


__all__ = ["PREFIX", "Console", "Route", "mount", "page", "redirect", "usd"]
