"""What differs between the backends: the placeholders PostgreSQL's layer translates, the
hosts it refuses to serve from folders of their own, SQLite's online backup."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from processes import cli, serving

from apimodels.billing.ledger import Ledger
from apimodels.errors import AuthenticationError, ConfigError, InsufficientCredits
from apimodels.server import assemble
from apimodels.store.accounts import KeyStore, Principal, create_account, create_key
from apimodels.store.db import commit_off_loop, is_postgres, open_db
from apimodels.store.hosts import STALE
from apimodels.store.postgres import translate
from apimodels.testing import serve
from apimodels.testing.postgres import Cluster
from support import SIM_KEY, Simulator, funded, registry_for


def test_placeholders_are_translated_outside_literals_and_casts() -> None:
    assert translate("SELECT ? , :name, x::text, '?:a%' FROM t WHERE y LIKE 'a%'") == (
        "SELECT %s , %(name)s, x::text, '?:a%%' FROM t WHERE y LIKE 'a%%'",
        None,
    )
    # ?N: positional, with the order to pass the values in (one may repeat)
    assert translate("UPDATE t SET a = ?2 WHERE b = ?1 AND c < ?2") == (
        "UPDATE t SET a = %s WHERE b = %s AND c < %s",
        (1, 0, 1),
    )


def _stamp(db: object, host: str, ago: timedelta) -> None:
    seen = (datetime.now(UTC) - ago).isoformat(timespec="microseconds")
    db.execute("INSERT INTO storage_hosts (host, seen_at) VALUES (?, ?)", (host, seen))  # type: ignore[attr-defined]


def test_a_second_host_on_the_local_folder_store_is_refused(
    pg_cluster: Cluster, simulator: Simulator, tmp_path: Path
) -> None:
    url = pg_cluster.new_database()
    registry = registry_for(simulator.url, tmp_path)
    env = {"OPENAI_API_KEY": SIM_KEY}
    assemble(registry, url, environ=env).db.conn.close()  # this host, alone: fine
    db = open_db(url)
    _stamp(db, "another-host", timedelta(seconds=5))
    with pytest.raises(ConfigError, match='backend = "s3"'):
        assemble(registry, url, environ=env)
    # A folder every host mounts is declared so, and then shared.
    shared = registry.read_text().replace("[storage]\n", "[storage]\nshared_folder = true\n", 1)
    registry.write_text(shared)
    assemble(registry, url, environ=env).db.conn.close()
    db.conn.close()


def test_a_host_gone_quiet_no_longer_blocks_the_local_store(
    pg_cluster: Cluster, simulator: Simulator, tmp_path: Path
) -> None:
    url = pg_cluster.new_database()
    db = open_db(url)
    _stamp(db, "old-host", STALE + timedelta(minutes=1))  # replaced, say
    registry = registry_for(simulator.url, tmp_path)
    assemble(registry, url, environ={"OPENAI_API_KEY": SIM_KEY}).db.conn.close()
    db.conn.close()


def test_sqlite_serves_one_host_and_never_asks(simulator: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "one.db"
    db = open_db(path)
    _stamp(db, "another-host", timedelta(seconds=5))
    assemble(registry_for(simulator.url, tmp_path), path, environ={"OPENAI_API_KEY": SIM_KEY})


def test_backup_copies_a_database_in_use_consistently(simulator: Simulator, tmp_path: Path) -> None:
    registry = registry_for(simulator.url, tmp_path)
    db_path = tmp_path / "live.db"
    _, key = funded(db_path, 5_000_000)
    with serving(registry, db_path) as server:
        stop = threading.Event()

        def traffic() -> None:
            with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as c:
                while not stop.is_set():
                    c.chat.completions.create(
                        model="openai/gpt-4o-mini",
                        messages=[{"role": "user", "content": "hi"}],
                        max_tokens=5,
                    )

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            time.sleep(0.5)
            result = cli(registry, db_path, "backup", str(tmp_path / "copy.db"))
        finally:
            stop.set()
            thread.join()
    assert result.returncode == 0, result.stderr
    copy = open_db(tmp_path / "copy.db")
    assert copy.execute("SELECT COUNT(*) FROM usage").fetchone()[0] > 0
    assert Ledger(copy).check() == []  # one moment's state: every charge with its balance
    again = cli(registry, db_path, "backup", str(tmp_path / "copy.db"))
    assert again.returncode != 0 and "exists" in again.stderr


def test_backup_of_postgresql_points_to_pg_dump(pg_cluster: Cluster, tmp_path: Path) -> None:
    result = cli(tmp_path / "registry.toml", pg_cluster.url, "backup", str(tmp_path / "x.db"))
    assert result.returncode != 0 and "pg_dump" in result.stderr


def test_a_batch_waiting_on_postgresql_leaves_the_event_loop_serving(
    pg_cluster: Cluster, simulator: Simulator, tmp_path: Path
) -> None:
    """On PostgreSQL the ledger's batches are written on a thread of their own: while one
    waits (here for an account row another session has locked), the gateway goes on
    answering; the call whose batch waited is answered and charged once the lock goes."""
    url = pg_cluster.new_database()
    server = assemble(
        registry_for(simulator.url, tmp_path), url, environ={"OPENAI_API_KEY": SIM_KEY}
    )
    account = create_account(server.db, "locked@example.com")["id"]
    _, key = create_key(server.db, account)
    server.ledger.post(account, 1_000_000, kind="grant", reason="t", actor="tests")
    chat = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"authorization": f"Bearer {key}"}
    with serve(server.app) as base, psycopg.connect(url) as locker:
        locker.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", [account])
        answers: list[int] = []
        call = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{base}/v1/chat/completions",
                    json=chat,
                    headers=auth,
                    timeout=30,
                ).status_code
            )
        )
        call.start()  # its reservation waits for the row
        deadline = time.monotonic() + 10
        while not locker.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the call's batch never reached the lock"
            time.sleep(0.05)
        for _ in range(3):  # the event loop is free meanwhile
            assert httpx.get(f"{base}/health/live", timeout=2).status_code == 200
            models = httpx.get(f"{base}/v1/models", headers=auth, timeout=2)
            assert models.status_code == 200  # the key is known: no database read
        assert not answers
        locker.rollback()
        call.join(timeout=10)
    assert answers == [200]
    charged = server.db.execute(
        "SELECT COUNT(*) FROM ledger_entries WHERE account_id = ? AND kind = 'charge'", [account]
    )
    assert charged.fetchone()[0] == 1
    assert server.ledger.check() == []
    server.db.close()


def test_a_key_is_looked_up_off_the_event_loop_on_postgresql(database: str | Path) -> None:
    """A key not in the cache is read from the database: on PostgreSQL on a worker thread
    (a round trip would stop every call of the process), on SQLite in place (microseconds,
    on the loop's own connection). Once cached, it is not read again; an unknown key is
    read each time, and refused."""
    db = open_db(database)
    account = create_account(db, "looked-up@example.com")["id"]
    _, key = create_key(db, account)
    elsewhere = open_db(":memory:")  # a well-formed key that this database does not know
    _, stranger = create_key(elsewhere, create_account(elsewhere, "x@example.com")["id"])
    keys = KeyStore(db, cache_seconds=60)
    where: list[str] = []
    lookup = keys._lookup

    def spy(*args: Any) -> Any:
        try:
            asyncio.get_running_loop()
            where.append("loop")
        except RuntimeError:
            where.append("worker")
        return lookup(*args)

    keys._lookup = spy  # type: ignore[method-assign]

    async def calls() -> list[Principal]:
        found = [await keys.check(f"Bearer {key}") for _ in range(3)]
        with pytest.raises(AuthenticationError, match="Invalid API key"):
            await keys.check(f"Bearer {stranger}")
        return found

    found = asyncio.run(calls())
    assert {p.key_id for p in found} == {found[0].key_id} and found[0].account_id == account
    expected = "worker" if is_postgres(db) else "loop"
    assert where == [expected, expected]  # the key once (then cached), the stranger
    if is_postgres(db):
        db.conn.close()


def test_a_transaction_off_the_loop_tells_its_outcome_to_a_caller_that_left(
    database: str | Path,
) -> None:
    """A task's creation (a hold and its row) commits on a worker thread on PostgreSQL even
    when its request is cancelled meanwhile: the outcome still reaches the limiter. A
    transaction that fails tells that too; on SQLite it runs in place."""
    db = open_db(database)
    account = create_account(db, "outcome@example.com")["id"]
    ledger = Ledger(db)
    ledger.post(account, 1_000_000, kind="grant", reason="g", actor="t")
    told: list[bool] = []

    def hold(request_id: str, micros: int) -> str:
        time.sleep(0.2)  # a round trip or a few, long enough to be cancelled during
        ledger.hold(request_id, account, micros, timedelta(minutes=5))
        return request_id

    async def cancelled_while_it_runs() -> None:
        waiting = asyncio.ensure_future(
            commit_off_loop(db, partial(hold, "task_left", 400_000), told.append)
        )
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        while not told:  # the thread goes on, and tells
            await asyncio.sleep(0.01)

    async def failing() -> None:
        with pytest.raises(InsufficientCredits):
            await commit_off_loop(db, partial(hold, "task_too_big", 10**9), told.append)

    if is_postgres(db):
        asyncio.run(cancelled_while_it_runs())
        assert told == [True] and ledger.balance(account).held_micros == 400_000
    else:  # in place: nothing to cancel it during
        assert asyncio.run(commit_off_loop(db, partial(hold, "task_here", 400_000), told.append))
        assert told == [True]
    asyncio.run(failing())
    assert told == [True, False] and ledger.balance(account).held_micros == 400_000
    if is_postgres(db):
        db.conn.close()
