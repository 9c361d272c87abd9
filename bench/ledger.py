"""Ledger benchmark: hold + capture pairs per second, on the real schema, in a SQLite file and
in a PostgreSQL database (a throwaway cluster started here, when PostgreSQL is installed).

Three figures:

- **per-call holds** (what a task does): ``Ledger.hold`` then ``Ledger.capture``, one
  transaction each, one pair at a time. The hold writes the usage row as pending and
  checks the balance; the capture completes the row and appends the charge entry.
- **gateway, one request at a time**: ``billing.Biller`` as a server process runs it: the
  hold is taken in memory from the process's reservation of the account's credits, and
  the capture writes the ended request whole (usage row, charge entry, reservation and
  balance updates) through ``ledger.GroupCommit``, awaited before the next request.
- **gateway, N concurrent requests** (``--concurrency``, default 64): the same, with the
  captures that end in one event-loop iteration sharing one transaction.
- **per-call holds, T threads** (``--threads``, default 4): per-call pairs from T threads at
  once (several task workers): SQLite takes them one transaction at a time; PostgreSQL
  runs them on pooled connections side by side (each hold and capture is a conditional
  update of its rows).

Durability: SQLite in WAL mode with ``synchronous = NORMAL``, checkpoints off the writer (the
server's settings). A committed pair survives a crash of the process; a power cut or OS
crash can lose the pairs committed since the last WAL sync (at most a few hundred
milliseconds of them), never corrupt the file. PostgreSQL with fsync on and
``synchronous_commit = off``: the same promise. Every run ends with ``Ledger.check()`` and a
sum of the charges against the balance.

    uv run python bench/ledger.py [--pairs 20000] [--concurrency 64] [--threads 4]
                                  [--backend both|sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from apimodels.billing.biller import Biller
from apimodels.billing.ledger import GroupCommit, Ledger
from apimodels.billing.limits import Limiter
from apimodels.http.app import new_request_id
from apimodels.providers.types import Usage
from apimodels.store.accounts import Principal, create_account
from apimodels.store.db import Checkpointer, database_path, is_postgres, open_db

GRANT = 10**15
HOLD, COST = 12_000, 6
REQUEST = {
    "key_id": "key_bench",
    "model": "openai/gpt-4o-mini",
    "provider": "openai",
    "modality": "chat",
    "stream": 0,
    "unit_prices": '{"input_per_1m":"0.15","output_per_1m":"0.60"}',
}
USAGE = Usage(input_tokens=12, output_tokens=7)
TTL = timedelta(minutes=15)
ROUTE: Any = SimpleNamespace(
    billed_as=("openai/gpt-4o-mini", "openai", "chat", REQUEST["unit_prices"])
)


def fresh(tmp: str, name: str, cluster: Any = None) -> tuple[Ledger, str]:
    if cluster is not None:
        import psycopg

        url = cluster.new_database()
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET synchronous_commit = off')
        db = open_db(url)
    else:
        db = open_db(Path(tmp) / f"{name}.db")
        db.conn.execute("PRAGMA wal_autocheckpoint = 0")  # as the server: see checkpoints()
    ledger = Ledger(db)
    acct = create_account(db, "bench@example.com")["id"]
    ledger.post(acct, GRANT, kind="grant", reason="bench", actor="bench")
    return ledger, acct


@contextmanager
def checkpoints(ledger: Ledger) -> Iterator[None]:
    """What the server does: the writer never checkpoints; a thread copies the WAL into the
    database file once a second (``db.Checkpointer``)."""
    if is_postgres(ledger.db):
        yield
        return
    checkpointer = Checkpointer(database_path(ledger.db))
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(1.0):
            checkpointer.checkpoint()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        checkpointer.close()


def per_call_holds(ledger: Ledger, acct: str, pairs: int) -> float:
    fields = {"input_tokens": 12, "output_tokens": 7, "latency_ms": 1.0}
    started = time.perf_counter()
    for _ in range(pairs):
        rid = new_request_id()
        ledger.hold(rid, acct, HOLD, TTL, REQUEST)
        ledger.capture(rid, COST, fields)
    return time.perf_counter() - started


def threaded_holds(ledger: Ledger, acct: str, pairs: int, threads: int) -> float:
    each = pairs // threads
    workers = [
        threading.Thread(target=per_call_holds, args=(ledger, acct, each)) for _ in range(threads)
    ]
    started = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return time.perf_counter() - started


async def gateway(ledger: Ledger, acct: str, pairs: int, concurrency: int) -> float:
    writes = GroupCommit(ledger)
    biller = Biller(writes, TTL, Limiter(writes))
    principal = Principal(acct, "key_bench", "active", None, None, 0.0)
    per_worker = pairs // concurrency

    async def worker(w: int) -> None:
        for _ in range(per_worker):
            bill = await biller.open(new_request_id(), principal, ROUTE, HOLD, stream=False)
            settled = bill.succeed(USAGE, COST)
            assert settled is not None and await settled

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    await biller.aclose()
    return elapsed


def verified(ledger: Ledger, acct: str, pairs: int) -> None:
    """The run left the ledger exact: check() is clean and the charges are the balance's fall."""
    problems = ledger.check()
    charged = ledger.db.execute(
        "SELECT -sum(amount_micros) FROM ledger_entries WHERE kind = 'charge'"
    ).fetchone()[0]
    balance = ledger.balance(acct)
    exact = charged == pairs * COST == GRANT - balance.balance_micros and balance.held_micros == 0
    if problems or not exact:
        raise SystemExit(f"ledger check FAILED: {problems or 'charges != balance change'}")


def measure(
    tmp: str, name: str, run: Callable[[Ledger, str], float], pairs: int, cluster: Any = None
) -> float:
    """Pairs per second of one run on a fresh database, as the server runs it."""
    ledger, acct = fresh(tmp, name, cluster)
    with checkpoints(ledger):
        elapsed = run(ledger, acct)
    verified(ledger, acct, pairs)
    ledger.db.conn.close()
    return pairs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (median shown)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--backend", choices=("both", "sqlite", "postgresql"), default="both")
    args = parser.parse_args()
    n, k, t = args.pairs, args.concurrency, args.threads
    grouped = n - n % k
    threaded = n - n % t
    runs: list[tuple[str, int, Callable[[Ledger, str], float]]] = [
        ("per-call holds (tasks)", n, lambda led, a: per_call_holds(led, a, n)),
        ("gateway, one request at a time", n, lambda led, a: asyncio.run(gateway(led, a, n, 1))),
        (
            f"gateway, {k} concurrent",
            grouped,
            lambda led, a: asyncio.run(gateway(led, a, grouped, k)),
        ),
        (f"per-call holds, {t} threads", threaded, lambda led, a: threaded_holds(led, a, n, t)),
    ]
    print(
        f"{n:,} hold+capture pairs per run, median of {args.rounds} runs; every run checked exact"
    )
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        for backend in backends:
            cluster = None
            if backend == "postgresql":
                from apimodels.testing.postgres import Cluster

                cluster = stack.enter_context(Cluster.start(durable=True))
            print(backend)
            for label, pairs, run in runs:
                rates = sorted(
                    measure(tmp, f"{label}-{i}", run, pairs, cluster) for i in range(args.rounds)
                )
                median = statistics.median(rates)
                print(
                    f"  {label:<32} {median:>9,.0f} pairs/s ({1e6 / median:6.1f} us per pair;"
                    f" runs {rates[0]:,.0f}-{rates[-1]:,.0f})"
                )


if __name__ == "__main__":
    main()
