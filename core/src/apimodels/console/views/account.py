"""Account: email, password change, sessions (sign out one or everywhere), the low-balance
threshold, export of everything kept (JSON) and closing the account (``privacy.closing``,
as the CLI)."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...billing.money import to_micros
from ...privacy.closing import close_account, export_account
from .. import sessions, users
from ..app import Console, page, redirect
from ..i18n import _
from ..passwords import check_new_password, hash_password, verify_password
from .keys import _limit


def routes(console: Console) -> list[BaseRoute]:
    def show(request: Request, status: int = 200, **extra: object) -> Response:
        session = request.scope["console_session"]
        return console.render(
            request,
            "account.html",
            status,
            account=users.get(console.db, session.account_id),
            sessions=sessions.active(console.db, session.account_id),
            default_low=to_micros(console.config.low_balance_usd),
            acceptances=console.legal.history(console.db, session.account_id),
            **extra,
        )

    async def index(request: Request) -> Response:
        return show(request)

    async def password(request: Request) -> Response:
        form = await console.form(request)
        session = request.scope["console_session"]
        current, new = form.get("current_password"), form.get("new_password")
        current = current if isinstance(current, str) else ""
        new = new if isinstance(new, str) else ""
        stored = users.get(console.db, session.account_id)["password_hash"]
        if not await asyncio.to_thread(verify_password, stored, current):
            return show(request, 422, error=_("The current password is wrong."))
        if error := check_new_password(new):
            return show(request, 422, error=error)
        users.set_password_hash(
            console.db, session.account_id, await asyncio.to_thread(hash_password, new)
        )
        sessions.revoke_all(console.db, session.account_id, keep=session.id)
        return show(request, notice=_("Password changed; your other sessions are signed out."))

    async def revoke_session(request: Request) -> Response:
        await console.form(request)
        session = request.scope["console_session"]
        sessions.revoke(console.db, request.path_params["session_id"], session.account_id)
        if request.path_params["session_id"] == session.id:
            response = redirect("/sign-in")
            console.sign_out(response)
            return response
        return show(request, notice=_("Session signed out."))

    async def everywhere(request: Request) -> Response:
        await console.form(request)
        session = request.scope["console_session"]
        sessions.revoke_all(console.db, session.account_id)
        response = redirect("/sign-in")
        console.sign_out(response)
        return response

    async def low_balance(request: Request) -> Response:
        form = await console.form(request)
        session = request.scope["console_session"]
        users.set_low_balance(
            console.db, session.account_id, _limit(form, "low_balance_usd", money=True)
        )
        return show(request, notice=_("Low-balance alert saved."))

    async def export(request: Request) -> Response:
        session = request.scope["console_session"]
        data = export_account(
            console.db,
            console.task_store,
            console.storage,
            session.account_id,
            public_url=console.origin(request),
        )
        body = json.dumps(data, indent=2, default=str)
        headers = {
            "content-disposition": 'attachment; filename="apimodels-account.json"',
            "cache-control": "no-store",
        }
        return Response(body, media_type="application/json", headers=headers)

    async def close(request: Request) -> Response:
        form = await console.form(request)
        session = request.scope["console_session"]
        if form.get("confirm") != session.email:
            return show(request, 422, error=_("Type your email address to confirm closing."))
        stored = users.get(console.db, session.account_id)["password_hash"]
        entered = form.get("password")
        if not await asyncio.to_thread(
            verify_password, stored, entered if isinstance(entered, str) else ""
        ):
            return show(request, 422, error=_("The password is wrong."))
        close_account(
            console.db,
            console.ledger,
            console.task_store,
            session.account_id,
            "closed by its holder in the Console",
            actor=f"console:{session.account_id}",
            grace_days=console.catalog.privacy.close_grace_days,
        )
        console.keys.forget_account(session.account_id)
        sessions.revoke_all(console.db, session.account_id)
        response = console.render(
            request,
            "message.html",
            title=_("Account closed"),
            message=_("Your account is closed and its keys are revoked."),
        )
        console.sign_out(response)
        return response

    return [
        Route("/account", page(console, index), methods=["GET"]),
        Route("/account/password", page(console, password), methods=["POST"]),
        Route(
            "/account/sessions/{session_id}/revoke", page(console, revoke_session), methods=["POST"]
        ),
        Route("/account/sign-out-everywhere", page(console, everywhere), methods=["POST"]),
        Route("/account/low-balance", page(console, low_balance), methods=["POST"]),
        Route("/account/export.json", page(console, export), methods=["GET"]),
        Route("/account/close", page(console, close), methods=["POST"]),
    ]
