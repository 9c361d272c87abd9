"""Putting a server together from its configuration: catalog, database, gateway, front end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import sqlite_utils
from starlette.types import ASGIApp

from .accounts import KeyStore
from .app import create_app
from .billing import Biller
from .catalog import load_catalog
from .db import Checkpointer, database_path, open_db
from .idempotency import Idempotency
from .ledger import GroupCommit, Ledger
from .limits import Limiter
from .plugins import pm
from .policy import build_policy
from .runtime import Gateway, build_gateway
from .sandbox import Simulators

log = logging.getLogger("apimodels")


@dataclass
class Server:
    app: ASGIApp
    gateway: Gateway
    db: sqlite_utils.Database
    keys: KeyStore
    ledger: Ledger
    simulators: Simulators | None = None
    started_hooks: list = field(default_factory=list)


def assemble(
    registry: str | Path,
    database: str | Path,
    *,
    sandbox: bool = False,
    environ: dict[str, str] | None = None,
) -> Server:
    """Load and check everything; raise ConfigError before serving anything if it is wrong."""
    catalog = load_catalog(registry)
    gateway = build_gateway(catalog, pm, sandbox=sandbox, environ=environ)
    db = open_db(database)
    settings = catalog.gateway
    keys = KeyStore(db, settings.key_cache_seconds)
    gateway.policy = build_policy(catalog, pm, gateway.providers, db, keys, gateway.notices)
    ledger = Ledger(db)
    limiter = Limiter(db, settings.key_cache_seconds)
    biller = Biller(
        GroupCommit(ledger),
        timedelta(seconds=settings.hold_ttl_seconds),
        limiter,
        enabled=settings.billing,
    )
    simulators = Simulators() if sandbox else None
    server = Server(None, gateway, db, keys, ledger, simulators)  # type: ignore[arg-type]
    sweeper: list[asyncio.Task[None]] = []

    async def sweep() -> None:
        # Holds left by a crash (this process or another) are released after their expiry.
        while True:
            await asyncio.sleep(settings.expiry_sweep_seconds)
            try:
                if n := ledger.expire(running=biller.running):
                    log.warning("released %d expired holds", n)
                idempotency.purge()
            except Exception as exc:  # keep sweeping; never crash the server over it
                log.error("expiry sweep failed: %s", type(exc).__name__)

    checkpointer = Checkpointer(database_path(db)) if database_path(db) else None

    async def checkpoints() -> None:
        assert checkpointer is not None
        db.conn.execute("PRAGMA wal_autocheckpoint = 0")
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(checkpointer.checkpoint)
            except Exception as exc:  # a busy database: try again next time
                log.warning("checkpoint failed: %s", type(exc).__name__)

    async def on_startup() -> None:
        if n := ledger.expire():
            log.warning("released %d expired holds at startup", n)
        sweeper.append(asyncio.create_task(sweep()))
        if checkpointer is not None:
            sweeper.append(asyncio.create_task(checkpoints()))
        if simulators is not None:
            await simulators.start(gateway)
        for hook in server.started_hooks:
            hook()

    async def on_shutdown() -> None:
        for task in sweeper:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if simulators is not None:
            await simulators.stop()
        if checkpointer is not None:
            checkpointer.close()

    idempotency = Idempotency(db, timedelta(seconds=settings.hold_ttl_seconds))
    server.app = create_app(
        gateway, keys, biller, idempotency, on_startup=on_startup, on_shutdown=on_shutdown
    )
    return server
