"""Dialect overhead benchmark: the added latency of ``/v1/responses`` and ``/v1/messages``
against ``/v1/chat/completions`` for the same model, through the same gateway.

One gateway (billing on) in front of the fixed-latency mock upstream (bench/mock_upstream.py),
each in its own process; interleaved rounds over the three endpoints with the same prompt,
the median of each round's per-request medians; the added latency of each dialect reported
as the median of its round differences against chat, with p50/p90/p99 of each endpoint.
Non-streaming (the mock answers whole bodies). Numbers on a shared 2-core machine are ratios,
not absolutes.

    uv run python bench/dialects.py [--rounds 15] [--per-round 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from overhead import REGISTRY, free_port, pct, wait_ready

ROOT = Path(__file__).resolve().parent.parent
MODEL = "openai/gpt-4o-mini"
PROMPT = "Say hello."
#: The same request in each API's shape.
TARGETS = {
    "chat": ("/v1/chat/completions",
             {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}),
    "responses": ("/v1/responses",
                  {"model": MODEL, "input": PROMPT, "max_output_tokens": 16, "store": False}),
    "responses+store": ("/v1/responses",
                        {"model": MODEL, "input": PROMPT, "max_output_tokens": 16}),
    "messages": ("/v1/messages",
                 {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "core" / "src"))
    from apimodels.billing.ledger import Ledger
    from apimodels.store.accounts import create_account, create_key
    from apimodels.store.db import open_db

    tmp = Path(tempfile.mkdtemp(prefix="apimodels-bench-"))
    up_port, port = free_port(), free_port()
    upstream, gateway = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{port}"
    env = {**os.environ, "MOCK_LATENCY": "0", "OPENAI_API_KEY": "sk-bench", "PYTHONHASHSEED": "0"}
    (tmp / "registry.toml").write_text(REGISTRY.format(upstream=upstream, billing="true"))
    db = open_db(tmp / "bench.db")
    account = create_account(db, "bench@example.com")["id"]
    _, key = create_key(db, account)
    Ledger(db).post(account, 10**12, kind="grant", reason="bench", actor="bench")
    db.conn.close()
    mock = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "mock_upstream:app",
            "--port", str(up_port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    serve = [sys.executable, "-m", "apimodels.cli", "--registry", str(tmp / "registry.toml"),
             "--db", str(tmp / "bench.db"), "serve", "--port", str(port), "--no-access-log"]  # fmt: skip
    procs = [
        subprocess.Popen(mock, env=env),
        subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    headers = {"authorization": f"Bearer {key}"}
    samples: dict[str, list[float]] = {name: [] for name in TARGETS}
    diffs: dict[str, list[float]] = {name: [] for name in TARGETS if name != "chat"}
    try:
        wait_ready(upstream + "/")
        wait_ready(gateway + "/health")
        with httpx.Client(base_url=gateway, headers=headers, timeout=10) as client:
            for _ in range(50):  # warm every path
                for path, body in TARGETS.values():
                    assert client.post(path, json=body).status_code == 200
            for _ in range(args.rounds):
                medians = {}
                for name, (path, body) in TARGETS.items():
                    times = []
                    for _ in range(args.per_round):
                        t0 = time.perf_counter()
                        r = client.post(path, json=body)
                        times.append(time.perf_counter() - t0)
                        assert r.status_code == 200, r.text
                    samples[name] += times
                    medians[name] = statistics.median(times)
                for name in diffs:
                    diffs[name].append(medians[name] - medians["chat"])
        print(f"{args.rounds} interleaved rounds x {args.per_round} requests per endpoint, "
              f"upstream latency 0 ms, billing on")  # fmt: skip
        for name, times in samples.items():
            added = (
                f"  added vs chat: median {statistics.median(diffs[name]) * 1000:.3f} ms"
                if name in diffs
                else ""
            )
            print(
                f"  {name:16} p50 {pct(times, 0.5) * 1000:.3f}  p90 {pct(times, 0.9) * 1000:.3f}"
                f"  p99 {pct(times, 0.99) * 1000:.3f} ms{added}"
            )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
