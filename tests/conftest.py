"""Fixtures for the end-to-end tests: the OpenAI simulator and the gateway, each served by
uvicorn on 127.0.0.1, and clients that talk to them over real sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.store.db import is_postgres
from apimodels.testing import serve
from apimodels.testing.postgres import Cluster, find_binaries
from apimodels_openai.simulator import create_app as create_simulator
from console_support import Browser, ConsoleServer
from support import BACKENDS, SIM_KEY, Gateway, Simulator, database_for, registry_for


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the randomized fault mix (tests/faults/test_mix.py) 20x longer, over more seeds",
    )
    parser.addoption(
        "--db-backend",
        choices=BACKENDS,
        default="sqlite",
        help="the database of the shared `gateway` fixture (the money, tasks, idempotency and"
        " limits tests run on both backends whatever this says)",
    )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for the session (tests on that backend are skipped when
    PostgreSQL is not installed; ``.ci/run`` installs it)."""
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (initdb not found)")
    with Cluster.start(binaries) as cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str | Path]:
    """Makes new, empty databases of the test's backend (the test runs once on each): a
    SQLite file of the given name, or a PostgreSQL URL."""
    return lambda name="gateway.db": database_for(request, tmp_path, name)


@pytest.fixture
def database(new_database: Callable[[str], str | Path]) -> str | Path:
    """A new, empty database, once on each backend: a SQLite file, or a PostgreSQL URL."""
    return new_database("gateway.db")


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    with serve(create_simulator(api_key=SIM_KEY)) as url:
        yield Simulator(url)


@pytest.fixture(scope="session")
def gateway(
    request: pytest.FixtureRequest, simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    database = (
        request.getfixturevalue("pg_cluster").new_database()
        if request.config.getoption("--db-backend") == "postgresql"
        else tmp / "gateway.db"
    )
    server = assemble(
        registry_for(simulator.url, tmp), database, environ={"OPENAI_API_KEY": SIM_KEY}
    )
    account = create_account(server.db, "e2e@example.com")
    _, key = create_key(server.db, account["id"], "e2e")
    server.ledger.post(account["id"], 1_000_000_000, kind="grant", reason="e2e", actor="tests")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])


@pytest.fixture(scope="module", params=BACKENDS)
def gateway_on_each_backend(
    request: pytest.FixtureRequest, simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Like ``gateway``, once on SQLite and once on PostgreSQL (a module overrides
    ``gateway`` with it to run its tests on both)."""
    tmp = tmp_path_factory.mktemp("gateway")
    server = assemble(
        registry_for(simulator.url, tmp),
        database_for(request, tmp),
        environ={"OPENAI_API_KEY": SIM_KEY},
    )
    account = create_account(server.db, "e2e@example.com")
    _, key = create_key(server.db, account["id"], "e2e")
    server.ledger.post(account["id"], 1_000_000_000, kind="grant", reason="e2e", actor="tests")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])
    if is_postgres(server.db):  # its pool's connections (SQLite's file closes with the test)
        server.db.conn.close()


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


@pytest.fixture
def new(cs: ConsoleServer) -> Iterator[Callable[[], Browser]]:
    """The Console's tests (their module's ``cs``): makes HTTP browsers, each with its own
    cookies, all closed after the test."""
    made: list[Browser] = []

    def make() -> Browser:
        made.append(Browser(cs.url))
        return made[-1]

    yield make
    for b in made:
        b.close()
