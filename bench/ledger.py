"""Ledger benchmark: hold + capture pairs per second, as the gateway does them per request.

Each pair is two SQLite transactions on the real schema (the hold, which opens the request's
usage row; then the capture, which completes that row and appends the charge entry), in WAL mode with synchronous = NORMAL: a committed pair survives
a crash of the process; a power cut can lose the last few hundred milliseconds of them.

    uv run python bench/ledger.py [--pairs 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from apimodels.accounts import create_account
from apimodels.db import open_db
from apimodels.ledger import Ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "ledger.db")
        ledger = Ledger(db)
        acct = create_account(db, "bench@example.com")["id"]
        ledger.post(acct, 10**15, kind="grant", reason="bench", actor="bench")
        request = {
            "key_id": "key_bench", "model": "openai/gpt-4o-mini", "provider": "openai", "modality": "chat",
            "stream": 0, "unit_prices": '{"input_per_1m":"0.15","output_per_1m":"0.60"}',
        }
        usage = {"input_tokens": 12, "output_tokens": 7, "latency_ms": 1.0}
        ttl = timedelta(minutes=15)
        started = time.perf_counter()
        for i in range(args.pairs):
            rid = f"req_{i:012d}"
            ledger.hold(rid, acct, 12_000, ttl, request)
            ledger.capture(rid, 6, usage)
        elapsed = time.perf_counter() - started
        problems = ledger.check()
        print(f"{args.pairs} hold+capture pairs in {elapsed:.2f} s: {args.pairs / elapsed:,.0f} pairs/s "
              f"({elapsed / args.pairs * 1e6:.1f} us per pair); ledger check: {'ok' if not problems else problems}")


if __name__ == "__main__":
    main()
