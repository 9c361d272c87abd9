"""Credits: top up through the same Stripe Checkout flow as ``POST /v1/topups`` (in sandbox
mode the simulator's pay page), the orders with their status and receipts, and the total
paid in the last three months (the Terms cap liability at that amount)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...errors import InvalidRequest
from ...http.topups import parse_amount  # the API's own rule for an amount
from ...topups.orders import get_order, list_orders, order_entries
from .. import stats
from ..app import Console, page
from ..i18n import _

THREE_MONTHS = timedelta(days=92)


def routes(console: Console) -> list[BaseRoute]:
    def listing(request: Request, status: int = 200, **extra: object) -> Response:
        account_id = request.scope["console_session"].account_id
        since = datetime.now(UTC) - THREE_MONTHS
        return console.render(
            request,
            "credits.html",
            status,
            balance=console.ledger.balance(account_id),
            orders=list_orders(console.db, account_id, limit=100),
            paid_3m=stats.paid_since(console.db, account_id, since),
            topups=console.topups,
            **extra,
        )

    async def index(request: Request) -> Response:
        return listing(request)

    async def top_up(request: Request) -> Response:
        form = await console.form(request)
        if console.topups is None:
            raise HTTPException(404, "Top-ups are not enabled on this server.")
        method = form.get("method") or "card"
        if method not in console.topups.config.methods:
            return listing(request, 422, error=_("Choose a payment method."))
        session = request.scope["console_session"]
        try:
            usd = parse_amount(form.get("amount_usd"), console.topups.config)
        except InvalidRequest as exc:
            return listing(request, 422, error=exc.message)
        # Back here after paying (the order's page) or canceling (this page), on the
        # address the browser used.
        back_to = str(request.url.replace(query="", fragment=""))
        order = await console.topups.open_order(session.account_id, str(method), usd, back_to)
        return RedirectResponse(order["checkout_url"], 303)

    async def order(request: Request) -> Response:
        account_id = request.scope["console_session"].account_id
        found = get_order(console.db, request.path_params["order_id"], account_id)
        return console.render(
            request, "order.html", order=found, entries=order_entries(console.db, found["id"])
        )

    return [
        Route("/credits", page(console, index), methods=["GET"]),
        Route("/credits", page(console, top_up), methods=["POST"]),
        Route("/credits/{order_id}", page(console, order), methods=["GET"]),
    ]
