"""Sign up, sign in and out, verify the email address, reset the password."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...store.accounts import create_account
from .. import links, sessions, users
from ..app import Console, client_ip, page, redirect
from ..i18n import _
from ..mail import Mail
from ..passwords import check_new_password, hash_password, verify_password

log = logging.getLogger("apimodels.console")


def _text(form: object, name: str) -> str:
    value = form.get(name)  # type: ignore[attr-defined]
    return value.strip() if isinstance(value, str) else ""


def _safe_next(value: str | None) -> str:
    """Only a path of the Console (never another site) after sign-in."""
    if value and value.startswith("/console/") and not value.startswith("//"):
        return value
    return "/console/dashboard"


async def send_verification(
    console: Console, request: Request, account_id: str, email: str
) -> None:
    token = links.issue(console.db, account_id, "verify")
    link = f"{console.origin(request)}/console/verify/{token}"
    await console.notifier.send(
        Mail(
            email,
            "Verify your email address",
            f"Welcome to apimodels.\n\nOpen this link to verify your email address (valid 2 days):\n{link}\n",
            "verify",
        )
    )


def routes(console: Console) -> list[BaseRoute]:
    async def sign_up_form(request: Request) -> Response:
        return console.render(request, "sign_up.html", legal=console.legal.current)

    async def sign_up(request: Request) -> Response:
        form = await console.form(request)
        email, password = _text(form, "email").lower(), form.get("password")
        password = password if isinstance(password, str) else ""
        error = check_new_password(password)
        if console.legal.current and form.get("accept") != "yes":
            error = _("Accept the Terms and the Privacy Policy to create an account.")
        if "@" not in email or len(email) > 254:
            error = _("Enter an email address.")
        elif users.find_by_email(console.db, email) is not None:
            # Said plainly: the address is the holder's own, and reset covers the rest.
            error = _("An account with this email exists: sign in, or reset its password.")
        if error:
            return console.render(
                request, "sign_up.html", 422, error=error, email=email, legal=console.legal.current
            )
        account = create_account(console.db, email)
        users.set_password_hash(
            console.db, account["id"], await asyncio.to_thread(hash_password, password)
        )
        console.legal.accept(
            console.db, account["id"], list(console.legal.current), client_ip(request)
        )
        await send_verification(console, request, account["id"], email)
        response = redirect("/dashboard")
        console.sign_in(request, response, account["id"])
        return response

    async def sign_in_form(request: Request) -> Response:
        return console.render(
            request, "sign_in.html", next=_safe_next(request.query_params.get("next"))
        )

    async def sign_in(request: Request) -> Response:
        form = await console.form(request)
        email = _text(form, "email").lower()
        password = form.get("password")
        password = password if isinstance(password, str) else ""
        ip = client_ip(request)
        target = _safe_next(_text(form, "next"))
        if console.throttle.blocked(email, ip):
            response = console.render(
                request,
                "sign_in.html",
                429,
                error=_("Too many failed attempts. Wait a few minutes, or reset your password."),
                email=email,
                next=target,
            )
            response.headers["retry-after"] = str(console.throttle.retry_after_seconds)
            return response
        account = users.find_by_email(console.db, email)
        stored = account["password_hash"] if account else None
        ok = await asyncio.to_thread(verify_password, stored, password)
        if not ok or account is None or account["status"] == "closed":
            console.throttle.failed(email, ip)
            return console.render(
                request,
                "sign_in.html",
                401,
                error=_("Wrong email or password."),
                email=email,
                next=target,
            )
        console.throttle.succeeded(email)
        response = redirect(target.removeprefix("/console"))
        console.sign_in(request, response, account["id"])
        return response

    async def sign_out(request: Request) -> Response:
        await console.form(request)
        session = request.scope["console_session"]
        sessions.revoke(console.db, session.id, session.account_id)
        response = redirect("/sign-in")
        console.sign_out(response)
        return response

    async def verify(request: Request) -> Response:
        account_id = links.use(console.db, request.path_params["token"], "verify")
        if account_id is None:
            return console.render(
                request,
                "message.html",
                400,
                title=_("Link not valid"),
                message=_("This link has expired or was used already. Sign in to get a new one."),
            )
        users.mark_verified(console.db, account_id)
        return console.render(
            request,
            "message.html",
            title=_("Email verified"),
            message=_("Your email address is verified."),
        )

    async def resend(request: Request) -> Response:
        await console.form(request)
        session = request.scope["console_session"]
        await send_verification(console, request, session.account_id, session.email)
        return console.render(
            request,
            "message.html",
            title=_("Link sent"),
            message=f"A new link went to {session.email}.",
        )

    async def reset_request_form(request: Request) -> Response:
        return console.render(request, "reset_request.html")

    async def reset_request(request: Request) -> Response:
        form = await console.form(request)
        email = _text(form, "email").lower()
        account = users.find_by_email(console.db, email)
        if account is not None and account["status"] != "closed":
            token = links.issue(console.db, account["id"], "reset")
            link = f"{console.origin(request)}/console/reset/{token}"
            await console.notifier.send(
                Mail(
                    account["email"],
                    "Reset your password",
                    f"Open this link to choose a new password (valid 1 hour):\n{link}\n\n"
                    "If you did not ask for it, ignore this mail: your password stays.\n",
                    "reset",
                )
            )
        # The same answer either way: the page does not tell who has an account.
        return console.render(
            request,
            "message.html",
            title=_("Check your mail"),
            message=f"If {email} has an account, a link to reset its password is on its way.",
        )

    async def reset_form(request: Request) -> Response:
        token = request.path_params["token"]
        if links.peek(console.db, token, "reset") is None:
            return console.render(
                request,
                "message.html",
                400,
                title=_("Link not valid"),
                message=_("This link has expired or was used already. Ask for a new one."),
            )
        return console.render(request, "reset.html", token=token)

    async def reset(request: Request) -> Response:
        form = await console.form(request)
        token = request.path_params["token"]
        password = form.get("password")
        password = password if isinstance(password, str) else ""
        if error := check_new_password(password):
            return console.render(request, "reset.html", 422, token=token, error=error)
        account_id = links.use(console.db, token, "reset")
        if account_id is None:
            return console.render(
                request,
                "message.html",
                400,
                title=_("Link not valid"),
                message=_("This link has expired or was used already. Ask for a new one."),
            )
        users.set_password_hash(
            console.db, account_id, await asyncio.to_thread(hash_password, password)
        )
        users.mark_verified(console.db, account_id)  # the link reached the address
        sessions.revoke_all(console.db, account_id)  # whoever knew the old password is out
        response = redirect("/dashboard")
        console.sign_in(request, response, account_id)
        return response

    async def home(request: Request) -> Response:
        return redirect("/dashboard" if request.scope["console_session"] else "/sign-in")

    public = {"signed_in": False}
    return [
        Route("/", page(console, home, **public)),
        Route("/sign-up", page(console, sign_up_form, **public), methods=["GET"]),
        Route("/sign-up", page(console, sign_up, **public), methods=["POST"]),
        Route("/sign-in", page(console, sign_in_form, **public), methods=["GET"]),
        Route("/sign-in", page(console, sign_in, **public), methods=["POST"]),
        Route("/sign-out", page(console, sign_out), methods=["POST"]),
        Route("/verify/{token}", page(console, verify, **public), methods=["GET"]),
        Route("/verify", page(console, resend), methods=["POST"]),
        Route("/reset", page(console, reset_request_form, **public), methods=["GET"]),
        Route("/reset", page(console, reset_request, **public), methods=["POST"]),
        Route("/reset/{token}", page(console, reset_form, **public), methods=["GET"]),
        Route("/reset/{token}", page(console, reset, **public), methods=["POST"]),
    ]
