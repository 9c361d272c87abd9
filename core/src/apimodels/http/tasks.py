"""The tasks API over HTTP, and the endpoint that takes upstream job webhooks.

    POST /v1/tasks                  {"model", "input", "webhook"?} -> 202 task
    GET  /v1/tasks                  the account's tasks, newest first (limit, starting_after, status)
    GET  /v1/tasks/{id}             one task (another account's id is 404)
    POST /v1/tasks/{id}/cancel      cancel a queued or running task: cost 0
    DELETE /v1/tasks/{id}           delete its output files and content (canceled first if
                                    running); the billing record stays
    POST /webhooks/{provider}/{id}  an upstream's signed job event

Before anything is held or sent, a task's input is validated (against the model's input
schema from its plugin, or as the unified request of its modality), the content policy is
asked, and the webhook URL is checked. Output files are listed with signed URLs that expire:
fetch the task again for fresh ones.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .. import fastjson
from ..billing.biller import Biller
from ..catalog import TasksConfig
from ..errors import InvalidRequest, NotFound, PermissionDenied, ServiceUnavailable
from ..policy import check_policy
from ..privacy import remove_task_content
from ..providers import dispatch
from ..providers.runtime import Gateway, Route
from ..schemas import TaskRequest
from ..storage import StorageError
from ..store.accounts import KeyStore, Principal
from ..store.db import commit_off_loop, off_loop
from ..tasks.notify import check_resolves_public, check_url
from ..tasks.render import render_task
from ..tasks.runner import TaskRunner, unified_request
from ..tasks.store import STATUSES, TERMINAL, TaskStore, new_task_id
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import Idempotency
from .reading import read_json, validation_error
from .receipts import page_limit


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = None


def _json(body: Any, status: int = 200) -> Response:
    return Response(fastjson.dumps(body), status, media_type="application/json")


def _schema_error(route: Route, error: Any) -> InvalidRequest:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return InvalidRequest(
        f"Invalid task input for {route.model.id}: {error.message}"
        + (f" (at input{path})" if path else ""),
        param=f"input{path}",
        code="invalid_input",
    )


class TasksAPI:
    def __init__(
        self,
        gateway: Gateway,
        keys: KeyStore,
        biller: Biller,
        idempotency: Idempotency,
        store: TaskStore,
        runner: TaskRunner,
        config: TasksConfig,
    ) -> None:
        self.gateway = gateway
        self.keys = keys
        self.biller = biller
        self.idempotency = idempotency
        self.store = store
        self.runner = runner
        self.config = config
        # Compiled once: validating an input is then a walk of the schema, no parsing.
        self.validators = {
            model_id: Draft202012Validator(route.input_schema)
            for model_id, route in gateway.routes.items()
            if route.input_schema is not None
        }

    def render(self, task: dict[str, Any], request: Request | None = None) -> dict[str, Any]:
        origin = str(request.base_url) if request is not None else ""
        return render_task(task, self.runner.storage, origin)

    # --- endpoints -----------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            return await self._submit(request, principal)
        return await self.idempotency.run(
            request, principal.account_id, key, lambda: self._submit(request, principal)
        )

    async def _submit(self, request: Request, principal: Principal) -> Response:
        try:
            body = TaskCreate.model_validate(await read_json(request))
        except ValidationError as exc:
            raise validation_error(exc) from None
        route = self.gateway.route(body.model)
        if route is None:
            raise NotFound(
                f"The model '{body.model}' does not exist or is not served here.",
                code="model_not_found",
                param="model",
            )
        if route.lifecycle is not None:
            request.scope["state"]["headers"] = route.lifecycle.at(time.time())
        route.provider.ensure_available()
        hold = await self.validate(route, body.input, principal, request)
        webhook = None
        if body.webhook is not None:
            allow = self.config.allow_private_webhooks
            webhook = check_url(body.webhook, allow_private=allow)
            if not allow:
                await check_resolves_public(webhook)
        task = await self._create(principal, route, body.input, webhook, hold)
        self.runner.kick()
        return _json(self.render(task, request), 202)

    async def validate(
        self,
        route: Route,
        input: dict[str, Any],
        principal: Principal,
        request: Request | None = None,
    ) -> int:
        """Check a task's input and ask the policy; return its hold (all before any I/O)."""
        if route.jobs:
            validator = self.validators.get(route.model.id)
            if validator is not None:
                error = next(iter(validator.iter_errors(input)), None)
                if error is not None:
                    raise _schema_error(route, error)
            unified: Any = TaskRequest(model=route.model.id, input=input)
        else:
            try:
                unified = unified_request(route, input)
            except ValidationError as exc:
                err = exc.errors()[0]
                path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
                raise InvalidRequest(
                    f"Invalid task input for {route.model.id}: {err['msg']} (at input{path})",
                    param=f"input{path}",
                    code="invalid_input",
                ) from None
        request_id = request.scope["state"]["request_id"] if request is not None else None
        await check_policy(
            self.gateway, route, unified, principal.account_id, principal.key_id, request_id
        )
        return dispatch.estimate(route, unified)[1]

    async def _create(
        self,
        principal: Principal,
        route: Route,
        input: dict[str, Any],
        webhook: str | None,
        hold: int,
    ) -> dict[str, Any]:
        billing = self.biller.enabled
        if billing:
            await self.biller.limiter.admit(principal, hold)
        create = partial(
            self.store.create,
            new_task_id(),
            account_id=principal.account_id,
            key_id=principal.key_id,
            model=route.model.id,
            provider=route.provider.name,
            modality=route.model.modality.value,
            input=input,
            webhook_url=webhook,
            hold_micros=hold,
            unit_prices=route.prices_json,
            timeout_seconds=route.model.task_timeout_seconds or self.config.timeout_seconds,
            billing=billing,
        )
        # On PostgreSQL its round trips run on a worker thread, which commits whether or not
        # this request still waits (a client gone, a shutdown): the outcome is counted.
        return await commit_off_loop(
            self.store.db, create, partial(self._counted, principal, hold, billing)
        )

    def _counted(self, principal: Principal, hold: int, billing: bool, created: bool) -> None:
        """Tell the key's limiter whether the task admitted with ``hold`` was created: its
        hold then counts as spent until it ends (as in the key's running totals, which a
        renewed lease reads); else it was never held."""
        if not billing:
            return
        if created:
            self.biller.limiter.spent(principal, hold)
        else:
            self.biller.limiter.released(principal, hold)

    async def get(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        task = await off_loop(
            self.store.db, self.store.get, principal.account_id, request.path_params["id"]
        )
        return _json(self.render(task, request))

    async def list(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        q = request.query_params
        limit = page_limit(q.get("limit"))
        status = q.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"'status' must be one of {', '.join(STATUSES)}", param="status")
        tasks, more = await off_loop(
            self.store.db,
            lambda: self.store.page(
                principal.account_id,
                limit=limit,
                status=status,
                starting_after=q.get("starting_after"),
            ),
        )
        return _json(
            {"object": "list", "data": [self.render(t, request) for t in tasks], "has_more": more}
        )

    async def cancel(self, request: Request) -> Response:
        principal = await self.keys.check(request.headers.get("authorization"))
        task = self.store.get(principal.account_id, request.path_params["id"])
        if task["status"] == "canceled":
            return _json(self.render(task, request))
        if task["status"] in TERMINAL:
            raise InvalidRequest(
                f"Task {task['id']} has already {task['status']}; it cannot be canceled.",
                code="task_not_cancelable",
                status=409,
            )
        await self.runner.cancel(task)
        return _json(self.render(self.store.get(principal.account_id, task["id"]), request))

    async def delete(self, request: Request) -> Response:
        """The owner deletes a task: canceled first if unfinished (cost 0), then its files and
        content go; its billing record stays. Deleting it again answers the same object."""
        principal = await self.keys.check(request.headers.get("authorization"))
        task = self.store.get(principal.account_id, request.path_params["id"])
        if task["status"] not in TERMINAL:
            await self.runner.cancel(task)
        task = self.store.mark_deleted(principal.account_id, task["id"])
        if task["output_expired_at"] is None:
            try:
                await remove_task_content(self.store, self.runner.storage, task, scan=True)
            except StorageError:
                # Marked deleted: the retention sweep finishes it. A retry confirms.
                raise ServiceUnavailable(
                    "The task's files could not be deleted right now; it is marked deleted "
                    "and they will be removed shortly. Retry to confirm.",
                    code="storage_unavailable",
                ) from None
        return _json(self.render(self.store.get(principal.account_id, task["id"]), request))

    async def upstream_webhook(self, request: Request) -> Response:
        """An upstream's job event: verified, then the task is looked at once more."""
        provider = self.gateway.providers.get(request.path_params["provider"])
        task = self.store.load(request.path_params["id"])
        if provider is None or task is None or task["provider"] != provider.name:
            raise NotFound("Unknown webhook target", code="not_found")
        body = await request.body()
        try:
            data = provider.hooks.verify_webhook(
                headers=request.headers, body=body, upstream=provider.upstream
            )
        except PermissionDenied as exc:
            raise InvalidRequest(exc.message, code="invalid_signature") from None
        if data is None:
            raise NotFound(f"{provider.name} sends no webhooks here", code="not_found")
        await self.runner.on_webhook(task, data)
        return _json({"received": True})

    # --- images through jobs: the synchronous endpoint waits a while ------------------------

    async def run_sync(
        self, principal: Principal, route: Route, input: dict[str, Any]
    ) -> dict[str, Any]:
        """Run a task and wait for it up to ``tasks.sync_wait_seconds`` (then 504 naming the
        task, which goes on and is billed when it ends)."""
        hold = await self.validate(route, input, principal)
        task = await self._create(principal, route, input, None, hold)
        return await self.runner.wait_for(task, self.config.sync_wait_seconds)
