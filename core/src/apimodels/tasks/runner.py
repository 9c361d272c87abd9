"""The task worker: moves every unfinished task forward, inside the server process.

One loop per server claims due tasks with a lease (see ``store``), then for each task:

- a model the upstream runs as jobs: submit the job (once), then poll it with backoff (an
  upstream webhook makes the next poll due at once) until it ends;
- any other model: run its ordinary call, in the background;
- on success copy every output file into storage *before* the task succeeds (upstream URLs
  expire), price the usage (the upstream's own figures plus what the files measure: images,
  outputs, seconds of video or audio), and finish: status and capture in one transaction;
- on failure, cancel or timeout finish with the hold released: the task costs nothing.

Transient trouble (the upstream or the storage briefly unreachable) keeps the task running
and retries at the next poll, until the task's deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from pydantic import ValidationError

from .. import fastjson
from ..catalog import TasksConfig
from ..errors import APIError, InvalidRequest, UpstreamError, UpstreamTimeout
from ..policy.texts import user_texts
from ..providers import dispatch, media
from ..providers.runtime import Gateway, Route
from ..providers.types import Job, Usage
from ..providers.upstream import send
from ..schemas import ENDPOINTS, ChatRequest, ImageRequest, Modality, TaskRequest, UnifiedRequest
from ..storage import ObjectTooLarge, Storage, StorageError, extension_for
from .notify import Notifier, account_webhook_secret
from .render import render_task
from .store import TASK_HEADER, TERMINAL, Finish, TaskStore

log = logging.getLogger("apimodels")

_REQUEST_OF: dict[Modality, type[UnifiedRequest]] = {m: s for s, m in ENDPOINTS.values()}
_MILLI = Decimal("0.001")


def _too_large() -> APIError:
    return APIError(
        "an output is larger than this server stores", code="output_too_large", status=502
    )


class Transient(Exception):
    """Trouble worth retrying at the next poll (the task stays running)."""


@dataclass(slots=True)
class Stored:
    """An output file in storage, as recorded on the task."""

    key: str
    content_type: str
    bytes: int
    seconds: Decimal = Decimal(0)  # of audio or video, for per-second prices

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "content_type": self.content_type, "bytes": self.bytes}


def unified_request(route: Route, input: dict[str, Any]) -> UnifiedRequest:
    """A task's input as the unified request of its model's modality (validated)."""
    schema = _REQUEST_OF.get(route.model.modality)
    if schema is None or route.model.modality is Modality.transcription:
        raise APIError(f"'{route.model.id}' cannot run as a task", code="not_supported", status=400)
    body: dict[str, Any] = {**input, "model": route.model.id}
    if schema is ChatRequest:
        body["stream"] = False
    if schema is ImageRequest:
        body["response_format"] = "b64_json"  # bytes to store, not an upstream URL
    return schema.model_validate(body)


def _seconds(content_type: str, data: bytes) -> Decimal:
    """Seconds of audio or video in a file, read from its headers (0 when unknown)."""
    if content_type.startswith("video/"):
        length = media.mp4_duration(data)
    elif content_type.startswith("audio/"):
        length = media.duration(data)
    else:
        return Decimal(0)
    return Decimal(0) if length is None else Decimal(str(length)).quantize(_MILLI)


class TaskRunner:
    """Advances tasks; one per server process (several on one database are safe)."""

    def __init__(
        self,
        gateway: Gateway,
        store: TaskStore,
        storage: Storage,
        config: TasksConfig,
        *,
        billing: bool,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.storage = storage
        self.config = config
        self.billing = billing
        self.notifier = Notifier(
            allow_private=config.allow_private_webhooks,
            timeout=config.webhook_timeout_seconds,
            retry_hours=config.webhook_retry_hours,
            first_retry=config.webhook_first_retry_seconds,
        )
        self.public_url = gateway.catalog.gateway.public_url or ""
        self.wake = asyncio.Event()
        self.active: set[asyncio.Task[None]] = set()
        self.advancing: set[str] = set()  # task ids this process is working on
        self.finished: dict[str, asyncio.Event] = {}  # task id -> set when it ends here

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        tick = min(self.config.poll_interval_seconds, 0.5)
        while True:
            try:
                self._claim()
            except Exception as exc:  # a busy database: try again at the next tick
                log.error("task worker: %s", type(exc).__name__)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), tick)

    def _claim(self) -> None:
        free = self.config.concurrency - len(self.active)
        if free > 0:
            for task in self.store.claim_due(free, self.config.lease_seconds):
                if task["id"] not in self.advancing:  # a lease that ran out under us
                    self._spawn(self.advance(task))
        for task in self.store.claim_webhooks(16, self.config.webhook_timeout_seconds * 2):
            self._spawn(self.notify(task))

    def _spawn(self, coro: Any) -> None:
        job = asyncio.create_task(coro)
        self.active.add(job)
        job.add_done_callback(self.active.discard)

    def kick(self) -> None:
        """Look for due work now (a task was submitted, a webhook arrived)."""
        self.wake.set()

    async def aclose(self) -> None:
        for job in list(self.active):
            job.cancel()
        await asyncio.gather(*self.active, return_exceptions=True)
        await self.notifier.aclose()

    # --- one task ------------------------------------------------------------------------

    async def advance(self, task: dict[str, Any], job: Job | None = None) -> None:
        """One step of a leased task, its lease renewed while it runs."""
        task_id = task["id"]
        if task_id in self.advancing:
            return
        self.advancing.add(task_id)
        heartbeat = asyncio.create_task(self._renew(task_id))
        try:
            await self._step(task, job)
        finally:
            heartbeat.cancel()
            self.advancing.discard(task_id)

    async def _renew(self, task_id: str) -> None:
        every = self.config.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                self.store.renew_lease(task_id, self.config.lease_seconds)
            except Exception as exc:  # a busy database: the next beat tries again
                log.warning("task %s: lease not renewed: %s", task_id, type(exc).__name__)

    async def _step(self, task: dict[str, Any], job: Job | None) -> None:
        """Never raises: a failure ends the task or reschedules it."""
        task_id = task["id"]
        try:
            route = self.gateway.routes.get(task["model"])
            if route is None:
                await self._finish(
                    task,
                    Finish(
                        "failed",
                        error_code="model_unavailable",
                        error_message="this model is no longer served",
                    ),
                )
                return
            if datetime.fromisoformat(task["deadline_at"]) <= datetime.now(UTC):
                await self._cancel_upstream(route, task)
                await self._finish(
                    task,
                    Finish(
                        "failed",
                        error_code="timeout",
                        error_message="the task did not finish in time",
                    ),
                )
                return
            if route.jobs:
                await self._advance_job(route, task, job)
            else:
                await self._run_call(route, task)
        except Transient as exc:
            log.warning("task %s: will retry: %s", task_id, exc)
            self.store.release_lease(task_id, self._backoff(task))
        except APIError as exc:
            await self._finish(
                task, Finish("failed", error_code=exc.code, error_message=exc.message)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or unreadable upstream answer: fail, cost nothing
            log.error("task %s failed: %s", task_id, type(exc).__name__)
            await self._finish(
                task,
                Finish(
                    "failed",
                    error_code="internal_error",
                    error_message="the task failed on the server",
                ),
            )

    def _backoff(self, task: dict[str, Any]) -> float:
        first = self.config.poll_interval_seconds
        return min(first * 1.5 ** min(task["polls"], 30), self.config.max_poll_interval_seconds)

    async def _send(
        self, route: Route, request: httpx.Request, *, stream: bool = False
    ) -> httpx.Response:
        provider = route.provider
        provider.ensure_available()
        assert provider.client is not None
        try:
            return await send(
                provider.client,
                request,
                provider=provider.name,
                max_retries=provider.config.max_retries,
                stream=stream,
            )
        except (UpstreamTimeout, UpstreamError) as exc:
            raise Transient(exc.message) from None

    async def _advance_job(self, route: Route, task: dict[str, Any], job: Job | None) -> None:
        hooks, upstream = route.provider.hooks, route.provider.upstream
        if job is None:
            if task["upstream_id"] is None:
                request = hooks.build_job_request(
                    model=route.model,
                    input=json.loads(task["input"]),
                    upstream=upstream,
                    webhook_url=self._webhook_url(route, task),
                    wait_seconds=task.get("_wait"),
                )
                response = await self._send_create(route, request)
            else:
                request = hooks.build_job_poll(
                    model=route.model, job_id=task["upstream_id"], upstream=upstream
                )
                response = await self._send(route, request)
                if response.status_code >= 500:
                    raise Transient(f"poll answered HTTP {response.status_code}")
            await dispatch.raise_for_status(route, response)
            job = self._parse(route, response.json())
            if task["upstream_id"] is None:
                if not self.store.submitted(task["id"], job.id):
                    # Canceled (or taken over) while the create was on its way: this job
                    # would run at the operator's cost for nobody.
                    await self._cancel_upstream(route, {**task, "upstream_id": job.id})
                    return
                task["upstream_id"] = job.id
        if job.done:
            await self._complete(route, task, job)
        else:
            if task["status"] == "queued" and job.status == "running":
                self.store.started(task["id"])
            self.store.release_lease(task["id"], self._backoff(task))

    async def _send_create(self, route: Route, request: httpx.Request) -> httpx.Response:
        provider = route.provider
        provider.ensure_available()
        assert provider.client is not None
        # A create is never re-sent once it may have reached the upstream (send's rule).
        return await send(
            provider.client,
            request,
            provider=provider.name,
            max_retries=provider.config.max_retries,
        )

    def _parse(self, route: Route, data: Any) -> Job:
        try:
            job = route.provider.hooks.parse_job(
                model=route.model, data=data, upstream=route.provider.upstream
            )
        except APIError:
            raise
        except Exception:
            job = None
        if job is None:
            raise UpstreamError(f"{route.provider.name} sent a job that could not be read")
        return job

    def _webhook_url(self, route: Route, task: dict[str, Any]) -> str | None:
        base = self.public_url
        if not base or route.provider.upstream.webhook_secret is None:
            return None
        return f"{base.rstrip('/')}/webhooks/{route.provider.name}/{task['id']}"

    async def _cancel_upstream(self, route: Route, task: dict[str, Any]) -> None:
        if not route.jobs or not task["upstream_id"]:
            return
        request = route.provider.hooks.build_job_cancel(
            model=route.model, job_id=task["upstream_id"], upstream=route.provider.upstream
        )
        if request is None:
            return
        try:
            response = await self._send(route, request)
            await response.aclose()
        except (Transient, APIError) as exc:  # best effort: the task ends either way
            log.warning("task %s: cancel upstream failed: %s", task["id"], exc)

    async def _complete(self, route: Route, task: dict[str, Any], job: Job) -> None:
        if job.status != "succeeded":
            await self._finish(
                task,
                Finish(
                    job.status,
                    error_code=job.error_code
                    or ("canceled" if job.status == "canceled" else "upstream_failed"),
                    error_message=job.error_message or f"the task {job.status} upstream",
                ),
            )
            return
        usage = job.usage
        output: Any
        if job.files:
            stored = []
            for index, request in enumerate(job.files):
                stored.append(await self._copy(route, task, index, request))
            self._measure(usage, stored)
            output = [s.as_dict() for s in stored]
        else:
            output = {"text": job.text or ""}
        # Checked against the request's estimate like any call's: never a negative price,
        # never more than the request can use.
        request = TaskRequest(model=route.model.id, input=json.loads(task["input"]))
        usage, cost = dispatch.charge(route, usage, dispatch.estimate(route, request)[0])
        await self._finish(task, Finish("succeeded", output=output, usage=usage, cost_micros=cost))

    @staticmethod
    def _measure(usage: Usage, stored: list[Stored]) -> None:
        """Add what the files show to what the upstream reported (never count twice)."""
        if not usage.images:
            usage.images = sum(s.content_type.startswith("image/") for s in stored)
        timed = [s for s in stored if s.content_type.startswith(("video/", "audio/"))]
        if not usage.outputs:
            usage.outputs = len(timed)
        if not usage.seconds:
            usage.seconds = sum((s.seconds for s in timed), Decimal(0))

    async def _copy(
        self, route: Route, task: dict[str, Any], index: int, request: httpx.Request
    ) -> Stored:
        """Copy one output file from the upstream into storage. Images and other files are
        streamed through; video and audio are read whole (their length is measured from
        the bytes), but never past the storage's size limit."""
        response = await self._send(route, request, stream=True)
        try:
            if response.status_code >= 400:
                raise Transient(f"output download answered HTTP {response.status_code}")
            content_type = response.headers.get("content-type")
            if (content_type or "").startswith(("video/", "audio/")):
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > self.storage.max_object_bytes:
                        raise ObjectTooLarge
                return await self._store(task, index, bytes(data), content_type)
            return await self._store(task, index, response.aiter_bytes(), content_type)
        except ObjectTooLarge:
            raise _too_large() from None
        except httpx.HTTPError as exc:
            raise Transient(f"output download failed: {type(exc).__name__}") from None
        finally:
            await response.aclose()

    async def _store(
        self,
        task: dict[str, Any],
        index: int,
        body: bytes | AsyncIterator[bytes],
        content_type: str | None,
    ) -> Stored:
        content_type = (content_type or "application/octet-stream").split(";")[0].strip()
        ext = extension_for(content_type)
        key = self.storage.object_key(task["account_id"], task["id"], index, ext)
        try:
            stored = await self.storage.put(key, body, content_type)
        except ObjectTooLarge:
            raise _too_large() from None
        except StorageError as exc:  # unreachable or refusing: try again at the next poll
            raise Transient(f"storage failed: {exc}") from None
        seconds = _seconds(content_type, body) if isinstance(body, bytes) else Decimal(0)
        return Stored(key, stored.content_type, stored.bytes, seconds)

    async def _run_call(self, route: Route, task: dict[str, Any]) -> None:
        try:
            unified = unified_request(route, json.loads(task["input"]))
        except ValidationError as exc:
            raise APIError(str(exc.errors()[0]["msg"]), code="invalid_input", status=400) from None
        self.store.started(task["id"])
        try:
            priced = await dispatch.call(route, unified, dispatch.estimate(route, unified)[0])
        except UpstreamError as exc:
            if exc.code != "upstream_unreachable":
                raise  # it may have reached the upstream: never sent twice (see upstream.py)
            raise Transient(exc.message) from None
        body = priced.output.body
        output: Any
        if isinstance(body, bytes):
            output = [(await self._store(task, 0, body, priced.output.content_type)).as_dict()]
        elif "choices" in body:
            message = (body["choices"] or [{}])[0].get("message") or {}
            output = {"text": message.get("content") or ""}
        elif route.model.modality is Modality.image:
            files = []
            for i, item in enumerate(body.get("data") or []):
                data = base64.b64decode(item["b64_json"])
                files.append((await self._store(task, i, data, "image/png")).as_dict())
            output = files
        else:
            raw = json.dumps(body, separators=(",", ":")).encode()
            output = [(await self._store(task, 0, raw, "application/json")).as_dict()]
        await self._finish(
            task,
            Finish(
                "succeeded",
                output=output,
                usage=priced.usage,
                cost_micros=priced.cost_micros,
            ),
        )

    async def _finish(self, task: dict[str, Any], end: Finish) -> None:
        if self.store.finish(task["id"], end, billing=self.billing):
            log.info("task %s %s", task["id"], end.status)
            if end.error_code == "content_policy_violation":
                self._record_refusal(task, end)
            self.kick()  # its webhook is due
        if (event := self.finished.get(task["id"])) is not None:
            event.set()

    def _record_refusal(self, task: dict[str, Any], end: Finish) -> None:
        """The upstream's safety checker refused the task: audited, and counted toward
        the account's suspension like any deny (it cost nothing)."""
        policy, route = self.gateway.policy, self.gateway.routes.get(task["model"])
        if policy is None or route is None:
            return
        policy.record_refusal(
            task["account_id"],
            task["key_id"],
            route.model,
            user_texts(json.loads(task["input"])),
            plugin=route.provider.name,
            reason=end.error_message or "refused upstream",
            request_id=task["id"],
        )

    # --- from the API --------------------------------------------------------------------

    async def cancel(self, task: dict[str, Any]) -> None:
        """The client cancels: stop the job upstream (best effort), release the hold."""
        route = self.gateway.routes.get(task["model"])
        if route is not None:
            await self._cancel_upstream(route, task)
        await self._finish(task, Finish("canceled"))

    async def on_webhook(self, task: dict[str, Any], data: dict[str, Any]) -> None:
        """A verified upstream event for ``task``: finish it now if it ended and no worker
        holds it; otherwise make its next poll due (the poll then sees the end)."""
        if task["status"] not in ("queued", "running"):
            return  # a duplicate, or a late event: the task was settled already
        route = self.gateway.routes.get(task["model"])
        if route is None:
            return
        job = self._parse(route, data)
        if task["upstream_id"] is not None and job.id != task["upstream_id"]:
            raise InvalidRequest("This event is about another job", code="job_mismatch")
        if not job.done:
            return
        leased = self.store.lease(task["id"], self.config.lease_seconds)
        if leased is not None and leased["upstream_id"] == job.id:
            self._spawn(self.advance(leased, job))
        else:
            if leased is not None:
                self.store.release_lease(task["id"], 0)
            self.store.poll_now(task["id"])
            self.kick()

    async def wait_for(self, task: dict[str, Any], seconds: float) -> dict[str, Any]:
        """Start ``task`` now and wait up to ``seconds`` for it to end (504 after that)."""
        ended = self.finished.setdefault(task["id"], asyncio.Event())
        try:
            leased = self.store.lease(task["id"], self.config.lease_seconds)
            if leased is not None:
                leased["_wait"] = min(60, int(seconds)) or None  # Replicate's Prefer: wait
                self._spawn(self.advance(leased))
            deadline = asyncio.get_running_loop().time() + seconds
            while True:
                # Ended here (the event), or by another server's worker (the row).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), 0.5)
                row = self.store.load(task["id"])
                if ended.is_set() or (row is not None and row["status"] in TERMINAL):
                    break
                if asyncio.get_running_loop().time() < deadline:
                    continue
                raise UpstreamTimeout(
                    f"The task is still running after {seconds:g} s; it goes on, and is billed "
                    f"when it ends. Follow it at GET /v1/tasks/{task['id']}",
                    code="task_still_running",
                    headers={TASK_HEADER: task["id"]},
                )
        finally:
            self.finished.pop(task["id"], None)
        done = self.store.load(task["id"])
        assert done is not None
        return done

    # --- client webhooks ---------------------------------------------------------------

    async def notify(self, task: dict[str, Any]) -> None:
        attempts = task["webhook_attempts"]
        try:
            secret = account_webhook_secret(self.store.db, task["account_id"])
            body = fastjson.dumps(render_task(task, self.storage, self.public_url))
            error = await self.notifier.deliver(task["webhook_url"], secret, task["id"], body)
        except Exception as exc:
            error = type(exc).__name__
        if error is None:
            self.store.webhook_attempted(
                task["id"], attempts, state="delivered", retry_in=0, error=None
            )
            return
        completed = datetime.fromisoformat(task["completed_at"])
        age = (datetime.now(UTC) - completed).total_seconds()
        retry_in = self.notifier.retry_in(attempts)
        state = "failed" if age + retry_in > self.notifier.retry_seconds else "pending"
        log.warning("task %s: webhook delivery failed (%s)", task["id"], error)
        self.store.webhook_attempted(
            task["id"], attempts, state=state, retry_in=retry_in, error=error
        )
