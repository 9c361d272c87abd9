"""``/health/live`` and ``/health/ready``: whether to restart this process, and whether to
send it traffic (for a load balancer or an orchestrator's probes; no key needed, and
nothing in the answers but names and states).

- live: the process answers HTTP (its event loop runs). Nothing else is checked, so that
  a database outage does not get every process restarted.
- ready: it can serve calls: its database answers, the database's schema is the one this
  code knows (every migration applied), and at least one provider is configured.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import sqlite_utils
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..store.migrations import MIGRATIONS

if TYPE_CHECKING:
    from ..providers.runtime import Gateway

__all__ = ["Health"]

log = logging.getLogger("apimodels")


class Health:
    def __init__(self, db: sqlite_utils.Database, gateway: Gateway) -> None:
        self.db = db
        self.gateway = gateway
        self.migrations = {fn.__name__ for fn in MIGRATIONS}

    async def live(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        checks = {"database": "ok", "migrations": "current", **self._providers()}
        try:
            applied = {row[0] for row in self.db.execute("SELECT name FROM _migrations")}
        except Exception as exc:  # the class only: a message could name the file
            log.warning("readiness: the database did not answer (%s)", type(exc).__name__)
            checks["database"] = checks["migrations"] = "unreachable"
        else:
            if pending := len(self.migrations - applied):
                checks["migrations"] = f"{pending} pending"
        ready = (
            checks["database"] == "ok"
            and checks["migrations"] == "current"
            and checks["providers"] == "ok"
        )
        body = {"status": "ready" if ready else "unavailable", "checks": checks}
        return JSONResponse(body, 200 if ready else 503)

    def _providers(self) -> dict[str, str]:
        available = [p for p in self.gateway.providers.values() if p.unavailable is None]
        return {"providers": "ok" if available else "none available"}
