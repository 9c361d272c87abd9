"""Sandbox mode: every enabled provider served by its own simulator on 127.0.0.1.

Each simulator runs as a uvicorn server inside the gateway's process, on a port of its own,
so the gateway talks to it over a real socket exactly as it would to the upstream. A demo
account gets a fresh key at every start (older sandbox keys of the demo account are
revoked), so the key printed is always the one that works.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils
import uvicorn

from ..billing.ledger import Ledger
from ..store.accounts import create_account, create_key, list_keys, revoke_key
from .runtime import Gateway, sandbox_base_url

DEMO_EMAIL = "demo@sandbox.apimodels"
DEMO_CREDITS_MICROS = 10_000_000  # $10 of simulated calls, granted once
SANDBOX_KEY_NAME = "sandbox"


@dataclass
class Simulators:
    """The running simulators of a sandboxed gateway."""

    servers: list[uvicorn.Server] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    async def start(self, gateway: Gateway) -> None:
        for name, provider in gateway.providers.items():
            if provider.spec.simulator is None:
                provider.unavailable = (
                    f"provider {name} has no simulator; it cannot run in sandbox mode"
                )
                gateway.notices.append(provider.unavailable)
                continue
            api_key = "sk-sim-" + secrets.token_hex(16)
            factory = simulator_factory(provider.spec.simulator)
            # An instance's simulator may act out its settings (a server's quirks).
            takes_settings = "settings" in inspect.signature(factory).parameters
            extra = {"settings": provider.upstream.settings} if takes_settings else {}
            app = factory(api_key=api_key, **extra)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            server = uvicorn.Server(
                uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
            )
            # The gateway owns the process's signals; a simulator must not take Ctrl+C.
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
            self.servers.append(server)
            self.tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
            deadline = asyncio.get_running_loop().time() + 10
            while not server.started:
                if self.tasks[-1].done() or asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"the {name} simulator did not start")
                await asyncio.sleep(0.01)
            origin = f"http://127.0.0.1:{port}"
            gateway.point_at(
                name,
                sandbox_base_url(provider.config.base_url or provider.spec.base_url, origin),
                api_key,
            )
            secret = getattr(getattr(app, "state", None), "webhook_secret", None)
            if isinstance(secret, str):  # the simulator signs its webhooks with its own
                gateway.take_webhook_secret(name, secret)
            self.urls[name] = origin

    async def stop(self) -> None:
        for server in self.servers:
            server.should_exit = True
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def simulator_factory(simulator: Callable[..., Any] | str) -> Callable[..., Any]:
    """A spec's simulator factory, imported now if the spec names it as ``"module:name"``."""
    if not isinstance(simulator, str):
        return simulator
    module, _, name = simulator.partition(":")
    factory: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return factory


def demo_key(db: sqlite_utils.Database, ledger: Ledger) -> str:
    """A working key for the sandbox demo account, created (with demo credits) if needed."""
    rows = list(db.query("SELECT id FROM accounts WHERE email = ?", [DEMO_EMAIL]))
    account_id = rows[0]["id"] if rows else create_account(db, DEMO_EMAIL)["id"]
    ledger.post(
        account_id,
        DEMO_CREDITS_MICROS,
        kind="grant",
        reason="sandbox demo credits",
        actor="sandbox",
        idempotency_key=f"sandbox-demo:{account_id}",
    )
    for row in list_keys(db, account_id):
        if row["name"] == SANDBOX_KEY_NAME and row["revoked_at"] is None:
            revoke_key(db, row["id"])
    _, key = create_key(db, account_id, SANDBOX_KEY_NAME)
    return key
