"""A local Stripe-shaped server: the part of Stripe's API that top-ups use, on 127.0.0.1.

The official ``stripe`` library talks to it as to Stripe (``api_base`` pointed here):
form-encoded requests with bracketed keys, Bearer secret key, ``Idempotency-Key`` (a replay
answers the first response; the same key with other parameters is an ``idempotency_error``),
Stripe's error shape. Objects follow Stripe's published OpenAPI description (the tests check
them against it).

    POST /v1/checkout/sessions              create (mode payment; card or alipay)
    GET  /v1/checkout/sessions/{id}         retrieve
    POST /v1/checkout/sessions/{id}/expire  expire an open session
    POST /v1/refunds                        refund (part of) a paid session's payment
    GET  /v1/events/{id}                    retrieve an event

A simulated hosted checkout page at ``GET /pay/{id}`` lets a person (or a test) pay, decline
or pay with delayed confirmation (as Stripe's delayed payment methods do); each outcome
sends the events Stripe sends, signed as Stripe signs them:
``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.

Test helpers under ``/_sim``: the API requests received (decoded), the events sent and
their deliveries (and resending one), disputes (opened and closed), the delivery
mode (``sync``: before answering, ``async``: in the background, ``off``: not at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import json
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .config import RateConfig, TopupsConfig

#: Presentment currencies Stripe accepts for Alipay (they depend on the business's country).
ALIPAY_CURRENCIES = {"cny", "usd", "eur", "gbp", "hkd", "jpy", "sgd", "aud", "cad", "nzd", "myr"}
METHODS = {"card", "alipay"}
API_VERSION = "2025-10-29.clover"


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type, "message": message}}
        if code:
            self.body["error"]["code"] = code
        if param:
            self.body["error"]["param"] = param


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status, media_type="application/json")


def _id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def nested_form(items: list[tuple[str, str]]) -> dict[str, Any]:
    """``a[b][0][c]=v`` pairs (how Stripe's libraries encode parameters) -> nested data;
    objects whose keys are all indexes become lists."""
    root: dict[str, Any] = {}
    for key, value in items:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StripeError(400, f"Invalid parameter: {key}", param=key)
        node[parts[-1]] = value

    def lists(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = {k: lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
        return node

    return lists(root)


def _int(value: Any, param: str) -> int:
    if not isinstance(value, str) or not value.isdigit():
        raise StripeError(400, f"Invalid integer: {value}", param=param)
    return int(value)


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe sends with ``payload``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@dataclass
class StripeState:
    api_key: str
    webhook_secret: str
    webhook_url: str | None = None
    delivery: str = "sync"  # sync | async | off
    origin: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)  # by payment intent
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)  # API calls, as decoded
    idempotency: dict[str, tuple[str, int, Any]] = field(default_factory=dict)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    # --- events -----------------------------------------------------------------------

    def event(self, type: str, obj: dict[str, Any]) -> dict[str, Any]:
        event = {
            "id": _id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": json.loads(json.dumps(obj))},
            "livemode": False,
            "pending_webhooks": 1 if self.webhook_url else 0,
            "request": {"id": None, "idempotency_key": None},
            "type": type,
        }
        self.events.append(event)
        return event

    async def deliver(self, event: dict[str, Any]) -> None:
        if self.webhook_url is None or self.delivery == "off":
            return
        if self.delivery == "async":
            task = asyncio.create_task(self._post(event))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
        else:
            await self._post(event)

    async def _post(self, event: dict[str, Any]) -> None:
        payload = json.dumps(event, indent=2)
        headers = {
            "content-type": "application/json",
            "stripe-signature": sign(payload, self.webhook_secret),
        }
        record: dict[str, Any] = {"event": event["id"], "type": event["type"]}
        try:
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                r = await client.post(self.webhook_url or "", content=payload, headers=headers)
            record["status"] = r.status_code
        except httpx.HTTPError as exc:
            record["error"] = type(exc).__name__
        self.deliveries.append(record)


def create_app(api_key: str, webhook_secret: str, webhook_url: str | None = None) -> Starlette:
    """The simulator; ``app.state.stripe`` is its ``StripeState`` (webhook URL, origin...)."""
    state = StripeState(api_key, webhook_secret, webhook_url)

    def authenticate(request: Request) -> None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.encode(), state.api_key.encode()
        ):
            shown = (key[:7] + "*" * 4 + key[-4:]) if len(key) > 12 else "****"
            raise StripeError(401, f"Invalid API Key provided: {shown}")

    def api(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                authenticate(request)
                params = (
                    nested_form((await request.form()).multi_items())
                    if request.method == "POST"
                    else {}
                )
                state.requests.append(
                    {"method": request.method, "path": request.url.path, "params": params}
                )
                key = request.headers.get("idempotency-key")
                if key is None or request.method != "POST":
                    status, body = await handler(request, params)
                    return _json(body, status)
                fingerprint = hashlib.sha256(
                    f"{request.url.path}?{sorted(params.items())!r}".encode()
                ).hexdigest()
                if key in state.idempotency:
                    seen, status, body = state.idempotency[key]
                    if seen != fingerprint:
                        raise StripeError(
                            400,
                            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                            type="idempotency_error",
                        )
                    return _json(body, status)
                status, body = await handler(request, params)
                state.idempotency[key] = (fingerprint, status, body)
                return _json(body, status)
            except StripeError as exc:
                return _json(exc.body, exc.status)

        return endpoint

    def session_of(session_id: str) -> dict[str, Any]:
        session = state.sessions.get(session_id)
        if session is None:
            raise StripeError(
                404,
                f"No such checkout.session: '{session_id}'",
                code="resource_missing",
                param="session",
            )
        return session

    async def create_session(request: Request, p: dict[str, Any]) -> tuple[int, Any]:
        if p.get("mode") != "payment":
            raise StripeError(400, "This simulator supports mode=payment only.", param="mode")
        for name in ("success_url", "cancel_url"):
            if not p.get(name):
                raise StripeError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        methods = p.get("payment_method_types") or ["card"]
        if not isinstance(methods, list) or not set(methods) <= METHODS:
            raise StripeError(
                400, f"Invalid payment_method_types: {methods}", param="payment_method_types"
            )
        items = p.get("line_items")
        if not isinstance(items, list) or not items:
            raise StripeError(
                400,
                "Missing required param: line_items.",
                code="parameter_missing",
                param="line_items",
            )
        currencies, total = set(), 0
        for i, item in enumerate(items):
            price = item.get("price_data") if isinstance(item, dict) else None
            if not isinstance(price, dict) or not isinstance(price.get("product_data"), dict):
                raise StripeError(
                    400,
                    "Each line item needs price_data with product_data.",
                    param=f"line_items[{i}][price_data]",
                )
            amount = _int(price.get("unit_amount"), f"line_items[{i}][price_data][unit_amount]")
            quantity = _int(item.get("quantity", "1"), f"line_items[{i}][quantity]")
            currencies.add(str(price.get("currency", "")).lower())
            total += amount * quantity
        if len(currencies) != 1:
            raise StripeError(400, "All line items must use the same currency.", param="line_items")
        currency = currencies.pop()
        if "alipay" in methods and currency not in ALIPAY_CURRENCIES:
            raise StripeError(
                400, f"alipay does not support currency {currency}.", param="payment_method_types"
            )
        if total <= 0:
            raise StripeError(400, "The total must be positive.", param="line_items")
        now = int(time.time())
        session_id = _id("cs")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": total,
            "amount_total": total,
            "cancel_url": p["cancel_url"],
            "client_reference_id": p.get("client_reference_id"),
            "created": now,
            "currency": currency,
            "customer": None,
            "customer_details": None,
            "customer_email": p.get("customer_email"),
            "expires_at": now + 24 * 3600,
            "livemode": False,
            "locale": None,
            "metadata": p.get("metadata") or {},
            "mode": "payment",
            "payment_intent": None,
            "payment_method_types": methods,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": p["success_url"],
            "url": f"{state.origin or str(request.base_url).rstrip('/')}/pay/{session_id}",
        }
        state.sessions[session_id] = session
        return 200, session

    async def retrieve_session(request: Request, p: dict[str, Any]) -> tuple[int, Any]:
        return 200, session_of(request.path_params["id"])

    async def expire_session(request: Request, p: dict[str, Any]) -> tuple[int, Any]:
        session = session_of(request.path_params["id"])
        if session["status"] != "open":
            raise StripeError(
                400,
                f"Only Checkout Sessions with a status of open can be expired (this one is {session['status']}).",
            )
        session["status"] = "expired"
        await state.deliver(state.event("checkout.session.expired", session))
        return 200, session

    async def create_refund(request: Request, p: dict[str, Any]) -> tuple[int, Any]:
        intent = p.get("payment_intent")
        charge = state.charges.get(intent or "")
        if charge is None:
            raise StripeError(
                404,
                f"No such payment_intent: '{intent}'",
                code="resource_missing",
                param="payment_intent",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        amount = _int(p["amount"], "amount") if "amount" in p else remaining
        if remaining == 0:
            raise StripeError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        if not 0 < amount <= remaining:
            raise StripeError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
                code="amount_too_large",
                param="amount",
            )
        reason = p.get("reason")
        if reason not in (None, "duplicate", "fraudulent", "requested_by_customer"):
            raise StripeError(400, f"Invalid reason: {reason}", param="reason")
        refund = {
            "id": _id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": None,
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "metadata": p.get("metadata") or {},
            "payment_intent": intent,
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        state.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        await state.deliver(state.event("charge.refunded", charge))
        return 200, refund

    async def retrieve_event(request: Request, p: dict[str, Any]) -> tuple[int, Any]:
        for event in state.events:
            if event["id"] == request.path_params["id"]:
                return 200, event
        raise StripeError(
            404,
            f"No such event: '{request.path_params['id']}'",
            code="resource_missing",
            param="id",
        )

    # --- the hosted checkout page -------------------------------------------------------

    def pay(session: dict[str, Any], *, delayed: bool) -> None:
        intent = _id("pi")
        session.update(
            status="complete", payment_intent=intent, payment_status="unpaid" if delayed else "paid"
        )
        state.charges[intent] = {
            "id": _id("ch"),
            "object": "charge",
            "amount": session["amount_total"],
            "amount_captured": session["amount_total"],
            "amount_refunded": 0,
            "captured": True,
            "created": int(time.time()),
            "currency": session["currency"],
            "disputed": False,
            "livemode": False,
            "metadata": {},
            "paid": True,
            "payment_intent": intent,
            "payment_method_details": {"type": session["payment_method_types"][0]},
            "refunded": False,
            "status": "pending" if delayed else "succeeded",
        }

    async def page(request: Request) -> Response:
        session = state.sessions.get(request.path_params["id"])
        if session is None:
            return HTMLResponse("<h1>No such checkout session</h1>", 404)
        amount = f"{Decimal(session['amount_total']) / 100:.2f} {session['currency'].upper()}"
        e = html.escape
        if session["status"] == "open":
            buttons = "".join(
                f'<button name="action" value="{a}">{label}</button> '
                for a, label in (
                    ("pay", "Pay"),
                    ("delayed", "Pay (delayed confirmation)"),
                    ("cancel", "Cancel"),
                )
            )
        elif session["payment_status"] == "unpaid" and session["status"] == "complete":
            buttons = '<button name="action" value="settle">Confirm the delayed payment</button> <button name="action" value="fail">Fail the delayed payment</button>'
        else:
            buttons = f'<p>This session is {e(session["status"])} ({e(session["payment_status"])}). <a href="{e(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"]))}">Back to the merchant</a></p>'
        body = (
            "<!doctype html><meta charset=utf-8><title>Simulated Stripe Checkout</title>"
            "<h1>Simulated Stripe Checkout</h1><p>Nothing here moves real money.</p>"
            f"<p>Amount: <b>{e(amount)}</b> by {e(', '.join(session['payment_method_types']))}</p>"
            f'<form method="post">{buttons}</form>'
        )
        return HTMLResponse(body)

    async def act(request: Request) -> Response:
        session = state.sessions.get(request.path_params["id"])
        if session is None:
            return HTMLResponse("<h1>No such checkout session</h1>", 404)
        action = (await request.form()).get("action")
        open_ = session["status"] == "open"
        waiting = session["status"] == "complete" and session["payment_status"] == "unpaid"
        if action == "cancel" and open_:
            return RedirectResponse(session["cancel_url"], 303)
        if action in ("pay", "delayed") and open_:
            pay(session, delayed=action == "delayed")
            await state.deliver(state.event("checkout.session.completed", session))
        elif action in ("settle", "fail") and waiting:
            charge = state.charges[session["payment_intent"]]
            if action == "settle":
                session["payment_status"] = "paid"
                charge["status"] = "succeeded"
                await state.deliver(
                    state.event("checkout.session.async_payment_succeeded", session)
                )
            else:
                charge.update(status="failed", paid=False)
                await state.deliver(state.event("checkout.session.async_payment_failed", session))
        else:
            return HTMLResponse(
                f"<h1>Cannot {html.escape(str(action))} a {session['status']} session</h1>", 400
            )
        return RedirectResponse(f"/pay/{session['id']}", 303)

    async def merchant(request: Request) -> Response:
        """Where sandbox mode sends the customer back (it has no shop of its own)."""
        if request.path_params["outcome"] == "success":
            text = "Payment done. The credits appear once the gateway has Stripe's webhook: GET /v1/topups."
        else:
            text = "Payment cancelled. Nothing was charged."
        return HTMLResponse(
            f"<!doctype html><meta charset=utf-8><title>Top-up</title><p>{text}</p>"
        )

    # --- test helpers ---------------------------------------------------------------------

    async def sim_events(request: Request) -> Response:
        return _json(state.events)

    async def sim_deliveries(request: Request) -> Response:
        return _json(state.deliveries)

    async def sim_requests(request: Request) -> Response:
        return _json(state.requests)

    async def sim_resend(request: Request) -> Response:
        """Deliver an event again now (as a retry from Stripe's dashboard does)."""
        for event in state.events:
            if event["id"] == request.path_params["id"]:
                await state._post(event)
                return _json(state.deliveries[-1])
        return _json({"error": "no such event"}, 404)

    async def sim_config(request: Request) -> Response:
        body = await request.json()
        if "delivery" in body:
            if body["delivery"] not in ("sync", "async", "off"):
                return _json({"error": "delivery is sync, async or off"}, 400)
            state.delivery = body["delivery"]
        if "webhook_url" in body:
            state.webhook_url = body["webhook_url"]
        return _json({"delivery": state.delivery, "webhook_url": state.webhook_url})

    async def sim_dispute(request: Request) -> Response:
        body = await request.json()
        charge = state.charges.get(body.get("payment_intent", ""))
        if charge is None:
            return _json({"error": "no such payment_intent"}, 404)
        dispute = {
            "id": _id("dp"),
            "object": "dispute",
            "amount": int(body.get("amount", charge["amount"])),
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "livemode": False,
            "metadata": {},
            "payment_intent": charge["payment_intent"],
            "reason": body.get("reason", "fraudulent"),
            "status": "needs_response",
        }
        charge["disputed"] = True
        state.disputes[dispute["id"]] = dispute
        await state.deliver(state.event("charge.dispute.created", dispute))
        return _json(dispute)

    async def sim_close_dispute(request: Request) -> Response:
        dispute = state.disputes.get(request.path_params["id"])
        status = (await request.json()).get("status")
        if dispute is None or status not in ("won", "lost"):
            return _json({"error": "no such dispute, or status is not won|lost"}, 400)
        dispute["status"] = status
        await state.deliver(state.event("charge.dispute.closed", dispute))
        return _json(dispute)

    app = Starlette(
        routes=[
            Route("/v1/checkout/sessions", api(create_session), methods=["POST"]),
            Route("/v1/checkout/sessions/{id}", api(retrieve_session), methods=["GET"]),
            Route("/v1/checkout/sessions/{id}/expire", api(expire_session), methods=["POST"]),
            Route("/v1/refunds", api(create_refund), methods=["POST"]),
            Route("/v1/events/{id}", api(retrieve_event), methods=["GET"]),
            Route("/pay/{id}", page, methods=["GET"]),
            Route("/pay/{id}", act, methods=["POST"]),
            Route("/merchant/{outcome:str}", merchant, methods=["GET"]),
            Route("/_sim/events", sim_events, methods=["GET"]),
            Route("/_sim/deliveries", sim_deliveries, methods=["GET"]),
            Route("/_sim/requests", sim_requests, methods=["GET"]),
            Route("/_sim/events/{id}/resend", sim_resend, methods=["POST"]),
            Route("/_sim/config", sim_config, methods=["POST"]),
            Route("/_sim/disputes", sim_dispute, methods=["POST"]),
            Route("/_sim/disputes/{id}/close", sim_close_dispute, methods=["POST"]),
        ]
    )
    app.state.stripe = state
    return app


#: The exchange rate sandbox mode uses when registry.toml sets none (a demo figure).
SANDBOX_CNY_PER_USD = Decimal("7.1")


def sandbox_config(config: TopupsConfig, origin: str) -> TopupsConfig:
    """``[topups]`` for sandbox mode: on, pointed at the simulator, with a demo exchange rate
    (dated now) when the file has none."""
    update: dict[str, Any] = {"enabled": True, "stripe_api_base": origin}
    defaults = TopupsConfig()
    if config.success_url == defaults.success_url:  # no shop of its own: land on the simulator
        update["success_url"] = f"{origin}/merchant/success?session_id={{CHECKOUT_SESSION_ID}}"
    if config.cancel_url == defaults.cancel_url:
        update["cancel_url"] = f"{origin}/merchant/cancel"
    if config.rate is None:
        update["rate"] = RateConfig(
            source="fixed", cny_per_usd=SANDBOX_CNY_PER_USD, as_of=datetime.now(UTC)
        )
    return config.model_copy(update=update)


class SandboxStripe:
    """The simulator served inside a sandboxed gateway's process, on its own local port,
    with a fresh secret key and webhook secret at every start."""

    def __init__(self) -> None:
        self.secret_key = "sk_test_sandbox_" + secrets.token_hex(12)
        self.webhook_secret = "whsec_sandbox_" + secrets.token_hex(16)
        self.app = create_app(self.secret_key, self.webhook_secret)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.origin = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.app.state.stripe.origin = self.origin
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    def point_webhooks_at(self, url: str) -> None:
        self.app.state.stripe.webhook_url = url

    async def start(self) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", access_log=False)
        )
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        deadline = asyncio.get_running_loop().time() + 10
        while not self.server.started:
            if self.task.done() or asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the Stripe simulator did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await asyncio.gather(self.task, return_exceptions=True)
        self.sock.close()
