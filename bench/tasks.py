"""Tasks benchmark: task submissions per second, and the chat path's added latency while
1,000 tasks are pending and being polled.

One gateway (billing on, default task settings: first poll after 1 s, backoff to 15 s), the
Replicate simulator (predictions held in ``processing`` for an hour, so every task stays
pending and polled) and the fixed-latency OpenAI mock, each in its own process.

  (a) submissions: ``--tasks`` POST /v1/tasks from ``--concurrency`` connections (each is a
      hold + a task row; the worker then creates the prediction upstream);
  (b) chat overhead before the tasks exist and again once all of them are running upstream
      and being polled: interleaved rounds against the mock directly and through the gateway,
      as bench/overhead.py measures it. Target: the added latency grows by at most 20 %.

    uv run python bench/tasks.py [--tasks 1000] [--rounds 10] [--per-round 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import ROOT, free_port, rss_mb, sequential, wait_ready

REPLICATE_KEY = "r8-bench"
REGISTRY = """
[gateway]
key_cache_seconds = 5

[tasks]
concurrency = 64

[providers.openai]
package = "apimodels-openai"
base_url = "{openai}/v1"
max_retries = 0

[providers.replicate]
package = "apimodels-replicate"
base_url = "{replicate}/v1"

[models."openai/gpt-4o-mini"]
provider = "openai"
upstream = "gpt-4o-mini"
modality = "chat"
max_output_tokens = 16384
pricing = {{ input_per_1m = "0.15", cached_input_per_1m = "0.075", output_per_1m = "0.60" }}

[models."replicate/flux-schnell"]
provider = "replicate"
upstream = "black-forest-labs/flux-schnell"
modality = "image"
max_outputs = 4
pricing = {{ per_image = "0.003" }}
"""

SIM_APP = """
from apimodels_replicate.simulator import create_app
app = create_app({key!r})
"""


async def submit(url: str, key: str, count: int, concurrency: int) -> tuple[float, int]:
    """POST ``count`` tasks from ``concurrency`` connections; (tasks per second, failures)."""
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "replicate/flux-schnell", "input": {"prompt": "a benchmark"}}
    left, failed = count, 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def worker() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                async with s.post(url, json=body, headers=headers) as r:
                    await r.read()
                    failed += r.status != 202

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - t0), failed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args()

    from apimodels.billing.ledger import Ledger
    from apimodels.store.accounts import create_account, create_key
    from apimodels.store.db import open_db

    tmp = Path(tempfile.mkdtemp(prefix="apimodels-bench-tasks-"))
    (tmp / "replicate_sim.py").write_text(SIM_APP.format(key=REPLICATE_KEY))
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "REPLICATE_API_TOKEN": REPLICATE_KEY}
    ports = {name: free_port() for name in ("openai", "replicate", "gateway")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    uvicorn = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning"]
    procs = {
        "openai": subprocess.Popen(
            [
                *uvicorn,
                "--app-dir",
                str(ROOT / "bench"),
                "mock_upstream:app",
                "--port",
                str(ports["openai"]),
            ],
            env=env,
        ),
        "replicate": subprocess.Popen(
            [
                *uvicorn,
                "--app-dir",
                str(tmp),
                "replicate_sim:app",
                "--port",
                str(ports["replicate"]),
            ],
            env=env,
        ),
    }
    (tmp / "registry.toml").write_text(
        REGISTRY.format(openai=urls["openai"], replicate=urls["replicate"])
    )
    db = open_db(tmp / "bench.db")
    account = create_account(db, "bench@example.com")["id"]
    _, key = create_key(db, account)
    Ledger(db).post(account, 10**12, kind="grant", reason="bench", actor="bench")
    procs["gateway"] = subprocess.Popen(
        [sys.executable, "-m", "apimodels.cli", "--registry", str(tmp / "registry.toml"),
         "--db", str(tmp / "bench.db"), "serve", "--port", str(ports["gateway"]),
         "--no-access-log"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    targets = {
        "direct": (urls["openai"] + "/v1/chat/completions", {"authorization": "Bearer sk-bench"}),
        "gateway": (urls["gateway"] + "/v1/chat/completions", {"authorization": f"Bearer {key}"}),
    }
    try:
        wait_ready(urls["openai"] + "/")
        wait_ready(urls["replicate"] + "/_sim/knobs")
        wait_ready(urls["gateway"] + "/health")
        httpx.post(urls["replicate"] + "/_sim/knobs", json={"slow_seconds": 3600})

        before = sequential(targets, args.rounds, args.per_round)["gateway"]
        rate, failed = asyncio.run(
            submit(urls["gateway"] + "/v1/tasks", key, args.tasks, args.concurrency)
        )
        print(f"submissions: {args.tasks} tasks at {args.concurrency} connections: "
              f"{rate:.0f} tasks/s, {failed} failed")  # fmt: skip
        deadline = time.monotonic() + 120
        while (running := db.execute(
            "SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()[0]) < args.tasks:  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {running} of {args.tasks} tasks started")
            time.sleep(0.2)
        time.sleep(2)  # into the steady state of polling
        t0, polls0 = time.monotonic(), db.execute("SELECT sum(polls) FROM tasks").fetchone()[0]
        during = sequential(targets, args.rounds, args.per_round)["gateway"]
        polls = db.execute("SELECT sum(polls) FROM tasks").fetchone()[0] - polls0
        poll_rate = polls / (time.monotonic() - t0)
        print(f"chat overhead ({args.rounds} rounds x {args.per_round}), added median / p99:")
        print(
            f"  no tasks:            {before['added_median']:.3f} ms / {before['added_p99']:.3f} ms"
        )
        print(f"  {args.tasks} tasks polled: {during['added_median']:.3f} ms / "
              f"{during['added_p99']:.3f} ms  ({poll_rate:.0f} polls/s meanwhile)")  # fmt: skip
        growth = during["added_median"] / before["added_median"] - 1
        print(f"  growth of the added median: {growth:+.1%} (target: at most +20 %)")
        print(f"  gateway RSS {rss_mb(procs['gateway'].pid):.0f} MB")
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=10)
        db.conn.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
