"""PostgreSQL drivers compared on the ledger's own transaction: psycopg 3 (synchronous, with
psycopg-pool: what the gateway uses) against asyncpg (asynchronous, its own pool).

One transaction is the hold of a call: a conditional update of the account's row and the
insert of its usage row (``BEGIN``, two statements, ``COMMIT``). Measured one at a time
(latency: what a request waits) and from 16 concurrent callers (threads for psycopg,
tasks for asyncpg; each on an account of its own), each caller holding one connection
(the drivers alone) or taking one from the pool per transaction (as the gateway does:
asyncpg's pool resets a connection it takes back, one more round trip), on a throwaway
cluster (fsync on, ``synchronous_commit = off``).

    uv run --with asyncpg python bench/pg_drivers.py [--transactions 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from contextlib import nullcontext

import psycopg
from psycopg_pool import ConnectionPool

from apimodels.testing.postgres import Cluster

SCHEMA = """
CREATE TABLE accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL, held BIGINT NOT NULL);
CREATE TABLE usage (request_id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts,
                    hold BIGINT NOT NULL, created_at TEXT NOT NULL);
"""
HOLD = "UPDATE accounts SET held = held + {p1} WHERE id = {p2} AND balance - held >= {p1}"
USAGE = (
    "INSERT INTO usage (request_id, account_id, hold, created_at) VALUES ({p1}, {p2}, {p3}, {p4})"
)


def setup(url: str, accounts: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS usage, accounts")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        for i in range(accounts):
            conn.execute("INSERT INTO accounts VALUES (%s, %s, 0)", (f"a{i}", 10**15))


def psycopg_run(url: str, n: int, workers: int, per_transaction: bool) -> float:
    hold = HOLD.format(p1="%(h)s", p2="%(a)s")
    usage = USAGE.format(p1="%(r)s", p2="%(a)s", p3="%(h)s", p4="%(t)s")
    with ConnectionPool(
        url, min_size=workers, max_size=workers, kwargs={"autocommit": True}
    ) as pool:
        pool.wait()

        def work(w: int) -> None:
            held = None if per_transaction else pool.getconn()
            for _ in range(n // workers):
                params = {"h": 12_000, "a": f"a{w}", "r": uuid.uuid4().hex, "t": "now"}
                with (
                    pool.connection() if held is None else nullcontext(held) as conn,
                    conn.transaction(),
                ):
                    conn.execute(hold, params)
                    conn.execute(usage, params)
            if held is not None:
                pool.putconn(held)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return n / (time.perf_counter() - started)


async def asyncpg_run(url: str, n: int, workers: int, per_transaction: bool) -> float:
    import asyncpg

    hold = HOLD.format(p1="$1", p2="$2")
    usage = USAGE.format(p1="$1", p2="$2", p3="$3", p4="$4")
    async with asyncpg.create_pool(url, min_size=workers, max_size=workers) as pool:

        async def work(w: int) -> None:
            held = None if per_transaction else await pool.acquire()
            for _ in range(n // workers):
                async with (
                    pool.acquire() if held is None else nullcontext(held) as conn,
                    conn.transaction(),
                ):
                    await conn.execute(hold, 12_000, f"a{w}")
                    await conn.execute(usage, uuid.uuid4().hex, f"a{w}", 12_000, "now")
            if held is not None:
                await pool.release(held)

        started = time.perf_counter()
        await asyncio.gather(*(work(w) for w in range(workers)))
        return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transactions", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with Cluster.start(durable=True) as cluster:
        url = cluster.new_database()
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET synchronous_commit = off')
        print(f"{args.transactions:,} hold transactions per run, best of {args.rounds} runs")
        for per_transaction in (False, True):
            how = "a pool checkout per transaction" if per_transaction else "a connection each"
            for workers in (1, 16):
                rates: dict[str, float] = {}
                for _ in range(args.rounds):  # interleaved, the best of each
                    setup(url, workers)
                    rate = psycopg_run(url, args.transactions, workers, per_transaction)
                    rates["psycopg 3"] = max(rates.get("psycopg 3", 0), rate)
                    setup(url, workers)
                    rate = asyncio.run(
                        asyncpg_run(url, args.transactions, workers, per_transaction)
                    )
                    rates["asyncpg"] = max(rates.get("asyncpg", 0), rate)
                for name, rate in rates.items():
                    print(
                        f"  {how}, {workers:2} caller(s), {name:9} {rate:8,.0f} transactions/s"
                        f" ({1e6 / rate * workers:6.0f} us each)"
                    )


if __name__ == "__main__":
    main()
