"""Building the Console from a server's parts, once at startup (``server.assemble``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils
from starlette.routing import Mount

from ..billing.ledger import Ledger
from ..catalog import Catalog
from ..errors import ConfigError
from ..storage import Storage
from ..store.accounts import KeyStore
from ..store.db import database_path, utcnow
from ..tasks.store import TaskStore
from .app import Console, mount
from .csrf import CSRF
from .legal import Legal
from .mail import MailSink, Notifier
from .notices import Notices
from .throttle import Throttle

if TYPE_CHECKING:
    from ..http.topups import TopupsAPI
    from ..tasks import TaskRunner

_SECRET_NAME = "console"


def console_secret(db: sqlite_utils.Database) -> bytes:
    """The key of the Console's CSRF tokens: made once, kept in the database, so that every
    process and restart shares it."""
    with db.conn:
        db.execute(
            "INSERT INTO server_secrets (name, value, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO NOTHING",
            [_SECRET_NAME, secrets.token_urlsafe(32), utcnow()],
        )
    row = db.execute("SELECT value FROM server_secrets WHERE name = ?", [_SECRET_NAME]).fetchone()
    return row[0].encode()


@dataclass
class BuiltConsole:
    console: Console
    mount: Mount
    sink: MailSink | None  # sandbox mode: started and stopped with the server
    #: Where links in event mail point when no ``gateway.public_url`` is set (``listen_at``).
    origin: str = "http://127.0.0.1:8000"

    def notices(self) -> Notices:
        config = self.console.config
        origin = self.console.public_url or self.origin
        return Notices(
            self.console.db,
            self.console.notifier,
            origin,
            config.low_balance_usd,
            self.console.legal,
        )


def enabled(catalog: Catalog, sandbox: bool) -> bool:
    return catalog.console.enabled if catalog.console.enabled is not None else sandbox


def build_console(
    catalog: Catalog,
    db: sqlite_utils.Database,
    ledger: Ledger,
    keys: KeyStore,
    task_store: TaskStore,
    storage: Storage,
    *,
    sandbox: bool,
    routes_by_model: Mapping[str, Any],
    runner: TaskRunner | None = None,
    topups: TopupsAPI | None = None,
    environ: Mapping[str, str] | None = None,
) -> BuiltConsole:
    config = catalog.console
    env = os.environ if environ is None else environ
    sink = None
    if config.smtp_host is None and sandbox:
        sink = MailSink()
        notifier = Notifier("127.0.0.1", sink.port, config.mail_from)
    else:
        credentials = []
        for name in (config.smtp_username_env, config.smtp_password_env):
            if name is not None and not env.get(name):
                raise ConfigError(f"console: the variable {name} is not set")
            credentials.append(env.get(name) if name else None)
        notifier = Notifier(
            config.smtp_host,
            config.smtp_port,
            config.mail_from,
            starttls=config.smtp_starttls,
            username=credentials[0],
            password=credentials[1],
        )
    console = Console(
        config=config,
        catalog=catalog,
        db=db,
        ledger=ledger,
        keys=keys,
        task_store=task_store,
        storage=storage,
        notifier=notifier,
        csrf=CSRF(console_secret(db)),
        throttle=Throttle(db, config.login_attempts, config.login_window_minutes),
        legal=Legal(Path(database_path(db) or ".").parent / config.legal_dir),
        sandbox=sandbox,
        routes_by_model=dict(routes_by_model),
        runner=runner,
        topups=topups,
        sink=sink,
        public_url=str(catalog.gateway.public_url) if catalog.gateway.public_url else None,
    )
    return BuiltConsole(console, mount(console), sink)
