"""Several gateway processes on one database (a SQLite file, or PostgreSQL): they start
together, never spend credits an account does not have, hand tasks over when one dies, and
stop without losing a bill."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import httpx
import openai
from processes import STOPPED, Served, cli, open_db_after, serving
from prometheus_client.parser import text_string_to_metric_families

from apimodels import ChatRequest
from apimodels.billing.ledger import Ledger
from apimodels.providers import dispatch
from apimodels.server import assemble
from apimodels.store.accounts import set_key_limits
from apimodels.store.db import open_db
from apimodels.store.migrations import MIGRATIONS
from apimodels.testing import serve
from apimodels_replicate.simulator import create_app as create_replicate
from support import REPLICATE_KEY, SIM_KEY, TASKS_SETTINGS, Simulator, funded, registry_for

CHAT = {
    "model": "openai/gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 10,
}


def hold_of_a_call(registry: Path, tmp: Path) -> int:
    """What one ``CHAT`` holds, as the gateway estimates it."""
    probe = assemble(registry, tmp / "probe.db", environ={"OPENAI_API_KEY": SIM_KEY})
    route = probe.gateway.routes[CHAT["model"]]
    return dispatch.estimate(route, ChatRequest.model_validate(CHAT))[1]


async def calls_at_once(
    urls: list[str], key: str, n: int, concurrency: int | None = None
) -> list[int]:
    """``n`` chat calls spread over the servers at ``urls`` (at most ``concurrency`` at a
    time; all at once by default): the status each got."""
    clients = [openai.AsyncOpenAI(base_url=f"{u}/v1", api_key=key, max_retries=0) for u in urls]
    gate = asyncio.Semaphore(concurrency or n)

    async def one(client: openai.AsyncOpenAI) -> int:
        async with gate:
            try:
                await client.chat.completions.create(**CHAT)
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code

    try:
        return await asyncio.gather(*(one(clients[i % len(urls)]) for i in range(n)))
    finally:
        for client in clients:
            await client.close()


def wait_for(condition, seconds: float = 20, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_four_processes_start_at_once_on_a_new_database(
    simulator: Simulator, tmp_path: Path, database: Path | str
) -> None:
    registry = registry_for(simulator.url, tmp_path)
    db_path = database
    servers = [Served(registry, db_path) for _ in range(4)]  # all started before any is ready
    try:
        for server in servers:
            server.wait_ready()
        watch = open_db(db_path)
        applied = [row[0] for row in watch.execute("SELECT name FROM _migrations")]
        assert sorted(applied) == sorted(fn.__name__ for fn in MIGRATIONS)  # each once
        # One storage secret for all of them, or one's signed URLs fail on another.
        assert watch.execute("SELECT COUNT(*) FROM server_secrets").fetchone()[0] == 1
        watch.conn.close()
        _, key = funded(db_path, 10_000_000)
        for server in servers:
            with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
                assert c.chat.completions.create(**CHAT).choices[0].message.content
    finally:
        codes = [server.stop() for server in servers]
    assert all(code in STOPPED for code in codes), codes
    check = cli(registry, db_path, "ledger", "check")
    assert check.returncode == 0, check.stderr


def test_processes_migrating_a_new_database_at_the_same_instant(
    new_database: Callable[[str], Path | str],
) -> None:
    """The race the servers above rarely meet (they import for a second or two first):
    each process sees every migration pending, and only one may apply each."""
    context = multiprocessing.get_context("spawn")
    # Two new databases, each opened by the 4 processes together once they are all ready:
    # two races for one start of the processes.
    paths = [str(new_database(f"race{attempt}.db")) for attempt in range(2)]
    barriers = [context.Barrier(4) for _ in paths]
    procs = [context.Process(target=open_db_after, args=(barriers, paths)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    for path in paths:
        db = open_db(path)
        applied = [row[0] for row in db.execute("SELECT name FROM _migrations")]
        assert sorted(applied) == sorted(fn.__name__ for fn in MIGRATIONS)
        db.conn.close()


def test_processes_never_spend_more_than_the_account_has(
    simulator: Simulator, tmp_path: Path, database: Path | str
) -> None:
    """Credits for exactly K calls, 40 calls at once spread over the processes (2 on a
    SQLite file, 4 on PostgreSQL): at most K are served, the others answer 402, and the
    balance never goes below zero."""
    k, n = 10, 40
    registry = registry_for(simulator.url, tmp_path)
    hold = hold_of_a_call(registry, tmp_path)
    db_path = database
    account, key = funded(db_path, hold * k)
    simulator.knobs(latency=1.0)  # every call is admitted or refused before any settles

    count = 2 if isinstance(db_path, Path) else 4
    with ExitStack() as stack:
        servers = [Served(registry, db_path) for _ in range(count)]
        for server in servers:
            stack.callback(server.stop)
        for server in servers:
            server.wait_ready()
        statuses = asyncio.run(calls_at_once([s.url for s in servers], key, n))
        watch = open_db(db_path)
        wait_for(
            lambda: Ledger(watch).balance(account).held_micros == 0, what="the holds to return"
        )
    served = statuses.count(200)
    assert 1 <= served <= k and statuses.count(402) == n - served, statuses
    balance = Ledger(watch).balance(account)
    usage = list(watch.query("SELECT * FROM usage WHERE account_id = ?", [account]))
    charges = [
        r[0]
        for r in watch.execute(
            "SELECT amount_micros FROM ledger_entries WHERE account_id = ? AND kind = 'charge'",
            [account],
        )
    ]
    assert balance.balance_micros >= 0 and balance.held_micros == 0
    assert len(charges) == served == sum(1 for r in usage if r["status"] == "succeeded")
    assert hold * k + sum(charges) == balance.balance_micros
    assert -sum(charges) == sum(r["cost_micros"] for r in usage)
    assert watch.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
    watch.conn.close()
    check = cli(registry, db_path, "ledger", "check")
    assert check.returncode == 0, check.stderr


def test_a_task_is_finished_by_another_process_after_its_own_is_killed(
    simulator: Simulator, tmp_path: Path, database: Path | str
) -> None:
    with serve(create_replicate(REPLICATE_KEY)) as replicate_url:
        replicate = Simulator(replicate_url)
        registry = registry_for(
            simulator.url, tmp_path, replicate=replicate_url, tasks=TASKS_SETTINGS
        )
        db_path = database
        account, key = funded(db_path, 5_000_000)
        replicate.knobs(slow_seconds=8)  # still running once the second process is up
        headers = {"authorization": f"Bearer {key}"}
        first = Served(registry, db_path)
        first.wait_ready()
        r = httpx.post(
            f"{first.url}/v1/tasks",
            json={
                "model": "replicate/veo-3.1-fast",
                "input": {"prompt": "handover", "duration": 4},
            },
            headers=headers,
        )
        assert r.status_code == 202, r.text
        task_id = r.json()["id"]
        watch = open_db(db_path)

        def status() -> str:
            return watch.execute("SELECT status FROM tasks WHERE id = ?", [task_id]).fetchone()[0]

        wait_for(lambda: status() == "running", what="the task to start")
        with serving(registry, db_path) as second:
            assert status() == "running"
            first.signal(signal.SIGKILL)
            first.process.wait(timeout=10)
            wait_for(lambda: status() not in ("queued", "running"), 30, "the task to finish")
            task = httpx.get(f"{second.url}/v1/tasks/{task_id}", headers=headers).json()
        assert task["status"] == "succeeded", task
        creates = [
            q for q in replicate.requests() if q["method"] == "POST" and "predictions" in q["path"]
        ]
        assert len(creates) == 1  # taken over by polling, never submitted again
        charges = watch.execute(
            "SELECT amount_micros FROM ledger_entries WHERE hold_id = ?", [task_id]
        ).fetchall()
        assert [c[0] for c in charges] == [-int(Decimal(str(task["cost"])) * 1_000_000)]
        assert Ledger(watch).balance(account).held_micros == 0
        watch.conn.close()
        check = cli(registry, db_path, "ledger", "check")
        assert check.returncode == 0, check.stderr


def _slow_call(url: str, key: str, outcome: list[object]) -> threading.Thread:
    def call() -> None:
        with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60) as c:
            try:
                outcome.append(c.chat.completions.create(**CHAT))
            except openai.APIError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_sigterm_lets_calls_in_flight_finish_and_bills_them(
    simulator: Simulator, tmp_path: Path
) -> None:
    """With two workers: the supervisor passes SIGTERM on, each worker stops taking
    connections, finishes its calls, commits their charges and returns its credits."""
    registry = registry_for(simulator.url, tmp_path)
    db_path = tmp_path / "drain.db"
    account, key = funded(db_path, 10_000_000)
    server = Served(registry, db_path, "--workers", "2", "--shutdown-timeout", "30")
    server.wait_ready()
    watch = open_db(db_path)
    simulator.knobs(latency=3)
    outcome: list[object] = []
    caller = _slow_call(server.url, key, outcome)
    wait_for(
        lambda: watch.execute("SELECT 1 FROM reservations").fetchone(), what="the call's credits"
    )
    server.signal(signal.SIGTERM)
    caller.join(timeout=30)
    assert server.process.wait(timeout=30) in STOPPED
    [answer] = outcome
    assert not isinstance(answer, Exception), answer
    [row] = watch.query("SELECT * FROM usage WHERE account_id = ?", [account])
    assert row["status"] == "succeeded" and row["cost_micros"] > 0
    charges = watch.execute(
        "SELECT amount_micros FROM ledger_entries WHERE kind = 'charge' AND account_id = ?",
        [account],
    ).fetchall()
    assert [c[0] for c in charges] == [-row["cost_micros"]]
    balance = Ledger(watch).balance(account)
    assert (balance.balance_micros, balance.held_micros) == (10_000_000 - row["cost_micros"], 0)
    assert watch.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
    watch.conn.close()
    check = cli(registry, db_path, "ledger", "check")
    assert check.returncode == 0, check.stderr


def test_a_call_cut_by_the_shutdown_timeout_costs_nothing(
    simulator: Simulator, tmp_path: Path
) -> None:
    registry = registry_for(simulator.url, tmp_path)
    db_path = tmp_path / "cut.db"
    account, key = funded(db_path, 10_000_000)
    server = Served(registry, db_path, "--shutdown-timeout", "0.5")
    server.wait_ready()
    watch = open_db(db_path)
    simulator.knobs(latency=30)
    outcome: list[object] = []
    caller = _slow_call(server.url, key, outcome)
    wait_for(
        lambda: watch.execute("SELECT 1 FROM reservations").fetchone(), what="the call's credits"
    )
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) in STOPPED
    assert time.monotonic() - started < 10  # it did not wait for the upstream
    caller.join(timeout=30)
    [answer] = outcome
    assert isinstance(answer, openai.APIError), answer
    balance = Ledger(watch).balance(account)
    assert (balance.balance_micros, balance.held_micros) == (10_000_000, 0)
    assert watch.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
    assert [r["status"] for r in watch.query("SELECT status FROM usage")] in ([], ["failed"])
    assert watch.execute(
        "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'charge'"
    ).fetchone() == (0,)
    watch.conn.close()
    check = cli(registry, db_path, "ledger", "check")
    assert check.returncode == 0, check.stderr


def test_workers_share_the_port_and_their_metrics(simulator: Simulator, tmp_path: Path) -> None:
    """``--workers 4`` on a new database: a scrape of any worker counts every worker's
    requests; a previous run's metric files are cleared at start."""
    registry = registry_for(simulator.url, tmp_path)
    db_path = tmp_path / "workers.db"
    _, key = funded(db_path, 0)
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"stale")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    with serving(registry, db_path, "--workers", "4", env=env) as server:
        assert not (folder / "counter_999999.db").exists()
        headers = {"authorization": f"Bearer {key}"}
        for _ in range(40):  # a new connection each: any worker may take it
            assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 200
        wait_for(lambda: len(list(folder.glob("histogram_*.db"))) == 4, what="4 workers' files")
        scrape = httpx.get(f"{server.url}/metrics").text
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
        if sample.name == "apimodels_requests_total"
        and sample.labels["route"] == "/v1/models"
        and sample.labels["status"] == "200"
    )
    assert counted == 40


def test_the_sandbox_takes_one_worker(simulator: Simulator, tmp_path: Path) -> None:
    registry = registry_for(simulator.url, tmp_path)
    result = cli(registry, tmp_path / "sandbox.db", "serve", "--sandbox", "--workers", "2")
    assert result.returncode == 2
    assert "--sandbox" in result.stderr and "one worker" in result.stderr


def test_a_keys_limits_hold_across_processes(
    simulator: Simulator, tmp_path: Path, database: Path | str
) -> None:
    """Each process counting only its own calls would serve a key its rpm, and let it spend
    its cap, once per process: across 2 processes on a SQLite file (4 on PostgreSQL) a key
    still gets at most rpm a clock minute, from the shared counter they lease slices of,
    and another key is charged no more than its total cap, from the room they lease."""
    rpm, n = 12, 48
    registry = registry_for(simulator.url, tmp_path)
    account, key = funded(database, 50_000_000)
    capped_account, capped_key = funded(database, 50_000_000)
    db = open_db(database)
    key_id, capped_id = (
        db.execute("SELECT id FROM api_keys WHERE account_id = ?", [a]).fetchone()[0]
        for a in (account, capped_account)
    )
    set_key_limits(db, key_id, rpm=rpm, daily_cap_micros=None, total_cap_micros=None)
    cap = 12 * hold_of_a_call(registry, tmp_path)  # room for 12 calls in flight at once
    set_key_limits(db, capped_id, rpm=None, daily_cap_micros=None, total_cap_micros=cap)
    count = 2 if isinstance(database, Path) else 4

    with ExitStack() as stack:
        servers = [Served(registry, database) for _ in range(count)]
        for server in servers:
            stack.callback(server.stop)
        for server in servers:
            server.wait_ready()
        urls = [s.url for s in servers]
        # Clear of a minute's end, so that all the calls fall in one clock minute.
        if time.time() % 60 > 50:
            time.sleep(61 - time.time() % 60)
        started = time.gmtime()
        statuses = asyncio.run(calls_at_once(urls, key, n))
        minutes = 1 if time.gmtime()[:5] == started[:5] else 2
        # 48 at once, each answered after half a second: every process is sent more calls
        # than the room has, and holds them all at the same time unless the room is shared.
        simulator.knobs(latency=0.5)
        try:
            capped = asyncio.run(calls_at_once(urls, capped_key, 48))
        finally:
            simulator.reset()
    served = statuses.count(200)
    assert statuses.count(429) == n - served, statuses
    # Every process admits some (its bucket is full), and together no more than the limit.
    assert rpm // 2 <= served <= rpm * minutes, statuses

    served = capped.count(200)
    assert capped.count(429) == 48 - served, capped
    spent = db.execute("SELECT SUM(cost_micros) FROM usage WHERE key_id = ?", [capped_id])
    assert spent.fetchone()[0] <= cap and served <= 12
    assert served >= 4, capped  # the early refusals are bounded (limits module)
    failed = db.execute(
        "SELECT COUNT(*) FROM usage WHERE key_id = ? AND status <> 'succeeded'", [capped_id]
    ).fetchone()[0]
    assert failed == 0  # a 429 is refused before anything is held or written
    leases = db.execute("SELECT COUNT(*) FROM spend_leases WHERE key_id = ?", [capped_id])
    assert leases.fetchone()[0] == 0  # returned by the processes as they stopped
    db.conn.close()
    check = cli(registry, database, "ledger", "check")
    assert check.returncode == 0, check.stderr


def test_every_call_two_busy_processes_serve_is_charged_once(
    simulator: Simulator, tmp_path: Path, database: Path | str
) -> None:
    """Two processes under load on one account: their batches of charges and reservation
    growths meet on the account's row; every call served has its usage row and its charge
    (none lost to a failed batch, none twice)."""
    n, concurrency = 1200, 64
    registry = registry_for(simulator.url, tmp_path)
    account, key = funded(database, 100_000_000)

    with serving(registry, database) as a, serving(registry, database) as b:
        statuses = asyncio.run(calls_at_once([a.url, b.url], key, n, concurrency))
    assert statuses == [200] * n
    watch = open_db(database)
    succeeded = watch.execute(
        "SELECT COUNT(*) FROM usage WHERE account_id = ? AND status = 'succeeded'", [account]
    ).fetchone()[0]
    charged = watch.execute(
        "SELECT COUNT(*) FROM ledger_entries WHERE account_id = ? AND kind = 'charge'", [account]
    ).fetchone()[0]
    watch.conn.close()
    assert succeeded == charged == n
    check = cli(registry, database, "ledger", "check")
    assert check.returncode == 0, check.stderr
