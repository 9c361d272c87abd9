"""Ledger benchmark: hold + capture pairs per second, as the gateway does them per request.

Two figures: one pair at a time (each operation its own transaction), and the gateway's
group commit with 64 concurrent requests (the operations queued in one event-loop
iteration share one transaction).

Each pair is two SQLite transactions on the real schema (the hold, which opens the request's
usage row; then the capture, which completes that row and appends the charge entry), in WAL mode with synchronous = NORMAL: a committed pair survives
a crash of the process; a power cut can lose the last few hundred milliseconds of them.

    uv run python bench/ledger.py [--pairs 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from apimodels.accounts import create_account
from apimodels.db import open_db
from apimodels.ledger import GroupCommit, Ledger

REQUEST = {
    "key_id": "key_bench",
    "model": "openai/gpt-4o-mini",
    "provider": "openai",
    "modality": "chat",
    "stream": 0,
    "unit_prices": '{"input_per_1m":"0.15","output_per_1m":"0.60"}',
}
USAGE = {"input_tokens": 12, "output_tokens": 7, "latency_ms": 1.0}
TTL = timedelta(minutes=15)


def fresh(tmp: str, name: str) -> tuple[Ledger, str]:
    db = open_db(Path(tmp) / f"{name}.db")
    ledger = Ledger(db)
    acct = create_account(db, "bench@example.com")["id"]
    ledger.post(acct, 10**15, kind="grant", reason="bench", actor="bench")
    return ledger, acct


def sequential(ledger: Ledger, acct: str, pairs: int) -> float:
    started = time.perf_counter()
    for i in range(pairs):
        rid = f"req_{i:012d}"
        ledger.hold(rid, acct, 12_000, TTL, REQUEST)
        ledger.capture(rid, 6, USAGE)
    return time.perf_counter() - started


async def grouped(ledger: Ledger, acct: str, pairs: int, concurrency: int) -> float:
    group = GroupCommit(ledger)
    per_worker = pairs // concurrency

    async def worker(w: int) -> None:
        for i in range(per_worker):
            rid = f"req_{w:03d}_{i:09d}"
            await group.hold(rid, acct, 12_000, TTL, REQUEST)
            await group.capture(rid, 6, USAGE)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ledger, acct = fresh(tmp, "sequential")
        elapsed = sequential(ledger, acct, args.pairs)
        ok = ledger.check() == []
        print(
            f"one at a time: {args.pairs / elapsed:,.0f} pairs/s ({elapsed / args.pairs * 1e6:.1f} us per pair), ledger check {'ok' if ok else 'FAILED'}"
        )
        ledger, acct = fresh(tmp, "grouped")
        pairs = args.pairs - args.pairs % args.concurrency
        elapsed = asyncio.run(grouped(ledger, acct, pairs, args.concurrency))
        ok = ledger.check() == []
        print(
            f"group commit, {args.concurrency} concurrent: {pairs / elapsed:,.0f} pairs/s ({elapsed / pairs * 1e6:.1f} us per pair), ledger check {'ok' if ok else 'FAILED'}"
        )


if __name__ == "__main__":
    main()
