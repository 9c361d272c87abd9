"""What grows with a deployment's history: a database of ``--rows`` usage rows (default one
million, over the last 29 days, 50 accounts with a key each, 6 models), and two figures.

- **A spending-cap lease** of the busiest key (``billing.limits.lease_spending_op``, what a
  process does when a capped key's requests outgrow its lease): it reads the key's running
  totals per day (``key_spend``), whatever the number of its calls. For comparison, the sum
  over the key's usage rows that it replaced (2026-12-07: 2,073 ms for one key of 1M calls).
- **The admin overview** (``admin.overview``, from the running totals per day, account,
  model and provider, ``usage_daily``): its duration, and the worst stall of the event loop
  meanwhile (a 1 ms ticker), computed in place and as the server computes it, on a worker
  thread (``admin.context.reading``).

The database is made as it was before the running totals; opening it is the upgrade that
fills them in (migrations m021 and m022), also timed.

One run on a shared 2-core machine; the rows are made once per run (2-3 minutes for 1M).

    uv run python bench/history.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlite_utils

from apimodels.admin import Operations
from apimodels.admin.context import reading
from apimodels.admin.overview import overview
from apimodels.billing.ledger import Ledger
from apimodels.billing.limits import lease_spending_op
from apimodels.store.accounts import KeyLimits, create_account
from apimodels.store.db import open_db
from apimodels.store.migrations import MIGRATIONS
from apimodels.tasks.store import TaskStore

ACCOUNTS = 50
#: The usage rows' sum the lease read before the running totals (for the comparison).
USAGE_SUM = "SELECT COALESCE(SUM(cost_micros), 0) FROM usage WHERE key_id = ? AND created_at >= ''"


def fill(path: Path, rows: int) -> list[str]:
    """A database at ``path`` as it was before the running totals (migrations up to m020),
    with ``rows`` captured calls over the last 29 days (key ``key_0`` has the most)."""
    db = sqlite_utils.Database(path)
    db.enable_wal()
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for m in MIGRATIONS[: [m.__name__ for m in MIGRATIONS].index("m021_key_spend")]:
        m(db)
        db.execute("INSERT INTO _migrations VALUES (?, ?)", [m.__name__, "bench"])
    accounts = [create_account(db, f"history-{i}@example.com")["id"] for i in range(ACCOUNTS)]
    now, rng = datetime.now(UTC), random.Random(7)

    def usage():  # type: ignore[no-untyped-def]
        for i in range(rows):
            n = 0 if i % 2 else rng.randrange(ACCOUNTS)  # half of them the first account's
            at = now - timedelta(seconds=rng.randrange(29 * 86_400))
            yield (f"req_{i}", accounts[n], f"key_{n}", at.isoformat(timespec="microseconds"),
                   f"openai/model-{i % 6}", "openai", "succeeded", "captured", 2_000, 100)  # fmt: skip

    with db.conn:
        db.conn.executemany(
            "INSERT INTO usage (request_id, account_id, key_id, created_at, model, provider,"
            " status, hold_state, hold_micros, cost_micros) VALUES (?,?,?,?,?,?,?,?,?,?)",
            usage(),
        )
    db.conn.close()
    return accounts


def best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    """The fastest of ``n`` runs of ``fn()``, in milliseconds."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


async def stalled(work: Awaitable[object]) -> tuple[float, float]:
    """(how long ``work`` took, the event loop's worst stall meanwhile), in milliseconds."""
    worst, done = 0.0, False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - start - 0.001)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    await work
    took = time.perf_counter() - start
    done = True
    await ticking
    return took * 1000, worst * 1000


async def in_place(ops: Operations) -> None:
    overview(ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.db"
        start = time.perf_counter()
        accounts = fill(path, args.rows)
        print(f"{args.rows:,} usage rows in {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
        db = open_db(path)  # the upgrade: m021 and m022 fill the running totals
        print(f"upgrade (the running totals filled in): {time.perf_counter() - start:.1f} s")
        today = datetime.now(UTC).date().isoformat()
        (calls,) = db.execute("SELECT COUNT(*) FROM usage WHERE key_id = 'key_0'").fetchone()
        for name, caps in (
            ("total cap", KeyLimits(None, None, 10**15)),
            ("daily cap", KeyLimits(None, 10**15, None)),
        ):
            with db.conn:  # each lease in its own transaction, as the ledger's batch runs it
                ms = best_of(5, lambda c=caps: lease_spending_op(  # type: ignore[misc]
                    db.conn, accounts[0], "key_0", "bench", c, today, 1_000))  # fmt: skip
            print(f"lease, {name}, key of {calls:,} calls: {ms * 1000:,.0f} us")
        ms = best_of(3, lambda: db.execute(USAGE_SUM, ["key_0"]).fetchone())
        print(f"  (the sum of its usage rows, as before: {ms:,.0f} ms)")
        ledger = Ledger(db)
        ops = Operations(db, ledger, TaskStore(db, ledger), 30)

        async def overviews() -> None:
            ways = (
                ("in place", lambda: in_place(ops)),
                ("reading()", lambda: reading(ops, overview)),
            )
            for name, work in ways:
                for _ in range(2):
                    took, worst = await stalled(work())
                    print(f"overview {name}: {took:,.0f} ms, event loop stalled {worst:,.1f} ms")

        asyncio.run(overviews())


if __name__ == "__main__":
    main()
