"""What the end-to-end tests share: handles on the simulator and the gateway under test."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import sqlite_utils

from apimodels.billing.ledger import Ledger
from apimodels.server import Server, assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.store.db import database_path, is_postgres, open_db
from apimodels.testing import bound_socket, serve

ROOT = Path(__file__).resolve().parents[1]
SIM_KEY = "sk-sim-e2e-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-sim-e2e-0123456789abcdef"

REPLICATE_KEY = "r8_sim_" + "k" * 32
REPLICATE_SECRET = "whsec_" + base64.b64encode(b"replicate-simulator-secret-0123").decode()

#: Task settings for tests: fast polls, short leases, webhooks to 127.0.0.1 allowed.
TASKS_SETTINGS = """
[tasks]
poll_interval_seconds = 0.05
max_poll_interval_seconds = 0.2
lease_seconds = 2
sync_wait_seconds = 10
allow_private_webhooks = true
webhook_first_retry_seconds = 0.1
"""


@dataclass
class Simulator:
    url: str

    def knobs(self, **values: Any) -> None:
        httpx.post(f"{self.url}/_sim/knobs", json=values).raise_for_status()

    def reset(self) -> None:
        httpx.delete(f"{self.url}/_sim/knobs").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_sim/requests").json()

    def received(self) -> int:
        """How many /v1 requests the simulator has received so far (a counter, not the log's length)."""
        log = self.requests()
        return log[-1]["seq"] if log else 0


@dataclass
class Gateway:
    """A gateway under test. ``db`` and ``ledger`` are the test's own connection to the
    server's database file: the server's connection belongs to its event-loop thread."""

    url: str
    server: Server
    key: str
    account_id: str

    def settled(self) -> None:
        """Wait until the charges of the calls answered so far are committed: the gateway
        commits them within ``gateway.commit_delay_ms``, and at once before answering
        ``/health``."""
        httpx.get(f"{self.url}/health").raise_for_status()

    @property
    def db(self) -> sqlite_utils.Database:
        self.settled()
        return self._db

    @property
    def ledger(self) -> Ledger:
        self.settled()
        return self._ledger

    @cached_property
    def _db(self) -> sqlite_utils.Database:
        return open_db(database_path(self.server.db))

    @cached_property
    def _ledger(self) -> Ledger:
        return Ledger(self._db)

    def new_account(self, email: str, credits_micros: int = 0) -> tuple[str, str]:
        """A new account with ``credits_micros`` granted; returns (account id, key)."""
        account = create_account(self.db, email)
        if credits_micros:
            self.ledger.post(
                account["id"], credits_micros, kind="grant", reason="test", actor="tests"
            )
        return account["id"], create_key(self.db, account["id"])[1]


def registry_for(
    upstream: str,
    tmp: Path,
    extra: str = "",
    *,
    replicate: str | None = None,
    anthropic: str | None = None,
    tasks: str | None = None,
) -> Path:
    """The repository's registry.toml with the OpenAI provider pointed at ``upstream`` (and
    Replicate at ``replicate``, Anthropic at ``anthropic``, when given; ``tasks`` replaces
    the ``[tasks]`` table)."""
    text = (ROOT / "registry.toml").read_text()
    if tasks is not None:
        text = re.sub(r"\[tasks\]\n(?:[^\[\n][^\n]*\n|\n)*", tasks.lstrip() + "\n", text)
    text = text.replace('# base_url = "https://api.openai.com/v1"', f'base_url = "{upstream}/v1"')
    if replicate is not None:
        text = text.replace(
            '# base_url = "https://api.replicate.com/v1"', f'base_url = "{replicate}/v1"'
        )
    if anthropic is not None:
        text = text.replace(
            '# base_url = "https://api.anthropic.com/v1"', f'base_url = "{anthropic}/v1"'
        )
    # Each call's reserved credits go back with its answer, so a test reads exact holds;
    # tests of reservations that stay set this themselves.
    text = re.sub(r"(?m)^reserve_idle_seconds = \S+", "reserve_idle_seconds = 0", text)
    # Tests run whatever the date: the shipped models' retirement dates are checked by
    # test_the_shipped_catalog_serves_no_retired_model, and the dates' effects by tests of
    # their own (test_lifecycle_e2e.py).
    text = re.sub(r"(?m)^(deprecated_at|retires_at|replacement) = .*\n", "", text)
    path = tmp / "registry.toml"
    path.write_text(text + extra)
    return path


@contextmanager
def gateway_of_its_own(
    simulator: Simulator,
    tmp: Path,
    edit: Callable[[str], str] = lambda text: text,
    *,
    credits_micros: int = 10_000_000,
) -> Iterator[Gateway]:
    """A gateway served on its own registry (``registry_for``, then ``edit``-ed), with one
    account holding ``credits_micros`` and its key."""
    registry = registry_for(simulator.url, tmp)
    registry.write_text(edit(registry.read_text()))
    server = assemble(registry, tmp / "gateway.db", environ={"OPENAI_API_KEY": SIM_KEY})
    account = create_account(server.db, f"{tmp.name}@example.com")
    _, key = create_key(server.db, account["id"])
    if credits_micros:
        server.ledger.post(account["id"], credits_micros, kind="grant", reason="t", actor="tests")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])


#: The database backends the money, tasks, idempotency and limits tests run on.
BACKENDS = ("sqlite", "postgresql")


def database_for(request: Any, tmp: Path, name: str = "gateway.db") -> str | Path:
    """A new, empty database of the test's backend (``request.param``, or SQLite): a file
    in ``tmp``, or a database of its own on the session's throwaway PostgreSQL cluster."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return request.getfixturevalue("pg_cluster").new_database()
    return tmp / name


@contextmanager
def tasks_gateway_of_its_own(
    simulator: Simulator, replicate: Simulator, tmp: Path, email: str, database: Any = None
) -> Iterator[Gateway]:
    """A gateway for tasks: OpenAI and Replicate on their simulators, ``public_url`` its own
    origin (so Replicate's signed webhooks reach it), and one funded account (``email``)."""
    sock = bound_socket()
    origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
    registry = registry_for(simulator.url, tmp, replicate=replicate.url, tasks=TASKS_SETTINGS)
    text = registry.read_text().replace("[gateway]\n", f'[gateway]\npublic_url = "{origin}"\n', 1)
    registry.write_text(text)
    environ = {
        "OPENAI_API_KEY": SIM_KEY,
        "REPLICATE_API_TOKEN": REPLICATE_KEY,
        "REPLICATE_WEBHOOK_SECRET": REPLICATE_SECRET,
    }
    server = assemble(registry, database or tmp / "gateway.db", environ=environ)
    account = create_account(server.db, email)
    _, key = create_key(server.db, account["id"], email.split("@")[0])
    server.ledger.post(account["id"], 100_000_000, kind="grant", reason="t", actor="tests")
    with serve(server.app, sock=sock) as url:
        yield Gateway(url, server, key, account["id"])
    if is_postgres(server.db):  # its pool's connections (SQLite's file closes with the test)
        server.db.conn.close()


def funded(db_path: Path | str, credits_micros: int) -> tuple[str, str]:
    """A new account on the database at ``db_path`` with ``credits_micros`` granted:
    (its id, a key)."""
    db = open_db(db_path)
    account = create_account(db, f"funded-{time.time_ns()}@example.com")["id"]
    _, key = create_key(db, account)
    if credits_micros:
        Ledger(db).post(account, credits_micros, kind="grant", reason="t", actor="tests")
    db.conn.close()
    return account, key
