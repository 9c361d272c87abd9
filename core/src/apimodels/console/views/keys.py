"""API keys: create (the key shown once), name, revoke, rotate with a grace period, per-key
limits, last use. Through ``store.accounts``, as the CLI; a key of another account is 404."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...billing.money import to_micros
from ...store import accounts
from .. import stats
from ..app import Console, grace, page
from ..i18n import _


def _own_key(console: Console, account_id: str, key_id: str) -> dict:
    for key in accounts.list_keys(console.db, account_id):
        if key["id"] == key_id:
            return key
    raise HTTPException(404, "No such key on this account.")


def _limit(form: object, name: str, *, money: bool) -> int | None:
    raw = form.get(name)  # type: ignore[attr-defined]
    raw = raw.strip() if isinstance(raw, str) else ""
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise HTTPException(422, f"{name}: a number, or empty for no limit.") from None
    if not value.is_finite() or value <= 0:
        raise HTTPException(422, f"{name}: a positive number, or empty for no limit.")
    if money:
        return to_micros(value)
    if value != value.to_integral_value():
        raise HTTPException(422, f"{name}: a whole number of requests.")
    return int(value)


def routes(console: Console) -> list[BaseRoute]:
    def listing(request: Request, status: int = 200, **extra: object) -> Response:
        account_id = request.scope["console_session"].account_id
        keys = list(reversed(accounts.list_keys(console.db, account_id)))
        used = stats.last_used(console.db, [k["id"] for k in keys])
        return console.render(request, "keys.html", status, keys=keys, used=used, **extra)

    async def index(request: Request) -> Response:
        return listing(request)

    async def create(request: Request) -> Response:
        form = await console.form(request)
        name = form.get("name")
        name = name.strip()[:100] if isinstance(name, str) else ""
        session = request.scope["console_session"]
        row, key = accounts.create_key(console.db, session.account_id, name)
        return listing(request, 201, new_key=key, new_row=row)

    async def revoke(request: Request) -> Response:
        await console.form(request)
        session = request.scope["console_session"]
        _own_key(console, session.account_id, request.path_params["key_id"])
        accounts.revoke_key(console.db, request.path_params["key_id"])
        console.keys.forget()  # at once in this process; others within key_cache_seconds
        return listing(request, notice=_("Key revoked: it no longer works."))

    async def rotate(request: Request) -> Response:
        await console.form(request)
        session = request.scope["console_session"]
        key = _own_key(console, session.account_id, request.path_params["key_id"])
        if key["revoked_at"]:
            raise HTTPException(409, "This key is revoked; create a new key instead.")
        row, new_key, old = accounts.rotate_key(console.db, key["id"], grace(console.catalog))
        console.keys.forget()
        notice = f"The old key works until {old['expires_at']}."
        return listing(request, 201, new_key=new_key, new_row=row, notice=notice)

    async def limits(request: Request) -> Response:
        form = await console.form(request)
        session = request.scope["console_session"]
        key = _own_key(console, session.account_id, request.path_params["key_id"])
        accounts.set_key_limits(
            console.db,
            key["id"],
            rpm=_limit(form, "rpm", money=False),
            daily_cap_micros=_limit(form, "daily_usd", money=True),
            total_cap_micros=_limit(form, "total_usd", money=True),
        )
        console.keys.forget()
        return listing(request, notice=_("Limits saved."))

    return [
        Route("/keys", page(console, index), methods=["GET"]),
        Route("/keys", page(console, create), methods=["POST"]),
        Route("/keys/{key_id}/revoke", page(console, revoke), methods=["POST"]),
        Route("/keys/{key_id}/rotate", page(console, rotate), methods=["POST"]),
        Route("/keys/{key_id}/limits", page(console, limits), methods=["POST"]),
    ]
