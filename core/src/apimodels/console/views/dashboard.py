"""The dashboard: balance, pending holds, spend today and this month, a 30-day chart of
spend per day split by model, and the latest calls."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...billing.ledger import list_usage
from ...store.db import read_off_loop
from .. import stats
from ..app import Console, page
from ..chart import stacked_bars


def routes(console: Console) -> list[BaseRoute]:
    async def dashboard(request: Request) -> Response:
        account_id = request.scope["console_session"].account_id
        # 30 days of the account's usage summed (50 ms at 100,000 rows): off the event loop.
        spend = await read_off_loop(console.db, lambda db: stats.spend(db, account_id))
        recent, _ = list_usage(console.db, account_id, limit=10)
        return console.render(
            request,
            "dashboard.html",
            balance=console.ledger.balance(account_id),
            spend=spend,
            chart=stacked_bars(spend.labels, spend.per_model),
            recent=recent,
        )

    return [Route("/dashboard", page(console, dashboard), methods=["GET"])]
