"""Console benchmark: the server's render time of the dashboard for an account with
100,000 usage rows (target: under 50 ms).

An account gets ``--rows`` captured usage rows over the last 60 days (half in the 30 days
the chart shows) across 6 models, plus 20,000 rows of another account; a signed-in session
then loads ``/console/dashboard`` ``--requests`` times over a kept-alive connection to a
uvicorn server on 127.0.0.1. Reported: the median, p90 and p99 of the whole request (an
upper bound of the render time), and the same with the dashboard's index dropped
(``idx_usage_days``), to show what it buys. One run on a shared 2-core machine.

    uv run python bench/console.py [--rows 100000] [--requests 200]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from apimodels.console import sessions
from apimodels.server import assemble
from apimodels.store.accounts import create_account
from apimodels.testing import serve

ROOT = Path(__file__).resolve().parents[1]
MODELS = [f"openai/model-{i}" for i in range(6)]


def fill(db, account_id: str, rows: int, days: int = 60) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    rng = random.Random(7)
    batch = []
    for i in range(rows):
        at = now - timedelta(seconds=rng.uniform(0, days * 86400))
        cost = rng.randint(10, 5000)
        batch.append(
            (
                f"req_{account_id[-6:]}_{i:08d}",
                account_id,
                "key_bench",
                rng.choice(MODELS),
                "openai",
                "chat",
                0,
                "{}",
                cost,
                "captured",
                "succeeded",
                rng.randint(10, 2000),
                rng.randint(10, 800),
                cost,
                at.isoformat(timespec="microseconds"),
                at.isoformat(timespec="microseconds"),
            )
        )
    with db.conn:
        db.conn.executemany(
            "INSERT INTO usage (request_id, account_id, key_id, model, provider, modality, stream,"
            " unit_prices, hold_micros, hold_state, status, input_tokens, output_tokens,"
            " cost_micros, created_at, settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?)",
            batch,
        )


def measure(url: str, token: str, requests: int) -> list[float]:
    times = []
    with httpx.Client(base_url=url, cookies={"am_session": token}, timeout=30) as client:
        for _ in range(10):  # warm-up: caches, first-use imports of templates
            assert client.get("/console/dashboard").status_code == 200
        for _ in range(requests):
            started = time.perf_counter()
            r = client.get("/console/dashboard")
            times.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200
    return times


def report(label: str, times: list[float]) -> float:
    q = statistics.quantiles(times, n=100)
    median = statistics.median(times)
    print(f"{label:<34} median {median:7.2f} ms   p90 {q[89]:7.2f} ms   p99 {q[98]:7.2f} ms")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = assemble(ROOT / "registry.toml", Path(tmp) / "bench.db", sandbox=True, environ={})
        db = server.db
        account = create_account(db, "bench@example.com")
        other = create_account(db, "other@example.com")
        started = time.perf_counter()
        fill(db, account["id"], args.rows)
        fill(db, other["id"], 20_000)
        db.execute("ANALYZE")
        print(
            f"{args.rows:,} usage rows (+20,000 of another account) in {time.perf_counter() - started:.1f} s"
        )
        token = sessions.start(db, account["id"], days=1, user_agent="bench", ip="127.0.0.1")
        with serve(server.app) as url:
            with_index = report(
                "dashboard, with idx_usage_days", measure(url, token, args.requests)
            )
            db.execute("DROP INDEX idx_usage_days")
            db.execute("ANALYZE")
            report("dashboard, without it", measure(url, token, args.requests))
    print(f"target < 50 ms: {'met' if with_index < 50 else 'NOT met'}")
    return 0 if with_index < 50 else 1


if __name__ == "__main__":
    sys.exit(main())
