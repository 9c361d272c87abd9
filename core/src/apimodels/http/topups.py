"""``/v1/topups``: an account buys credits (POST) and reads its orders (GET), plus the
assembly of the whole top-ups feature from ``[topups]`` (``build_topups``).

Amounts in and out are decimal strings: ``amount_usd`` is plain ASCII digits with an optional
fraction (a JSON number is read as its literal text, never as a float, by the same rule).
An account sees only its own orders: another account's order id is 404. ``Idempotency-Key``
on the POST makes a retried request answer the first order instead of making a second one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlite_utils
from starlette.requests import Request
from starlette.responses import Response

from ..billing.ledger import Ledger
from ..billing.money import format_usd
from ..errors import APIError, ConfigError, InvalidRequest
from ..store.accounts import KeyStore, Principal
from ..topups.config import TopupsConfig
from ..topups.orders import (
    get_order,
    list_orders,
    new_order,
    order_entries,
    set_creation_failed,
    set_opened,
)
from ..topups.rates import RateSource, fresh_rate, load_source
from ..topups.stripe_gateway import StripeGateway
from ..topups.webhook import StripeWebhook
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import Idempotency
from .receipts import page_limit

Endpoint = Callable[[Request], Awaitable[Response]]
#: A POST /v1/topups left in flight by a crash is forgotten after this (it made no charge).
IDEMPOTENCY_ABANDON_AFTER = timedelta(minutes=5)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, media_type="application/json")


def _minor(amount: int) -> str:
    return f"{Decimal(amount) / 100:.2f}"


def render_order(order: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """An order as the API shows it (a receipt once paid)."""
    rate = None
    if order["rate"] is not None:
        rate = {
            "cny_per_usd": order["rate"],
            "source": order["rate_source"],
            "as_of": order["rate_as_of"],
        }
    return {
        "id": order["id"],
        "object": "topup",
        "status": order["status"],
        "method": order["method"],
        "amount_usd": format_usd(order["amount_usd_micros"]),
        "charged": {"currency": order["currency"], "amount": _minor(order["amount_minor"])},
        "exchange_rate": rate,
        "refunded_usd": format_usd(order["refunded_usd_micros"]),
        "checkout_url": order["checkout_url"] if order["status"] == "open" else None,
        "created_at": order["created_at"],
        "paid_at": order["paid_at"],
        "error_code": order["error_code"],
        "ledger_entries": [
            {
                "id": e["id"],
                "kind": e["kind"],
                "amount": format_usd(e["amount_micros"]),
                "created_at": e["created_at"],
            }
            for e in entries
        ],
    }


#: An amount's only form: ASCII digits, optionally a point and more digits. ``Decimal()``
#: also reads "20_0" (200), fullwidth digits, "1e3", " 20" and "+20": none is an amount.
PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


def _not_an_amount(why: str = "a plain decimal number of US dollars") -> InvalidRequest:
    return InvalidRequest(
        f"'amount_usd' must be {why}, e.g. \"20\" or 20.50.",
        param="amount_usd",
        code="invalid_value",
    )


def parse_amount(value: Any, config: TopupsConfig) -> Decimal:
    """``amount_usd`` -> an exact Decimal within the configured bounds, in whole cents.

    ``value`` is a string, or a JSON number as its literal text (the body is parsed with
    ``parse_float=str``) or int: both follow the string rule, so 1e3 is refused either way.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _not_an_amount()
    try:
        usd = Decimal(value)
    except InvalidOperation:
        raise _not_an_amount() from None
    if not usd.is_finite():
        raise _not_an_amount()
    # The bounds first, so "1e999999" and "-5" say what is allowed, then the form.
    if not config.min_usd <= usd <= config.max_usd:
        raise InvalidRequest(
            f"'amount_usd' must be from {config.min_usd} to {config.max_usd} USD.",
            param="amount_usd",
            code="amount_out_of_range",
        )
    if not PLAIN_DECIMAL.fullmatch(value):
        raise _not_an_amount()
    if usd != usd.quantize(Decimal("0.01")):
        raise _not_an_amount("a whole number of cents")
    return usd


class TopupsAPI:
    def __init__(
        self,
        config: TopupsConfig,
        db: sqlite_utils.Database,
        keys: KeyStore,
        stripe: StripeGateway,
        webhook: StripeWebhook,
        rates: RateSource | None,
    ) -> None:
        self.config = config
        self.db = db
        self.keys = keys
        self.stripe = stripe
        self.webhook = webhook
        self.rates = rates
        self.max_rate_age = timedelta(hours=config.rate.max_age_hours) if config.rate else None
        self.idempotency = Idempotency(db, IDEMPOTENCY_ABANDON_AFTER)

    async def create(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            return await self._create(request, principal)
        return await self.idempotency.run(
            request, principal.account_id, key, lambda: self._create(request, principal)
        )

    async def _create(self, request: Request, principal: Principal) -> Response:
        try:
            body = json.loads(await request.body(), parse_float=str)  # see parse_amount
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
        method = body.get("method", "card")
        if method not in self.config.methods:
            raise InvalidRequest(
                f"'method' must be one of: {', '.join(self.config.methods)}.",
                param="method",
                code="invalid_value",
            )
        if "amount_usd" not in body:
            raise InvalidRequest(
                "Missing required parameter: 'amount_usd'.",
                param="amount_usd",
                code="missing_required_parameter",
            )
        usd = parse_amount(body["amount_usd"], self.config)
        order = await self.open_order(principal.account_id, method, usd)
        return _json(render_order(order, []), 201)

    async def open_order(
        self, account_id: str, method: str, usd: Decimal, back_to: str | None = None
    ) -> dict[str, Any]:
        """A new order for ``usd`` of credits by ``method``, opened at Stripe Checkout: the
        row with its ``checkout_url`` (the API and the Console both start a top-up here;
        the Console's payers come back to ``back_to``, its orders page)."""
        rate = None
        if method == "alipay":
            assert self.rates is not None and self.max_rate_age is not None
            rate = fresh_rate(self.rates, self.max_rate_age)
        order = new_order(self.db, account_id, method, usd, rate)
        try:
            session = await self.stripe.create_checkout(order, back_to)
        except APIError:
            set_creation_failed(self.db, order["id"], "payment_provider_error")
            raise
        except BaseException:  # the client left: nobody will ever see this order's page
            set_creation_failed(self.db, order["id"], "abandoned")
            raise
        set_opened(self.db, order["id"], session.id, session.url)
        return get_order(self.db, order["id"])

    async def index(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        limit = page_limit(request.query_params.get("limit"))
        orders = list_orders(self.db, principal.account_id, limit=limit + 1)
        data = [render_order(o, order_entries(self.db, o["id"])) for o in orders[:limit]]
        return _json({"object": "list", "data": data, "has_more": len(orders) > limit})

    async def show(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        order = get_order(self.db, request.path_params["order_id"], principal.account_id)
        return _json(render_order(order, order_entries(self.db, order["id"])))

    def routes(self) -> list[tuple[str, Endpoint, list[str]]]:
        return [
            ("/v1/topups", self.create, ["POST"]),
            ("/v1/topups", self.index, ["GET"]),
            ("/v1/topups/{order_id}", self.show, ["GET"]),
            ("/webhooks/stripe", self.webhook.endpoint, ["POST"]),
        ]


def env_secret(environ: Mapping[str, str], name: str) -> str:
    """A secret named by topups configuration, from the environment (ConfigError if unset)."""
    value = environ.get(name)
    if not value:
        raise ConfigError(f"top-ups are enabled but {name} is not set in the environment")
    return value


def build_topups(
    config: TopupsConfig,
    db: sqlite_utils.Database,
    ledger: Ledger,
    keys: KeyStore,
    environ: Mapping[str, str],
) -> TopupsAPI:
    """The top-ups endpoints, checked and wired once at startup."""
    secret_key = env_secret(environ, config.secret_key_env)
    webhook_secret = env_secret(environ, config.webhook_secret_env)
    rates = load_source(config.rate) if config.rate is not None else None
    return TopupsAPI(
        config,
        db,
        keys,
        StripeGateway(secret_key, config),
        StripeWebhook(ledger, webhook_secret, config.webhook_tolerance_seconds),
        rates,
    )
