"""The admin pages under ``/console/admin/``: an operator's session only (any other: 403; no
session: sign in). Each page calls the admin service functions the admin API and the CLI
call (``apimodels.admin``), as an operator ``console:EMAIL`` of the audit log: one set of
rules, three doors. A destructive action is confirmed by a tick box the server checks (no
script needed); a grant carries a key made with its form, so a form posted twice grants once.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...admin import Operations, audit
from ...admin.accounts import (
    account_detail,
    close_account,
    search_accounts,
    suspend_account,
    unsuspend_account,
)
from ...admin.amounts import parse_usd
from ...admin.context import Actor, reading
from ...admin.credits import post_credits
from ...admin.keys import revoke_key
from ...admin.operators import console_actor
from ...admin.orders import find_orders, refund_order
from ...admin.overview import overview, record_check
from ...admin.tasks import cancel_task, find_tasks
from ...store.accounts import get_account
from ..app import Console, Endpoint, page, redirect
from ..chart import stacked_bars
from ..i18n import N_, _

PAGE = 25
STATUS_CHANGES = {
    "suspend": suspend_account,
    "unsuspend": unsuspend_account,
    "close": close_account,
}
#: What a redirect's ``done`` says on the page it lands on.
DONE = {
    "suspend": N_("Account suspended."),
    "unsuspend": N_("Suspension lifted."),
    "close": N_("Account closed."),
    "grant": N_("Credits granted."),
    "adjustment": N_("Credits adjusted."),
    "revoke": N_("Key revoked."),
    "refund": N_("Order refunded."),
    "cancel": N_("Task canceled."),
    "check": N_("The books were checked."),
}
TASK_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
#: An account's statuses, shown translated (the task and order ones are marked in i18n).
ACCOUNT_STATUSES = (N_("active"), N_("suspended"), N_("closed"))


def _text(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _confirmed(form: Any) -> None:
    """A destructive action goes ahead only with its confirmation ticked."""
    if form.get("confirm") != "yes":
        raise HTTPException(422, _("Tick the box to confirm: this cannot be undone."))


def operations(console: Console) -> Operations:
    """The admin services on the Console's own stores (the serving process's key cache,
    task runner and Stripe: a change holds here at once, as through ``/admin/v1/``)."""
    return Operations(
        console.db,
        console.ledger,
        console.task_store,
        console.catalog.privacy.close_grace_days,
        keys=console.keys,
        runner=console.runner,
        stripe=console.topups.stripe if console.topups is not None else None,
    )


def routes(console: Console) -> list[BaseRoute]:
    ops = operations(console)

    def actor(request: Request) -> Actor:
        return console_actor(request.scope["console_session"].email)

    def render(request: Request, template: str, **context: Any) -> Response:
        done = DONE.get(request.query_params.get("done", ""))
        return console.render(request, template, notice=_(done) if done else None, **context)

    async def home(request: Request) -> Response:
        figures = await reading(ops, overview)  # a database read: off the loop
        return render(
            request,
            "admin_overview.html",
            o=figures,
            chart=stacked_bars(figures.days, figures.spend_per_model),
        )

    async def check(request: Request) -> Response:
        await console.form(request)
        await record_check(ops, actor(request))
        return redirect("/admin?done=check")

    async def accounts(request: Request) -> Response:
        q = request.query_params.get("q", "").strip() or None
        after = request.query_params.get("after") or None
        rows, more = search_accounts(ops, q, limit=PAGE, starting_after=after)
        return render(request, "admin_accounts.html", rows=rows, more=more, q=q or "")

    async def account(request: Request) -> Response:
        detail = account_detail(ops, request.path_params["account_id"])
        return render(request, "admin_account.html", a=detail, grant_key=secrets.token_urlsafe(16))

    async def status_change(request: Request) -> Response:
        form = await console.form(request)
        action = request.path_params["action"]
        change = STATUS_CHANGES.get(action)
        if change is None:
            raise HTTPException(404, _("Not found."))
        if action != "unsuspend":
            _confirmed(form)
        after = change(
            ops, actor(request), request.path_params["account_id"], _text(form, "reason")
        )
        return redirect(f"/admin/accounts/{after['id']}?done={action}")

    async def credits(request: Request) -> Response:
        form = await console.form(request)
        kind = _text(form, "kind")
        amount = parse_usd(_text(form, "amount_usd"), signed=kind == "adjustment")
        key = _text(form, "idempotency_key")
        done = post_credits(
            ops,
            actor(request),
            request.path_params["account_id"],
            amount,
            kind=kind,
            reason=_text(form, "reason"),
            idempotency_key=f"console:{key}" if key else None,
        )
        return redirect(f"/admin/accounts/{done['account_id']}?done={kind}")

    async def revoke(request: Request) -> Response:
        form = await console.form(request)
        _confirmed(form)
        key = revoke_key(
            ops, actor(request), request.path_params["key_id"], _text(form, "reason") or None
        )
        return redirect(f"/admin/accounts/{key['account_id']}?done=revoke")

    async def orders(request: Request) -> Response:
        ref = request.query_params.get("account", "").strip()
        status = request.query_params.get("status") or None
        account_id = get_account(ops.db, ref)["id"] if ref else None
        rows = find_orders(ops, account_id, status, limit=100)
        return render(request, "admin_orders.html", rows=rows, account=ref, chosen=status or "")

    async def refund(request: Request) -> Response:
        form = await console.form(request)
        _confirmed(form)
        amount = _text(form, "amount_usd")
        order = await refund_order(
            ops,
            actor(request),
            request.path_params["order_id"],
            _text(form, "reason"),
            amount_micros=parse_usd(amount) if amount else None,
        )
        return redirect(f"/admin/orders?account={order['account_id']}&done=refund")

    async def tasks(request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status not in (None, *TASK_STATUSES):
            raise HTTPException(400, _("Unknown status."))
        rows, more = find_tasks(
            ops, None, status, limit=PAGE, starting_after=request.query_params.get("after") or None
        )
        return render(
            request,
            "admin_tasks.html",
            rows=rows,
            more=more,
            chosen=status or "",
            statuses=TASK_STATUSES,
        )

    async def cancel(request: Request) -> Response:
        form = await console.form(request)
        _confirmed(form)
        await cancel_task(
            ops, actor(request), request.path_params["task_id"], _text(form, "reason")
        )
        return redirect("/admin/tasks?done=cancel")

    async def audit_log(request: Request) -> Response:
        before = request.query_params.get("before", "")
        target = request.query_params.get("target") or None
        rows, more = audit.entries(
            ops.db, limit=PAGE, before_id=int(before) if before.isdigit() else None, target=target
        )
        return render(request, "admin_audit.html", rows=rows, more=more, target=target or "")

    async def audit_export(request: Request) -> Response:
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "jsonl"):
            raise HTTPException(400, _("Export as csv or jsonl."))
        rows, _more = audit.entries(ops.db, limit=100_000)
        media = "text/csv" if fmt == "csv" else "application/jsonl"
        return Response(
            audit.export(rows, fmt),
            media_type=f"{media}; charset=utf-8",
            headers={
                "content-disposition": f'attachment; filename="admin-audit.{fmt}"',
                "cache-control": "no-store",
            },
        )

    def admin(handler: Endpoint) -> Endpoint:
        return page(console, handler, operator=True)

    return [
        Route("/admin", admin(home), methods=["GET"]),
        Route("/admin/ledger-check", admin(check), methods=["POST"]),
        Route("/admin/accounts", admin(accounts), methods=["GET"]),
        Route("/admin/accounts/{account_id}", admin(account), methods=["GET"]),
        Route("/admin/accounts/{account_id}/credits", admin(credits), methods=["POST"]),
        Route("/admin/accounts/{account_id}/{action}", admin(status_change), methods=["POST"]),
        Route("/admin/keys/{key_id}/revoke", admin(revoke), methods=["POST"]),
        Route("/admin/orders", admin(orders), methods=["GET"]),
        Route("/admin/orders/{order_id}/refund", admin(refund), methods=["POST"]),
        Route("/admin/tasks", admin(tasks), methods=["GET"]),
        Route("/admin/tasks/{task_id}/cancel", admin(cancel), methods=["POST"]),
        Route("/admin/audit", admin(audit_log), methods=["GET"]),
        Route("/admin/audit/export", admin(audit_export), methods=["GET"]),
    ]
