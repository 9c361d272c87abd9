"""``POST /webhooks/stripe``: Stripe's events, verified, applied to orders exactly once.

The ``Stripe-Signature`` header is checked with the official library against the endpoint's
signing secret (a bad or old signature is 400 and changes nothing). A verified event is then
applied in one ledger transaction together with its record in ``stripe_events``: a replay of
the same event finds its record and stops, and the order's compare-and-set and the entries'
idempotency keys make different events about the same fact (``checkout.session.completed``
and ``...async_payment_succeeded``; a refund seen by the webhook and by ``apimodels orders
refund``) count once, in whatever order they come.

An event is trusted only for the order it names and only if Stripe's session matches that
order's session id, method, currency and exact amount; anything else is refused (400/404)
and credits nothing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

import stripe
from starlette.requests import Request
from starlette.responses import Response

from ..billing.ledger import Ledger, transaction
from ..errors import InvalidRequest, NotFound
from ..store.db import utcnow
from .orders import credit_op, dispute_op, order_op, refund_total_op, transition_op

log = logging.getLogger("apimodels.topups")

Outcome = tuple[str, str | None]  # (what happened, order id)


class _Foreign(Exception):
    """A Checkout Session that names no top-up order: another product on this Stripe
    account. Answered 200 "ignored", so Stripe does not retry it for days."""


def _session_order(c: sqlite3.Connection, session: dict[str, Any]) -> dict[str, Any]:
    order_id = (session.get("metadata") or {}).get("order_id") or session.get("client_reference_id")
    if not isinstance(order_id, str):
        raise _Foreign
    order = order_op(c, id=order_id)
    if order is None:
        raise NotFound(
            "This Checkout Session belongs to no top-up order here.", code="order_not_found"
        )
    if (
        order["stripe_session_id"] != session.get("id")
        or session.get("currency") != order["currency"]
        or session.get("amount_total") != order["amount_minor"]
        or order["method"] not in (session.get("payment_method_types") or [])
    ):
        log.warning("Stripe session %s does not match order %s", session.get("id"), order["id"])
        raise InvalidRequest(
            "The Checkout Session does not match its order (session, method, currency or amount).",
            code="order_mismatch",
        )
    return order


def _completed(c: sqlite3.Connection, event: dict[str, Any], session: dict[str, Any]) -> Outcome:
    order = _session_order(c, session)
    if session.get("payment_status") == "paid":
        paid = credit_op(c, order, session.get("payment_intent"), event["id"])
        if paid:
            _apply_unmatched(c, session.get("payment_intent"))
        return ("credited" if paid else "already_settled"), order["id"]
    # A delayed method (the payment is still on its way): wait for async_payment_*, and
    # know its payment intent already, should a refund of it be reported first.
    moved = transition_op(c, order["id"], ("open",), "processing")
    if moved and isinstance(session.get("payment_intent"), str):
        c.execute(
            "UPDATE topup_orders SET stripe_payment_intent = ? WHERE id = ?",
            (session["payment_intent"], order["id"]),
        )
    return ("processing" if moved else "already_settled"), order["id"]


def _async_succeeded(
    c: sqlite3.Connection, event: dict[str, Any], session: dict[str, Any]
) -> Outcome:
    order = _session_order(c, session)
    paid = credit_op(c, order, session.get("payment_intent"), event["id"])
    if paid:
        _apply_unmatched(c, session.get("payment_intent"))
    return ("credited" if paid else "already_settled"), order["id"]


def _async_failed(c: sqlite3.Connection, event: dict[str, Any], session: dict[str, Any]) -> Outcome:
    order = _session_order(c, session)
    moved = transition_op(c, order["id"], ("open", "processing"), "failed", "payment_failed")
    return ("failed" if moved else "already_settled"), order["id"]


def _expired(c: sqlite3.Connection, event: dict[str, Any], session: dict[str, Any]) -> Outcome:
    order = _session_order(c, session)
    moved = transition_op(c, order["id"], ("open",), "expired")
    return ("expired" if moved else "already_settled"), order["id"]


def _intent_order(c: sqlite3.Connection, obj: dict[str, Any]) -> dict[str, Any] | None:
    intent = obj.get("payment_intent")
    if not isinstance(intent, str):
        return None
    order = order_op(c, stripe_payment_intent=intent)
    if order is not None and obj.get("currency") not in (None, order["currency"]):
        raise InvalidRequest(
            "The charge's currency does not match its order.", code="order_mismatch"
        )
    return order


def _charge_refunded(
    c: sqlite3.Connection, event: dict[str, Any], charge: dict[str, Any]
) -> Outcome:
    order = _intent_order(c, charge)
    if order is None or order["status"] != "paid":
        return _unmatched(c, event, charge)
    debited = refund_total_op(
        c,
        order,
        int(charge.get("amount_refunded") or 0),
        key=f"stripe:{event['id']}",
        reason=f"Stripe refund of top-up {order['id']}",
        actor="stripe",
        event_id=event["id"],
    )
    return ("refund_debited" if debited else "already_recorded"), order["id"]


def _dispute(
    won: bool | None,
) -> Callable[[sqlite3.Connection, dict[str, Any], dict[str, Any]], Outcome]:
    def handle(c: sqlite3.Connection, event: dict[str, Any], dispute: dict[str, Any]) -> Outcome:
        order = _intent_order(c, dispute)
        if order is None or order["status"] != "paid":
            return _unmatched(c, event, dispute)
        if str(dispute.get("status") or "").startswith("warning_"):
            return "inquiry", order["id"]  # a card network's inquiry: no funds withdrawn
        if won is True and dispute.get("status") != "won":
            return "dispute_lost", order["id"]  # the debit taken when it opened stays
        moved = dispute_op(
            c,
            order,
            dispute["id"],
            int(dispute.get("amount") or 0),
            won=bool(won),
            event_id=event["id"],
        )
        return ("dispute_recorded" if moved else "already_recorded"), order["id"]

    return handle


def _unmatched(c: sqlite3.Connection, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    """A refund or dispute of a payment no top-up has been credited for (yet): a payment
    of another product on this Stripe account, or an event that came before the payment's
    own. Kept whole, and applied if an order is credited with that payment later."""
    intent = obj.get("payment_intent")
    c.execute(
        "UPDATE stripe_events SET payment_intent = ?, payload = ? WHERE id = ?",
        (intent if isinstance(intent, str) else None, json.dumps(event), event["id"]),
    )
    return "unmatched", None


def _apply_unmatched(c: sqlite3.Connection, intent: Any) -> None:
    """Apply, in order, the refunds and disputes of ``intent`` that came before its credit."""
    if not isinstance(intent, str):
        return
    rows = c.execute(
        "SELECT id, payload FROM stripe_events WHERE outcome = 'unmatched' AND payment_intent = ?"
        " ORDER BY received_at",
        (intent,),
    ).fetchall()
    for event_id, payload in rows:
        event = json.loads(payload)
        outcome, order_id = HANDLERS[event["type"]](c, event, event["data"]["object"])
        c.execute(
            "UPDATE stripe_events SET outcome = ?, order_id = ?, payload = NULL WHERE id = ?",
            (outcome, order_id, event_id),
        )
        log.info("stripe event %s (%s), held back: %s", event_id, event["type"], outcome)


HANDLERS: dict[str, Callable[[sqlite3.Connection, dict[str, Any], dict[str, Any]], Outcome]] = {
    "checkout.session.completed": _completed,
    "checkout.session.async_payment_succeeded": _async_succeeded,
    "checkout.session.async_payment_failed": _async_failed,
    "checkout.session.expired": _expired,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute(False),
    "charge.dispute.closed": _dispute(True),
}


def apply_event(ledger: Ledger, event: dict[str, Any]) -> str:
    """Apply one verified event, once. Returns what happened (for the response and logs)."""
    handler = HANDLERS.get(event.get("type", ""))
    if handler is None:
        return "ignored"
    obj = event["data"]["object"]
    with transaction(ledger) as c:
        fresh = c.execute(
            "INSERT INTO stripe_events (id, type, received_at) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (event["id"], event["type"], utcnow()),
        ).rowcount
        if not fresh:
            return "duplicate"
        try:
            outcome, order_id = handler(c, event, obj)
        except _Foreign:
            outcome, order_id = "ignored", None
        c.execute(
            "UPDATE stripe_events SET outcome = ?, order_id = ? WHERE id = ?",
            (outcome, order_id, event["id"]),
        )
    log.info("stripe event %s (%s): %s", event["id"], event["type"], outcome)
    return outcome


class StripeWebhook:
    def __init__(self, ledger: Ledger, secret: str, tolerance: int) -> None:
        self.ledger = ledger
        self.secret = secret
        self.tolerance = tolerance

    def verify(self, payload: bytes, header: str | None) -> dict[str, Any]:
        """The event, if its signature is valid and recent; else ``InvalidRequest`` (400)."""
        try:
            stripe.WebhookSignature.verify_header(payload, header, self.secret, self.tolerance)
        except (stripe.SignatureVerificationError, ValueError):  # ValueError: not UTF-8
            raise InvalidRequest(
                "The Stripe-Signature header is missing, invalid or too old.",
                code="invalid_signature",
                param="Stripe-Signature",
            ) from None
        try:
            event = json.loads(payload)
            if not isinstance(event.get("id"), str) or not isinstance(
                event["data"]["object"], dict
            ):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidRequest(
                "The event is not a Stripe event object.", code="invalid_event"
            ) from None
        return event

    async def endpoint(self, request: Request) -> Response:
        event = self.verify(await request.body(), request.headers.get("stripe-signature"))
        outcome = apply_event(self.ledger, event)
        body = json.dumps({"received": True, "outcome": outcome})
        return Response(body, media_type="application/json")
