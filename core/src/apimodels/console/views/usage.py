"""Usage: every call with filters (model, key, status, time range), one call's detail
(quantities, unit prices, cost) and a CSV export of what the filters select."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ...billing.ledger import get_usage
from ...billing.money import format_usd
from ..app import Console, page

#: Quantities a usage row may carry, in the order the detail page lists them.
QUANTITIES = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "audio_input_tokens",
    "output_tokens",
    "images",
    "characters",
    "seconds",
)
CSV_COLUMNS = (
    "request_id",
    "created_at",
    "model",
    "provider",
    "key_id",
    "status",
    *QUANTITIES,
    "cost_usd",
)
PAGE = 50
STATUSES = ("succeeded", "failed", "pending")


def _filters(request: Request) -> dict[str, str]:
    q = request.query_params
    out = {k: q.get(k, "").strip() for k in ("model", "key", "status", "since", "until")}
    if out["status"] and out["status"] not in STATUSES:
        raise HTTPException(422, "status: succeeded, failed or pending.")
    for name in ("since", "until"):  # dates from <input type=date>: YYYY-MM-DD
        if out[name] and not (len(out[name]) == 10 and out[name][4] == "-" and out[name][7] == "-"):
            raise HTTPException(422, f"{name}: a date as YYYY-MM-DD.")
    return out


def _query(account_id: str, f: dict[str, str]) -> tuple[str, list[Any]]:
    where, params = ["account_id = ?"], [account_id]
    for column, name in (("model", "model"), ("key_id", "key"), ("status", "status")):
        if f[name]:
            where.append(f"{column} = ?")
            params.append(f[name])
    if f["since"]:
        where.append("created_at >= ?")
        params.append(f["since"])
    if f["until"]:
        where.append("created_at < ?")
        params.append(f["until"] + "T99")  # the whole day: any time on it sorts below
    return " AND ".join(where), params


def routes(console: Console) -> list[BaseRoute]:
    async def index(request: Request) -> Response:
        account_id = request.scope["console_session"].account_id
        f = _filters(request)
        where, params = _query(account_id, f)
        before = request.query_params.get("before", "")
        if before:
            where += " AND request_id < ?"
            params.append(before)
        rows = list(
            console.db.query(
                f"SELECT * FROM usage WHERE {where} ORDER BY created_at DESC, request_id DESC LIMIT ?",
                [*params, PAGE + 1],
            )
        )
        models = sorted(console.catalog.models)
        keys = console.db.execute(
            "SELECT id, name FROM api_keys WHERE account_id = ? ORDER BY created_at", [account_id]
        ).fetchall()
        return console.render(
            request,
            "usage.html",
            rows=rows[:PAGE],
            more=rows[PAGE - 1]["request_id"] if len(rows) > PAGE else None,
            filters=f,
            models=models,
            keys=keys,
            statuses=STATUSES,
        )

    async def export(request: Request) -> Response:
        account_id = request.scope["console_session"].account_id
        where, params = _query(account_id, _filters(request))
        db = console.db

        def lines() -> Iterator[str]:
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(CSV_COLUMNS)
            cursor = db.query(f"SELECT * FROM usage WHERE {where} ORDER BY created_at", params)
            for row in cursor:
                writer.writerow(
                    [*(row[c] for c in CSV_COLUMNS[:-1]), format_usd(row["cost_micros"] or 0)]
                )
                yield out.getvalue()
                out.seek(0)
                out.truncate()

        headers = {
            "content-disposition": 'attachment; filename="usage.csv"',
            "cache-control": "no-store",
        }
        return StreamingResponse(iter(list(lines())), media_type="text/csv", headers=headers)

    async def detail(request: Request) -> Response:
        account_id = request.scope["console_session"].account_id
        row = get_usage(console.db, account_id, request.path_params["request_id"])
        prices = json.loads(row["unit_prices"]) if row["unit_prices"] else {}
        quantities = [(q, row.get(q)) for q in QUANTITIES if row.get(q)]
        return console.render(
            request, "usage_detail.html", row=row, prices=prices, quantities=quantities
        )

    return [
        Route("/usage", page(console, index), methods=["GET"]),
        Route("/usage.csv", page(console, export), methods=["GET"]),
        Route("/usage/{request_id}", page(console, detail), methods=["GET"]),
    ]
