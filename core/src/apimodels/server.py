"""Putting a server together from its configuration: catalog, database, gateway, front end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils
from starlette.types import ASGIApp

from .admin import Operations
from .admin.api import admin_routes
from .billing.biller import Biller
from .billing.ledger import GroupCommit, Ledger
from .billing.limits import Limiter
from .catalog import Catalog, GatewayConfig, load_catalog
from .console.build import build_console
from .console.build import enabled as console_enabled
from .errors import ConfigError
from .http.app import create_app
from .http.idempotency import TTL, Idempotency
from .http.tasks import TasksAPI
from .openapi import docs_routes
from .ops import CountedTaskStore, Health, Metrics, RequestObserver
from .ops.memory import tune_for_serving
from .ops.tracing import start_tracing
from .plugins import check_plugins, pm
from .policy import build_policy
from .privacy.retention import Sweeper, sweep_periodically
from .providers.runtime import Gateway, build_gateway
from .providers.sandbox import Simulators
from .storage import LocalStorage, Storage, load_secret, open_storage
from .store import hosts
from .store.accounts import KeyStore
from .store.db import Checkpointer, database_path, is_postgres, open_db
from .tasks import TaskRunner

if TYPE_CHECKING:
    from .http.topups import TopupsAPI

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
    storage: Storage | None = None
    tasks: TaskRunner | None = None
    stripe_simulator: Any = None  # topups.simulator.SandboxStripe, in sandbox mode
    metrics: Metrics | None = None
    topups: Any = None  # http.topups.TopupsAPI, when top-ups are on
    console: Any = None  # console.build.BuiltConsole, when the Console is on


def _storage_base(registry: str | Path | Catalog, db: Any) -> Path:
    """What a relative local storage path is relative to: the SQLite file's folder, or with
    PostgreSQL (no local file) the registry file's folder."""
    if not is_postgres(db):
        return Path(database_path(db) or ".").parent
    return Path(registry).parent if isinstance(registry, str | Path) else Path(".")


def assemble(
    registry: str | Path | Catalog,
    database: str | Path,
    *,
    sandbox: bool = False,
    environ: dict[str, str] | None = None,
) -> Server:
    """Load and check everything; raise ConfigError before serving anything if it is wrong.
    ``registry`` is the catalog's file, or a catalog already loaded (the conformance kit)."""
    catalog = registry if isinstance(registry, Catalog) else load_catalog(registry)
    broken_plugins = check_plugins(catalog)  # loads the installed plugins, once
    gateway = build_gateway(catalog, pm, sandbox=sandbox, environ=environ)
    gateway.notices[:0] = broken_plugins
    db = open_db(database)
    settings = catalog.gateway
    keys = KeyStore(db, settings.key_cache_seconds)
    gateway.policy = build_policy(catalog, pm, gateway.providers, db, keys, gateway.notices)
    ledger = Ledger(db)
    writes = GroupCommit(ledger, settings.commit_delay_ms / 1000)
    biller = Biller(
        writes,
        timedelta(seconds=settings.hold_ttl_seconds),
        Limiter(writes),
        enabled=settings.billing,
        idle_seconds=settings.reserve_idle_seconds,
    )
    simulators = Simulators() if sandbox else None
    storage = open_storage(
        catalog.storage,
        load_secret(db, catalog.storage, environ),
        base_dir=_storage_base(registry, db),
        environ=environ,
        public_url=settings.public_url,
    )
    # Several hosts on one PostgreSQL database cannot each keep outputs in a folder of its own.
    local_host = (
        socket.gethostname()
        if is_postgres(db)
        and catalog.storage.backend == "local"
        and not catalog.storage.shared_folder
        else None
    )
    if local_host is not None:
        hosts.claim_local_storage(db, local_host)
    server = Server(None, gateway, db, keys, ledger, simulators)  # type: ignore[arg-type]
    server.storage = storage
    metrics = server.metrics = Metrics(db, token=_metrics_token(settings, environ))
    tracing = start_tracing() if settings.tracing else None
    biller.on_charge = metrics.charge
    if gateway.policy is not None:
        metrics.count_refusals(gateway.policy)
    task_store = CountedTaskStore(db, ledger, metrics)
    runner = TaskRunner(gateway, task_store, storage, catalog.tasks, billing=settings.billing)
    idempotency = Idempotency(db, timedelta(seconds=settings.hold_ttl_seconds), biller.ledger)
    tasks = TasksAPI(gateway, keys, biller, idempotency, task_store, runner, catalog.tasks)
    server.tasks = runner
    sweeper: list[asyncio.Task[None]] = []

    async def sweep() -> None:
        # Holds left by a crash (this process or another) are released after their expiry.
        while True:
            await asyncio.sleep(settings.expiry_sweep_seconds)
            try:
                if n := ledger.expire():
                    log.warning("released %d expired holds", n)
                idempotency.purge()
                biller.limiter.purge()
                if local_host is not None:
                    hosts.renew(db, local_host)
            except Exception as exc:  # keep sweeping; never crash the server over it
                log.error("expiry sweep failed: %s", type(exc).__name__)

    sqlite_file = "" if is_postgres(db) else database_path(db)
    checkpointer = Checkpointer(sqlite_file) if sqlite_file else None

    async def checkpoints() -> None:
        assert checkpointer is not None
        db.conn.execute("PRAGMA wal_autocheckpoint = 0")
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(checkpointer.checkpoint)
            except Exception as exc:  # a busy database: try again next time
                log.warning("checkpoint failed: %s", type(exc).__name__)

    async def reservations() -> None:
        # Return idle accounts' reservations and renew the others, about every second.
        while True:
            await asyncio.sleep(min(1.0, settings.reserve_idle_seconds or 1.0))
            try:
                await biller.maintain()
            except Exception as exc:  # keep going: a reservation left expires on its own
                log.error("reservations upkeep failed: %s", type(exc).__name__)

    async def on_startup() -> None:
        metrics.measure_upstreams(gateway, tracing)  # the pools the gateway has just opened
        if n := ledger.expire():
            log.warning("released %d expired holds at startup", n)
        sweeper.append(asyncio.create_task(sweep()))
        sweeper.append(asyncio.create_task(reservations()))
        if checkpointer is not None:
            sweeper.append(asyncio.create_task(checkpoints()))
        if simulators is not None:
            await simulators.start(gateway)
        sweeper.append(asyncio.create_task(runner.run()))
        retention = Sweeper(
            db, ledger, task_store, storage, catalog.storage, catalog.privacy, idempotency_ttl=TTL
        )
        interval = catalog.storage.sweep_interval_minutes
        sweeper.append(asyncio.create_task(sweep_periodically(retention, interval)))
        if server.stripe_simulator is not None:
            await server.stripe_simulator.start()
        if server.console is not None:
            if server.console.sink is not None:
                await server.console.sink.start()
            interval = catalog.console.notice_interval_seconds
            sweeper.append(asyncio.create_task(server.console.notices().run(interval)))
        for hook in server.started_hooks:
            hook()

    async def on_shutdown() -> None:
        await runner.aclose()
        for task in sweeper:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await biller.aclose()
        if simulators is not None:
            await simulators.stop()
        if server.stripe_simulator is not None:
            await server.stripe_simulator.stop()
        if server.console is not None and server.console.sink is not None:
            await server.console.sink.stop()
        if checkpointer is not None:
            checkpointer.close()
        await storage.aclose()

    health = Health(db, gateway)
    extra_routes = [
        ("/metrics", metrics.endpoint, ["GET"]),
        ("/health/live", health.live, ["GET"]),
        ("/health/ready", health.ready, ["GET"]),
    ]
    topups = None
    if catalog.topups.enabled or sandbox:
        topups = _topups(server, catalog.topups, sandbox, environ)
        extra_routes += topups.routes()
    operations = Operations(
        db,
        ledger,
        task_store,
        catalog.privacy.close_grace_days,
        keys=keys,
        runner=runner,
        stripe=topups.stripe if topups is not None else None,
    )
    extra_routes += admin_routes(operations)
    features = {"topups"} if topups is not None else set()
    if isinstance(storage, LocalStorage):
        features.add("files")
    extra_routes += docs_routes(features)
    mounts = []
    if console_enabled(catalog, sandbox):
        server.console = build_console(
            catalog, db, ledger, keys, task_store, storage,
            sandbox=sandbox, routes_by_model=gateway.routes, runner=runner,
            topups=server.topups, environ=environ,
        )  # fmt: skip
        mounts.append(server.console.mount)
    server.app = create_app(
        gateway,
        keys,
        biller,
        idempotency,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        storage=storage,
        tasks=tasks,
        extra_routes=extra_routes,
        mounts=mounts,
    )
    # each request's log context, metrics and span
    server.app = RequestObserver(server.app, metrics, tracing)
    return server


def _metrics_token(settings: GatewayConfig, environ: dict[str, str] | None) -> str | None:
    name = settings.metrics_token_env
    if name is None:
        return None
    token = (os.environ if environ is None else environ).get(name)
    if not token:
        raise ConfigError(f"gateway.metrics_token_env: the variable {name} is not set")
    return token


def listen_at(server: Server, url: str, host: str) -> None:
    """Tell a server the address it answers at, for the absolute URLs it makes (output
    files; in the sandbox, the simulators' job and payment webhooks). A server behind a
    proxy, or listening on every interface, uses ``[gateway] public_url`` instead."""
    sandbox = server.simulators is not None
    if server.gateway.catalog.gateway.public_url is None and host not in ("0.0.0.0", "::"):
        if isinstance(server.storage, LocalStorage):
            server.storage.base_url = url
        if sandbox and server.tasks is not None:
            server.tasks.public_url = url
    if server.console is not None:  # links in the Console's event mail
        server.console.origin = url
    if server.stripe_simulator is not None:  # sandbox top-ups: the simulator calls us back
        server.stripe_simulator.point_webhooks_at(f"{url}/webhooks/stripe")


#: What ``apimodels serve --workers N`` tells each worker process (JSON: registry, db, url,
#: host), read by ``worker_app``.
WORKER_ENV = "APIMODELS_WORKER"


def worker_app() -> ASGIApp:
    """uvicorn's app factory in each worker process of ``apimodels serve --workers N``:
    the process assembles its own gateway on the shared database (the serving parent has
    already checked the configuration and applied the migrations)."""
    spec = json.loads(os.environ[WORKER_ENV])
    server = assemble(spec["registry"], spec["db"])
    listen_at(server, spec["url"], spec["host"])
    server.started_hooks.append(tune_for_serving)
    return server.app


def _topups(
    server: Server, config: Any, sandbox: bool, environ: dict[str, str] | None
) -> TopupsAPI:
    """The top-ups API; in sandbox mode always on, backed by a local Stripe simulator."""
    from .http.topups import build_topups

    env = dict(os.environ if environ is None else environ)
    if sandbox:
        from .topups.simulator import SandboxStripe, sandbox_config

        stripe = server.stripe_simulator = SandboxStripe()
        config = sandbox_config(config, stripe.origin)
        env[config.secret_key_env] = stripe.secret_key
        env[config.webhook_secret_env] = stripe.webhook_secret
    server.topups = build_topups(config, server.db, server.ledger, server.keys, env)
    return server.topups
