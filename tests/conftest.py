"""Fixtures for the end-to-end tests: the OpenAI simulator and the gateway, each served by
uvicorn on 127.0.0.1, and clients that talk to them over real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlite_utils

from apimodels.accounts import create_account, create_key
from apimodels.server import Server, assemble
from apimodels.testing import serve
from apimodels_openai.simulator import create_app as create_simulator

ROOT = Path(__file__).resolve().parents[1]
SIM_KEY = "sk-sim-e2e-0123456789abcdef"


@dataclass
class Simulator:
    url: str

    def knobs(self, **values: Any) -> None:
        httpx.post(f"{self.url}/_sim/knobs", json=values).raise_for_status()

    def reset(self) -> None:
        httpx.delete(f"{self.url}/_sim/knobs").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_sim/requests").json()


@dataclass
class Gateway:
    url: str
    server: Server
    key: str
    account_id: str

    @property
    def db(self) -> sqlite_utils.Database:
        return self.server.db

    def new_account(self, email: str, credits_micros: int = 0) -> tuple[str, str]:
        """A new account with ``credits_micros`` granted; returns (account id, key)."""
        account = create_account(self.db, email)
        if credits_micros:
            self.server.ledger.post(
                account["id"], credits_micros, kind="grant", reason="test", actor="tests"
            )
        return account["id"], create_key(self.db, account["id"])[1]


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    with serve(create_simulator(api_key=SIM_KEY)) as url:
        yield Simulator(url)


def registry_for(upstream: str, tmp: Path, extra: str = "") -> Path:
    """The repository's registry.toml with the OpenAI provider pointed at ``upstream``."""
    text = (ROOT / "registry.toml").read_text()
    text = text.replace('# base_url = "https://api.openai.com/v1"', f'base_url = "{upstream}/v1"')
    path = tmp / "registry.toml"
    path.write_text(text + extra)
    return path


@pytest.fixture(scope="session")
def gateway(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    server = assemble(
        registry_for(simulator.url, tmp), tmp / "gateway.db", environ={"OPENAI_API_KEY": SIM_KEY}
    )
    account = create_account(server.db, "e2e@example.com")
    _, key = create_key(server.db, account["id"], "e2e")
    server.ledger.post(account["id"], 1_000_000_000, kind="grant", reason="e2e", actor="tests")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])


@pytest.fixture(autouse=True)
def _fresh_knobs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts and ends with the simulator's knobs at rest."""
    if "simulator" not in request.fixturenames:
        yield
        return
    sim: Simulator = request.getfixturevalue("simulator")
    sim.reset()
    yield
    sim.reset()


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=20
    ) as c:
        yield c


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {gateway.key}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=20) as c:
        yield c
