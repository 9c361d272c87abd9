"""Tasks: the account's tasks with their status, outputs shown in the page (video, audio,
image, text) and cancel, through the same task store and runner as ``/v1/tasks``."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...tasks.render import render_task
from ...tasks.store import TERMINAL
from ..app import Console, page, redirect


def routes(console: Console) -> list[BaseRoute]:
    def shown(request: Request, task: dict) -> dict:
        return render_task(task, console.storage, console.origin(request))

    async def index(request: Request) -> Response:
        account_id = request.scope["console_session"].account_id
        rows, more = console.task_store.page(account_id, limit=50)
        return console.render(
            request, "tasks.html", tasks=[shown(request, t) for t in rows], more=more
        )

    async def detail(request: Request) -> Response:
        account_id = request.scope["console_session"].account_id
        task = console.task_store.get(account_id, request.path_params["task_id"])
        return console.render(request, "task.html", task=shown(request, task), terminal=TERMINAL)

    async def cancel(request: Request) -> Response:
        await console.form(request)
        account_id = request.scope["console_session"].account_id
        task = console.task_store.get(account_id, request.path_params["task_id"])
        if task["status"] not in TERMINAL:
            if console.runner is None:
                raise HTTPException(503, "Tasks are not served by this process.")
            await console.runner.cancel(task)
        return redirect(f"/tasks/{task['id']}")

    return [
        Route("/tasks", page(console, index), methods=["GET"]),
        Route("/tasks/{task_id}", page(console, detail), methods=["GET"]),
        Route("/tasks/{task_id}/cancel", page(console, cancel), methods=["POST"]),
    ]
