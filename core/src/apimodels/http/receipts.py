"""What a call cost: the account's credits, usage rows and single generations over HTTP.

Amounts are USD decimal strings with six places (``"0.000135"``), as everywhere in the API.
An account sees only its own rows: another account's request id answers 404.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import fastjson
from ..billing.ledger import GroupCommit, get_usage, list_usage
from ..billing.money import format_usd, usd_number
from ..billing.usage import QUANTITY_FIELDS
from ..errors import InvalidRequest
from ..store.accounts import KeyStore
from ..store.db import off_loop


def render_usage(row: dict[str, Any]) -> dict[str, Any]:
    usage = {k: row[k] for k in QUANTITY_FIELDS if row.get(k)}
    return {
        "id": row["request_id"],
        "object": "generation",
        "created_at": row["created_at"],
        "model": row["model"],
        "provider": row["provider"],
        "modality": row["modality"],
        "key_id": row["key_id"],
        "status": row["status"],
        "stream": bool(row["stream"]),
        "usage": usage,
        "unit_prices": json.loads(row["unit_prices"]) if row.get("unit_prices") else {},
        "cost": None if row["cost_micros"] is None else usd_number(row["cost_micros"]),
        "hold": format_usd(row["hold_micros"] or 0),
        "error_code": row["error_code"],
        "latency_ms": row["latency_ms"],
    }


def _time(value: str | None, name: str) -> str | None:
    """A Unix timestamp or an ISO-8601 time -> the stored ISO form (UTC)."""
    if value is None:
        return None
    try:
        moment = (
            datetime.fromtimestamp(float(value), UTC)
            if value.replace(".", "", 1).isdigit()
            else datetime.fromisoformat(value)
        )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="microseconds")
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(
            f"'{name}' must be a Unix timestamp or an ISO-8601 time", param=name
        ) from None


def page_limit(value: str | None, default: int = 20) -> int:
    """A list endpoint's ``limit`` query parameter: 1 to 100 (400 otherwise)."""
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100", param="limit")
    return int(value)


def _json(body: Any) -> Response:
    return Response(fastjson.dumps(body), media_type="application/json")


class Receipts:
    """The account's own billing data. Each read first commits this process's queued
    ledger writes, so a client sees the charge of the call it just made."""

    def __init__(self, keys: KeyStore, writes: GroupCommit) -> None:
        self.keys = keys
        self.ledger = writes.ledger
        self.writes = writes

    async def credits(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        await self.writes.flushed()
        b = await off_loop(self.ledger.db, self.ledger.balance, principal.account_id)
        return _json(
            {
                "object": "credits",
                "currency": "USD",
                "balance": format_usd(b.balance_micros),
                "pending_holds": format_usd(b.held_micros),
                "available": format_usd(b.available_micros),
            }
        )

    async def usage(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        q = request.query_params
        limit = page_limit(q.get("limit"))
        since, until = _time(q.get("since"), "since"), _time(q.get("until"), "until")
        await self.writes.flushed()
        db = self.ledger.db
        rows, more = await off_loop(
            db,
            lambda: list_usage(
                db,
                principal.account_id,
                limit=limit,
                starting_after=q.get("starting_after"),
                since=since,
                until=until,
                model=q.get("model"),
            ),
        )
        return _json({"object": "list", "data": [render_usage(r) for r in rows], "has_more": more})

    async def generation(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        await self.writes.flushed()
        row = await off_loop(
            self.ledger.db,
            get_usage,
            self.ledger.db,
            principal.account_id,
            request.path_params["request_id"],
        )
        return _json(render_usage(row))
