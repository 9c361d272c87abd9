"""Top-up orders for an operator: list, show, refund through Stripe (audited)."""

from __future__ import annotations

import asyncio
from typing import Any

from ..billing.ledger import transaction
from ..errors import InvalidRequest, ServiceUnavailable
from ..topups.orders import get_order, list_orders, order_entries, order_op, refund_total_op
from ..topups.rates import usd_micros_to_minor
from . import audit
from .context import Actor, Operations, need_reason, require_write


def find_orders(
    ops: Operations, account_id: str | None = None, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Orders, newest first."""
    return list_orders(ops.db, account_id, status, limit)


def show_order(ops: Operations, order_id: str) -> dict[str, Any]:
    """An order with its ledger entries."""
    order = get_order(ops.db, order_id)
    return {**order, "ledger_entries": order_entries(ops.db, order_id)}


async def refund_order(
    ops: Operations,
    actor: Actor,
    order_id: str,
    reason: str | None,
    *,
    amount_micros: int | None = None,
    stripe_reason: str = "requested_by_customer",
) -> dict[str, Any]:
    """Refund a paid order through Stripe (all that is left, or ``amount_micros`` of its
    credits) and debit those credits: the balance may go negative.

    The Stripe refund and the ledger entry are each made once: a retry after a failure, or
    Stripe's ``charge.refunded`` webhook arriving first, neither refunds nor debits twice.
    Returns the order after, with the Stripe refund id and the credits debited here."""
    from ..topups.stripe_gateway import REFUND_REASONS  # the stripe library, when needed

    require_write(actor)
    reason = need_reason(reason)
    if stripe_reason not in REFUND_REASONS:
        raise InvalidRequest(
            f"stripe_reason must be one of {', '.join(REFUND_REASONS)}", param="stripe_reason"
        )
    if ops.stripe is None:
        raise ServiceUnavailable(
            "Top-ups are not enabled on this server: no Stripe to refund through",
            code="topups_disabled",
        )
    order = get_order(ops.db, order_id)
    if order["status"] != "paid" or not order["stripe_payment_intent"]:
        raise InvalidRequest(
            f"Order {order_id} is {order['status']}: only paid orders can be refunded",
            code="order_not_refundable",
            status=409,
        )
    left = order["amount_usd_micros"] - order["refunded_usd_micros"]
    micros = left if amount_micros is None else amount_micros
    if not 0 < micros <= left:
        raise InvalidRequest(
            f"Order {order_id} has {left} micro-USD of credits left to refund",
            code="refund_out_of_range",
            param="amount_usd",
            status=409 if left == 0 else 400,
        )
    # The money for those credits, at the order's own rate; whatever is left when all of it goes.
    total = usd_micros_to_minor(
        order["refunded_usd_micros"] + micros, order["amount_minor"], order["amount_usd_micros"]
    )
    minor = total - order["refunded_minor"]
    refund = await asyncio.to_thread(
        ops.stripe.refund, order, minor, reason=reason, stripe_reason=stripe_reason
    )
    with transaction(ops.ledger) as c:  # the debit and its audit commit together
        current = order_op(c, id=order_id)
        assert current is not None
        debited = refund_total_op(
            c,
            current,
            order["refunded_minor"] + refund.amount,
            key=f"refund:{refund.id}",
            reason=f"refund of top-up {order_id}: {reason}",
            actor=actor.name,
        )
        refunded = order_op(c, id=order_id)
        assert refunded is not None
        after = {**_money(refunded), "stripe_refund": refund.id, "debited_micros": debited}
        audit.record_op(
            c, actor, "orders.refund", order_id, reason=reason, before=_money(order), after=after
        )
    return {
        **get_order(ops.db, order_id),
        "stripe_refund_id": refund.id,
        "refunded_minor_now": refund.amount,
        "debited_micros": debited,
    }


def _money(order: dict[str, Any]) -> dict[str, Any]:
    return {
        k: order[k]
        for k in (
            "account_id",
            "status",
            "amount_usd_micros",
            "refunded_usd_micros",
            "refunded_minor",
        )
    }
