"""Gateway overhead benchmark: the same client against a fixed-latency upstream, directly and
through the gateway.

Measures in one run:
  (a) sequential added latency for non-streaming chat: interleaved rounds (direct, then
      gateway), the median of each round's per-request medians, difference reported as the
      median of round differences, plus p90/p99 of each side;
  (b) requests per second at 32 concurrent connections, direct vs through the gateway, and
      the success rate.

The upstream, the gateway and the client each run in their own process. Numbers on a shared
2-core machine are ratios, not absolutes.

    uv run python bench/overhead.py [--rounds 15] [--per-round 200] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = {
    "model": "openai/gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}

REGISTRY = """
[gateway]
key_cache_seconds = 5

[providers.openai]
package = "apimodels-openai"
base_url = "{upstream}/v1"
max_retries = 0

[models."openai/gpt-4o-mini"]
provider = "openai"
upstream = "gpt-4o-mini"
modality = "chat"
max_output_tokens = 16384
pricing = {{ input_per_1m = "0.15", cached_input_per_1m = "0.075", output_per_1m = "0.60" }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential(
    direct: tuple[str, dict], gateway: tuple[str, dict], rounds: int, per_round: int
) -> dict:
    samples: dict[str, list[float]] = {"direct": [], "gateway": []}
    diffs = []
    with httpx.Client(timeout=10) as client:
        for _ in range(20):  # warm both paths and their connection pools
            client.post(direct[0], json=PAYLOAD, headers=direct[1])
            client.post(gateway[0], json=PAYLOAD, headers=gateway[1])
        for _ in range(rounds):
            medians = {}
            for name, (url, headers) in (("direct", direct), ("gateway", gateway)):
                times = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    r = client.post(url, json=PAYLOAD, headers=headers)
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
                samples[name] += times
                medians[name] = statistics.median(times)
            diffs.append(medians["gateway"] - medians["direct"])
    ms = 1000
    return {
        "added_median_ms": statistics.median(diffs) * ms,
        "added_p99_ms": (pct(samples["gateway"], 0.99) - pct(samples["direct"], 0.99)) * ms,
        "direct": {
            q: pct(samples["direct"], p) * ms
            for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
        "gateway": {
            q: pct(samples["gateway"], p) * ms
            for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
    }


async def _load(url: str, headers: dict, concurrency: int, seconds: float) -> tuple[float, float]:
    """Closed-loop load: ``concurrency`` workers, each sending its next request on an answer.

    The load client is aiohttp: httpx's own pool collapses at 32 concurrent connections and
    would measure itself rather than the server.
    """
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal ok, failed
            while time.perf_counter() < stop:
                try:
                    async with session.post(url, json=PAYLOAD, headers=headers) as r:
                        await r.read()
                        ok += r.status == 200
                        failed += r.status != 200
                except aiohttp.ClientError:
                    failed += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return ok / elapsed, ok / max(1, ok + failed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="duration of each throughput run"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.0, help="upstream latency in seconds")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "core" / "src"))
    from apimodels.accounts import create_account, create_key
    from apimodels.db import open_db

    tmp = Path(tempfile.mkdtemp(prefix="apimodels-bench-"))
    up_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    (tmp / "registry.toml").write_text(REGISTRY.format(upstream=upstream))
    db = open_db(tmp / "bench.db")
    create_account(db, "bench@example.com")
    _, key = create_key(db, "bench@example.com")
    db.conn.close()

    env = {**os.environ, "MOCK_LATENCY": str(args.latency), "OPENAI_API_KEY": "sk-bench"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(ROOT / "bench"),
                "mock_upstream:app",
                "--port",
                str(up_port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apimodels.cli",
                "--registry",
                str(tmp / "registry.toml"),
                "--db",
                str(tmp / "bench.db"),
                "serve",
                "--port",
                str(gw_port),
                "--no-access-log",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_ready(upstream + "/")
        wait_ready(f"http://127.0.0.1:{gw_port}/health")
        direct = (upstream + "/v1/chat/completions", {"authorization": "Bearer sk-bench"})
        gateway = (
            f"http://127.0.0.1:{gw_port}/v1/chat/completions",
            {"authorization": f"Bearer {key}"},
        )
        seq = sequential(direct, gateway, args.rounds, args.per_round)
        print(
            f"sequential, {args.rounds} rounds x {args.per_round} requests, upstream latency {args.latency * 1000:.0f} ms"
        )
        for side in ("direct", "gateway"):
            s = seq[side]
            print(f"  {side:8} p50 {s['p50']:.3f} ms  p90 {s['p90']:.3f} ms  p99 {s['p99']:.3f} ms")
        print(
            f"  added latency: median of round medians {seq['added_median_ms']:.3f} ms, p99 {seq['added_p99_ms']:.3f} ms"
        )
        d_rps, d_ok = asyncio.run(_load(*direct, args.concurrency, args.seconds))
        g_rps, g_ok = asyncio.run(_load(*gateway, args.concurrency, args.seconds))
        print(f"throughput at {args.concurrency} connections, {args.seconds:.0f} s each")
        print(f"  direct   {d_rps:8.0f} req/s  success {d_ok:.2%}")
        print(f"  gateway  {g_rps:8.0f} req/s  success {g_ok:.2%}  ({g_rps / d_rps:.0%} of direct)")
        print(f"  gateway RSS {rss_mb(procs[1].pid):.0f} MB")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
