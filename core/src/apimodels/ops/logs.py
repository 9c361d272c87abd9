"""Log lines for a log collector: one JSON object per line, with the id of the request
each line is about (``apimodels serve --log-format json``).

The request id reaches every line logged while a request is handled (the gateway's own
lines and uvicorn's access line alike) through a context variable: ``RequestObserver``
sets it to the request's ``scope["state"]`` once per request, and the formatter reads the
id from it when, and only when, a line is written.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from .. import fastjson

__all__ = ["JSONFormatter", "LogFormat", "current_request", "log_config"]

LogFormat = Literal["text", "json"]

#: The ``scope["state"]`` of the request being handled (its ``request_id`` is set there).
current_request: ContextVar[dict[str, Any] | None] = ContextVar("apimodels_request", default=None)

#: uvicorn's access line arguments: client, method, path, HTTP version, status.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JSONFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", "pid"}`` on one line; an
    access line also has its fields apart; a traceback (only ever logged with
    ``APIMODELS_DEBUG``) goes in ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        state = current_request.get()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": state.get("request_id") if state is not None else None,
            "pid": os.getpid(),  # which worker process wrote it
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            entry.update(zip(_ACCESS_FIELDS, args, strict=True))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return fastjson.dumps(entry).decode()


def log_config(log_format: LogFormat, level: str = "info") -> dict[str, Any] | None:
    """uvicorn's ``log_config`` for a format: None keeps uvicorn's own text lines; ``json``
    sends every logger's lines (uvicorn's and the gateway's) to stderr as JSON. A plain
    dict of names, so that it reaches worker processes as it is."""
    if log_format == "text":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JSONFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
    }
