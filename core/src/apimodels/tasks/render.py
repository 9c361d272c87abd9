"""The task object, as the API and the client webhooks show it."""

from __future__ import annotations

import json
from typing import Any

from ..billing.money import usd_number
from ..errors import redact
from .store import TERMINAL


def render_task(task: dict[str, Any], storage: Any, origin: str = "") -> dict[str, Any]:
    """A task row as the API's task object; output files get fresh signed URLs (a local
    storage's relative URLs made absolute with ``origin``, the gateway's own URL). A deleted
    or expired task keeps its billing record (status, times, cost); its content is null."""
    output = json.loads(task["output"]) if task["output"] else None
    if isinstance(output, list):
        output = [
            {
                "url": absolute_url(storage.url(item["key"]), origin),
                "content_type": item["content_type"],
                "bytes": item["bytes"],
            }
            for item in output
        ]
    elif isinstance(output, dict):
        output = output.get("text")
    status = task["status"]
    return {
        "id": task["id"],
        "object": "task",
        "model": task["model"],
        "status": status,
        "created_at": task["created_at"],
        "started_at": task["started_at"],
        "completed_at": task["completed_at"],
        "input": json.loads(task["input"]),
        "output": output,
        "error": (
            {"code": task["error_code"], "message": redact(task["error_message"] or "")}
            if task["error_code"]
            else None
        ),
        "cost": usd_number(task["cost_micros"] or 0) if status in TERMINAL else None,
        "webhook": task["webhook_url"],
        "output_expired_at": task["output_expired_at"],
        "deleted": task["deleted_at"] is not None,
    }


def absolute_url(url: str, origin: str) -> str:
    """``url`` made absolute on ``origin`` when it is a path (a local signed file URL)."""
    return origin.rstrip("/") + url if url.startswith("/") else url
