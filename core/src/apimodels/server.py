"""Putting a server together from its configuration: catalog, database, gateway, front end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils
from starlette.types import ASGIApp

from .accounts import KeyStore
from .app import create_app
from .catalog import load_catalog
from .db import open_db
from .plugins import pm
from .runtime import Gateway, build_gateway
from .sandbox import Simulators


@dataclass
class Server:
    app: ASGIApp
    gateway: Gateway
    db: sqlite_utils.Database
    keys: KeyStore
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
    keys = KeyStore(db, catalog.gateway.key_cache_seconds)
    simulators = Simulators() if sandbox else None
    server = Server(app=None, gateway=gateway, db=db, keys=keys, simulators=simulators)  # type: ignore[arg-type]

    async def on_startup() -> None:
        if simulators is not None:
            await simulators.start(gateway)
        for hook in server.started_hooks:
            hook()

    async def on_shutdown() -> None:
        if simulators is not None:
            await simulators.stop()

    server.app = create_app(gateway, keys, on_startup=on_startup, on_shutdown=on_shutdown)
    return server
