"""The admin HTTP API under ``/admin/v1/``: the admin service functions behind admin tokens.

Each endpoint is declared once, as an :class:`Endpoint` (method, path, the models of its
query, body and answer, its handler); the routes and the OpenAPI document are both made
from that table, so they cannot drift. A request is authenticated by its admin token
(401), a write needs a token of scope ``write`` (403), the query and body are validated by
their models (400), and the answer is shaped by its model. Errors are in OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .. import fastjson
from ..http.reading import read_json, validation_error
from ..store.accounts import get_account
from . import audit, models
from .accounts import (
    account_detail,
    close_account,
    search_accounts,
    suspend_account,
    unsuspend_account,
)
from .amounts import parse_usd
from .checks import check_books
from .context import Actor, Operations, reading, require_write
from .credits import post_credits
from .keys import revoke_key
from .orders import find_orders, refund_order, show_order
from .tasks import cancel_task, find_tasks
from .tokens import authenticate
from .usage import usage_totals

PREFIX = "/admin/v1"


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(_Query):
    limit: int = Field(default=20, ge=1, le=100)


class AccountsQuery(Page):
    q: str | None = Field(default=None, description="An account id, or part of an email")
    starting_after: str | None = Field(default=None, description="The last id of a page")


class OrdersQuery(Page):
    account: str | None = Field(default=None, description="An account id or email")
    status: str | None = None


class TasksQuery(Page):
    account: str | None = Field(default=None, description="An account id or email")
    status: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None
    starting_after: str | None = Field(default=None, description="The last id of a page")


class UsageQuery(Page):
    group_by: Literal["account", "model", "day"] = "day"
    since: str | None = Field(default=None, description="ISO-8601 UTC time, inclusive")
    until: str | None = Field(default=None, description="ISO-8601 UTC time, exclusive")
    account: str | None = Field(default=None, description="An account id or email")


class AuditQuery(Page):
    before_id: int | None = Field(default=None, ge=1, description="The last id of a page")
    target: str | None = None
    action: str | None = None
    actor: str | None = None


class ExportQuery(_Query):
    format: Literal["jsonl", "csv"] = "jsonl"
    limit: int = Field(default=10_000, ge=1, le=100_000)


Handler = Callable[[Operations, Actor, dict[str, str], Any, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One admin operation: where it is, what it takes and answers, and who may call it."""

    method: str
    path: str
    summary: str
    handler: Handler
    response: type[BaseModel] | None  # None: a text export
    query: type[_Query] | None = None
    body: type[BaseModel] | None = None
    #: Error statuses beyond those of every admin route (400, 401, 403, 404, 413).
    conflicts: tuple[int, ...] = ()

    @property
    def writes(self) -> bool:
        return self.method != "GET"


def _account_id(ops: Operations, ref: str | None) -> str | None:
    return None if ref is None else get_account(ops.db, ref)["id"]


def _list(rows: list[dict[str, Any]], more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": rows, "has_more": more}


async def _accounts(ops: Operations, actor: Actor, path: dict[str, str], q: Any, _: Any) -> Any:
    rows, more = search_accounts(ops, q.q, limit=q.limit, starting_after=q.starting_after)
    return _list(rows, more)


async def _account(ops: Operations, actor: Actor, path: dict[str, str], q: Any, _: Any) -> Any:
    return account_detail(ops, path["account_id"])


def _status(change: Callable[..., dict[str, Any]]) -> Handler:
    async def handler(
        ops: Operations, actor: Actor, path: dict[str, str], q: Any, body: Any
    ) -> Any:
        return change(ops, actor, path["account_id"], body.reason)

    return handler


def _credits(kind: str) -> Handler:
    async def handler(
        ops: Operations, actor: Actor, path: dict[str, str], q: Any, body: Any
    ) -> Any:
        return post_credits(
            ops,
            actor,
            path["account_id"],
            parse_usd(body.amount_usd, signed=kind == "adjustment"),
            kind=kind,
            reason=body.reason,
            idempotency_key=body.idempotency_key,
        )

    return handler


async def _revoke(ops: Operations, actor: Actor, path: dict[str, str], q: Any, body: Any) -> Any:
    return revoke_key(ops, actor, path["key_id"], body.reason)


async def _orders(ops: Operations, actor: Actor, path: dict[str, str], q: Any, _: Any) -> Any:
    rows = find_orders(ops, _account_id(ops, q.account), q.status, q.limit + 1)
    return _list(rows[: q.limit], len(rows) > q.limit)


async def _order(ops: Operations, actor: Actor, path: dict[str, str], q: Any, _: Any) -> Any:
    return show_order(ops, path["order_id"])


async def _refund(ops: Operations, actor: Actor, path: dict[str, str], q: Any, body: Any) -> Any:
    amount = None if body.amount_usd is None else parse_usd(body.amount_usd)
    return await refund_order(
        ops,
        actor,
        path["order_id"],
        body.reason,
        amount_micros=amount,
        stripe_reason=body.stripe_reason,
    )


async def _tasks(ops: Operations, actor: Actor, path: dict[str, str], q: Any, _: Any) -> Any:
    rows, more = find_tasks(
        ops,
        _account_id(ops, q.account),
        q.status,
        limit=q.limit,
        starting_after=q.starting_after,
    )
    return _list(rows, more)


async def _cancel(ops: Operations, actor: Actor, path: dict[str, str], q: Any, body: Any) -> Any:
    return await cancel_task(ops, actor, path["task_id"], body.reason)


async def _usage(ops: Operations, actor: Actor, path: dict[str, str], q: Any, _: Any) -> Any:
    account_id = _account_id(ops, q.account)
    rows = await reading(
        ops,
        lambda on: usage_totals(
            on, q.group_by, since=q.since, until=q.until, account_id=account_id, limit=q.limit
        ),
    )
    return _list(rows)


async def _books(ops: Operations, actor: Actor, path: dict[str, str], q: Any, _: Any) -> Any:
    return await reading(ops, check_books)


async def _audit(ops: Operations, actor: Actor, path: dict[str, str], q: Any, _: Any) -> Any:
    rows, more = audit.entries(
        ops.db,
        limit=q.limit,
        before_id=q.before_id,
        target=q.target,
        action=q.action,
        actor=q.actor,
    )
    return _list(rows, more)


async def _export(ops: Operations, actor: Actor, path: dict[str, str], q: Any, _: Any) -> Any:
    rows, _more = audit.entries(ops.db, limit=q.limit)
    media = "text/csv" if q.format == "csv" else "application/jsonl"
    return Response(audit.export(rows, q.format), media_type=f"{media}; charset=utf-8")


A = f"{PREFIX}/accounts/{{account_id}}"

#: Every admin operation; the routes and /openapi.json are made from this table.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", f"{PREFIX}/accounts", "Search accounts by id or email", _accounts,
             models.AccountList, AccountsQuery),
    Endpoint("GET", A, "An account: balance, keys, recent usage, violations, orders", _account,
             models.AccountDetail),
    Endpoint("POST", f"{A}/suspend", "Suspend an account (its calls answer 403 with the reason)",
             _status(suspend_account), models.Account, body=models.Reason, conflicts=(409,)),
    Endpoint("POST", f"{A}/unsuspend", "Lift a suspension", _status(unsuspend_account),
             models.Account, body=models.Reason, conflicts=(409,)),
    Endpoint("POST", f"{A}/close", "Close an account for good", _status(close_account),
             models.Closed, body=models.Reason, conflicts=(409,)),
    Endpoint("POST", f"{A}/grants", "Grant credits", _credits("grant"), models.Credited,
             body=models.CreditsPost),
    Endpoint("POST", f"{A}/adjustments", "Adjust credits (either sign)", _credits("adjustment"),
             models.Credited, body=models.CreditsPost),
    Endpoint("POST", f"{PREFIX}/keys/{{key_id}}/revoke", "Revoke an API key", _revoke,
             models.Key, body=models.Reason),
    Endpoint("GET", f"{PREFIX}/orders", "Top-up orders, newest first", _orders,
             models.OrderList, OrdersQuery),
    Endpoint("GET", f"{PREFIX}/orders/{{order_id}}", "A top-up order with its ledger entries",
             _order, models.OrderDetail),
    Endpoint("POST", f"{PREFIX}/orders/{{order_id}}/refund", "Refund a paid order via Stripe",
             _refund, models.Refunded, body=models.RefundPost, conflicts=(409, 502, 503)),
    Endpoint("GET", f"{PREFIX}/tasks", "Tasks of every account, newest first", _tasks,
             models.AdminTaskList, TasksQuery),
    Endpoint("POST", f"{PREFIX}/tasks/{{task_id}}/cancel", "Cancel a task (cost 0)", _cancel,
             models.AdminTask, body=models.Reason, conflicts=(409,)),
    Endpoint("GET", f"{PREFIX}/usage", "Usage totals per account, model or day", _usage,
             models.UsageTotals, UsageQuery),
    Endpoint("GET", f"{PREFIX}/ledger/check", "Check the ledger and the orders", _books,
             models.BooksCheck),
    Endpoint("GET", f"{PREFIX}/audit", "The admin audit log, newest first", _audit,
             models.AuditLog, AuditQuery),
    Endpoint("GET", f"{PREFIX}/audit/export", "The admin audit log as JSON lines or CSV",
             _export, None, ExportQuery),
)  # fmt: skip


def _parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def bind(ops: Operations, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint`` as a Starlette endpoint on ``ops``."""

    async def serve(request: Request) -> Response:
        actor = authenticate(ops.db, request.headers.get("authorization"))
        if endpoint.writes:
            require_write(actor)
        query = _parse(endpoint.query or _Query, dict(request.query_params))
        body = _parse(endpoint.body, await read_json(request)) if endpoint.body else None
        result = await endpoint.handler(ops, actor, dict(request.path_params), query, body)
        if isinstance(result, Response):
            return result
        assert endpoint.response is not None
        shaped = endpoint.response.model_validate(result).model_dump(mode="json")
        return Response(fastjson.dumps(shaped), media_type="application/json")

    serve.__name__ = f"admin_{endpoint.method.lower()}_{endpoint.path}"
    return serve


def admin_routes(
    ops: Operations,
) -> list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]]:
    """(path, endpoint, methods) of every admin operation, for ``create_app``."""
    return [(e.path, bind(ops, e), [e.method]) for e in ENDPOINTS]
