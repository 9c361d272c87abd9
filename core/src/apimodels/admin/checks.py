"""The books checked on demand: the ledger's invariants and every order against its entries."""

from __future__ import annotations

from typing import Any

from ..store.db import utcnow
from ..topups.orders import reconcile
from .context import Operations


def check_books(ops: Operations) -> dict[str, Any]:
    """``ok`` when the ledger (``apimodels ledger check``) and the orders (``apimodels
    orders reconcile``) show no problem; each problem found otherwise, one line each."""
    ledger = ops.ledger.check()
    orders = reconcile(ops.db)
    return {
        "ok": not ledger and not orders,
        "checked_at": utcnow(),
        "ledger_problems": ledger,
        "order_problems": orders,
    }
