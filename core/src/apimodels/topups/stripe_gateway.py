"""The calls apimodels makes to Stripe, all through the official ``stripe`` library.

``api_base`` is Stripe's own API by default; tests and sandbox mode point it at the local
Stripe-shaped simulator (``apimodels.topups.simulator``). Every create carries an
``Idempotency-Key`` derived from the order, so a retried call never makes a second session
or a second refund.
"""

from __future__ import annotations

import asyncio
from typing import Any

import stripe

from ..errors import UpstreamError
from .config import TopupsConfig

#: Stripe's own refund reasons; apimodels' free-text reason goes into the metadata.
REFUND_REASONS = ("requested_by_customer", "duplicate", "fraudulent")


def provider_error(exc: stripe.StripeError) -> UpstreamError:
    """A Stripe failure as the client sees it: no key, no Stripe request id, no detail."""
    status = getattr(exc, "http_status", None)
    return UpstreamError(
        "The payment provider refused or failed the request; nothing was charged. "
        f"Try again later (provider status {status or 'unreachable'}).",
        code="payment_provider_error",
    )


class StripeGateway:
    def __init__(self, secret_key: str, config: TopupsConfig, *, timeout: float = 20.0) -> None:
        self.config = config
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": config.stripe_api_base},
            # The library's default client (requests), off the event loop via a thread: its
            # httpx client trips a DeprecationWarning in httpx >= 0.28.
            http_client=stripe.RequestsClient(timeout=timeout),
            max_network_retries=2,
        )

    def _checkout_params(self, order: dict[str, Any], back_to: str | None = None) -> dict[str, Any]:
        return {
            "mode": "payment",
            "payment_method_types": [order["method"]],
            "line_items": [
                {
                    "price_data": {
                        "currency": order["currency"],
                        "unit_amount": order["amount_minor"],
                        "product_data": {"name": self.config.product_name},
                    },
                    "quantity": 1,
                }
            ],
            # The Console's own pages when it opened the order; else the configured ones.
            "success_url": f"{back_to}/{order['id']}" if back_to else self.config.success_url,
            "cancel_url": back_to or self.config.cancel_url,
            "client_reference_id": order["id"],
            "metadata": {
                "order_id": order["id"],
                "amount_usd_micros": str(order["amount_usd_micros"]),
            },
        }

    async def create_checkout(self, order: dict[str, Any], back_to: str | None = None) -> Any:
        """A Checkout Session (mode payment) charging exactly the order's amount; the payer
        returns to ``back_to``/<order id> (paid) or ``back_to`` (canceled) when given."""
        try:
            return await asyncio.to_thread(
                self.client.v1.checkout.sessions.create,
                self._checkout_params(order, back_to),
                {"idempotency_key": f"checkout:{order['id']}"},
            )
        except stripe.StripeError as exc:
            raise provider_error(exc) from None

    def retrieve_session(self, session_id: str) -> Any:
        try:
            return self.client.v1.checkout.sessions.retrieve(session_id)
        except stripe.StripeError as exc:
            raise provider_error(exc) from None

    def refund(
        self,
        order: dict[str, Any],
        amount_minor: int,
        *,
        reason: str,
        stripe_reason: str = "requested_by_customer",
    ) -> Any:
        """Refund ``amount_minor`` of the order's payment. The idempotency key names the
        order and the refunded total it leads to: a retried command refunds once."""
        key = f"refund:{order['id']}:{order['refunded_minor'] + amount_minor}"
        try:
            return self.client.v1.refunds.create(
                {
                    "payment_intent": order["stripe_payment_intent"],
                    "amount": amount_minor,
                    "reason": stripe_reason,
                    "metadata": {"order_id": order["id"], "reason": reason[:500]},
                },
                {"idempotency_key": key},
            )
        except stripe.StripeError as exc:
            raise provider_error(exc) from None
