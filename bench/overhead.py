"""Gateway overhead benchmark: the same client against a fixed-latency upstream, directly and
through the gateway.

Three targets: the upstream directly, the gateway with billing (holds, charges and usage
rows in SQLite), and the same gateway with ``gateway.billing = false``. Measures in one run:
  (a) sequential added latency for non-streaming chat: interleaved rounds over the targets,
      the median of each round's per-request medians, the added latency reported as the
      median of round differences against direct, plus p50/p90/p99 of each target;
  (b) requests per second at 32 concurrent connections for each target, in interleaved
      rounds (the order alternating), the median of each target and the median of the
      rounds' billing on / off ratios, the success rate, and the gateway's RSS; and the
      gateway's CPU time per request (from /proc), the steadier figure on a shared machine:
      at saturation, throughput is the inverse of it;
  (c) both gateways loaded at the same time, 32 connections each, so that they share the
      machine's slow and fast moments: the ratio of their request rates is the steadiest
      figure of what billing costs.

The upstream, the gateway and the client each run in their own process. Numbers on a shared
2-core machine are ratios, not absolutes.

    uv run python bench/overhead.py [--rounds 15] [--per-round 200] [--seconds 1] [--load-rounds 15]
                                    [--together-rounds 5]
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
billing = {billing}

[policies.rules]  # the default safety policy, as registry.toml enables it
enabled = true

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


def wait_ready(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def funded_key(path: Path | str) -> str:
    """A new database at ``path`` (a file or a PostgreSQL URL) with one account holding $1,000,000 of credits: its key."""
    from apimodels.billing.ledger import Ledger
    from apimodels.store.accounts import create_account, create_key
    from apimodels.store.db import open_db

    db = open_db(path)
    account = create_account(db, "bench@example.com")["id"]
    _, key = create_key(db, account)
    Ledger(db).post(account, 10**12, kind="grant", reason="bench", actor="bench")
    db.conn.close()
    return key


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(times: list[float]) -> dict[str, float]:
    return {q: pct(times, p) * 1000 for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}


def sequential(targets: dict[str, tuple[str, dict]], rounds: int, per_round: int) -> dict:
    """Interleaved rounds over every target; added latency of each against ``direct``."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    diffs: dict[str, list[float]] = {name: [] for name in targets if name != "direct"}
    with httpx.Client(timeout=10) as client:
        for _ in range(20):  # warm every path and its connection pools
            for url, headers in targets.values():
                client.post(url, json=PAYLOAD, headers=headers)
        for _ in range(rounds):
            medians = {}
            for name, (url, headers) in targets.items():
                times = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    r = client.post(url, json=PAYLOAD, headers=headers)
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
                samples[name] += times
                medians[name] = statistics.median(times)
            for name in diffs:
                diffs[name].append(medians[name] - medians["direct"])
    return {
        name: {
            **_summary(samples[name]),
            "added_median": statistics.median(diffs[name]) * 1000 if name in diffs else 0.0,
            "added_p99": (pct(samples[name], 0.99) - pct(samples["direct"], 0.99)) * 1000,
        }
        for name in targets
    }


async def _load(
    url: str, headers: dict, concurrency: int, seconds: float
) -> tuple[float, float, int]:
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
    return ok / elapsed, ok / max(1, ok + failed), ok + failed


async def _together(
    targets: dict[str, tuple[str, dict]], concurrency: int, seconds: float
) -> dict[str, tuple[float, float, int]]:
    """``_load`` on several targets at once, from one client process."""
    names = list(targets)
    loads = [_load(*targets[name], concurrency, seconds) for name in names]
    return dict(zip(names, await asyncio.gather(*loads), strict=True))


def start_mock(latency: float) -> tuple[str, dict[str, str], subprocess.Popen[bytes]]:
    """The mock upstream in a process of its own: its URL, the environment every process of
    the benchmark runs with, and the process."""
    port = free_port()
    # One hash seed for every process: string hashing then costs the same in each gateway.
    env = {**os.environ, "MOCK_LATENCY": str(latency), "OPENAI_API_KEY": "sk-bench",
           "PYTHONHASHSEED": "0"}  # fmt: skip
    mock = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "mock_upstream:app",
            "--port", str(port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    return f"http://127.0.0.1:{port}", env, subprocess.Popen(mock, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="duration of each throughput run"
    )
    parser.add_argument("--load-rounds", type=int, default=15, help="throughput rounds")
    parser.add_argument(
        "--together-rounds", type=int, default=5, help="rounds of 2 s with both gateways loaded"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.0, help="upstream latency in seconds")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "core" / "src"))

    tmp = Path(tempfile.mkdtemp(prefix="apimodels-bench-"))
    upstream, env, mock = start_mock(args.latency)
    procs = {"upstream": mock}
    targets: dict[str, tuple[str, dict]] = {
        "direct": (upstream + "/v1/chat/completions", {"authorization": "Bearer sk-bench"})
    }
    for name, billing in (("billing", True), ("no-billing", False)):
        folder = tmp / name
        folder.mkdir()
        (folder / "registry.toml").write_text(
            REGISTRY.format(upstream=upstream, billing=str(billing).lower())
        )
        key = funded_key(folder / "bench.db")
        port = free_port()
        serve = [sys.executable, "-m", "apimodels.cli", "--registry", str(folder / "registry.toml"),
                 "--db", str(folder / "bench.db"), "serve", "--port", str(port), "--no-access-log"]  # fmt: skip
        procs[name] = subprocess.Popen(
            serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        targets[name] = (
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"authorization": f"Bearer {key}"},
        )
    try:
        wait_ready(upstream + "/")
        for url, _ in targets.values():
            wait_ready(url.replace("/v1/chat/completions", "/health"))
        seq = sequential(targets, args.rounds, args.per_round)
        print(f"sequential: {args.rounds} interleaved rounds x {args.per_round} requests per target, "
              f"upstream latency {args.latency * 1000:.0f} ms")  # fmt: skip
        for name, s in seq.items():
            added = "" if name == "direct" else (
                f"  added: median {s['added_median']:.3f} ms, p99 {s['added_p99']:.3f} ms")  # fmt: skip
            print(
                f"  {name:10} p50 {s['p50']:.3f}  p90 {s['p90']:.3f}  p99 {s['p99']:.3f} ms{added}"
            )
        print(
            f"throughput: {args.concurrency} connections, {args.load_rounds} interleaved rounds"
            f" of {args.seconds:g} s per target (median)"
        )
        rates: dict[str, list[float]] = {name: [] for name in targets}
        success: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        ratios = []
        for i in range(args.load_rounds):
            # Alternate the order, so neither gateway always runs right after the other.
            for name in sorted(targets, reverse=bool(i % 2)):
                url, headers = targets[name]
                pid = procs["upstream" if name == "direct" else name].pid
                used = cpu_seconds(pid)
                rps, ok, n = asyncio.run(_load(url, headers, args.concurrency, args.seconds))
                cpu[name].append((cpu_seconds(pid) - used) / n)
                rates[name].append(rps)
                success[name].append(ok)
            ratios.append(rates["billing"][-1] / rates["no-billing"][-1])
        for name in targets:
            rss = f", RSS {rss_mb(procs[name].pid):.0f} MB" if name != "direct" else ""
            print(
                f"  {name:10} {statistics.median(rates[name]):8.0f} req/s,"
                f" {statistics.median(cpu[name]) * 1e6:5.0f} us CPU per request,"
                f" success {min(success[name]):.2%}{rss}"
            )
        spread = f"rounds {min(ratios):.1%}-{max(ratios):.1%}"
        print(f"  billing on / off: {statistics.median(ratios):.1%} (median of rounds; {spread})")
        cpu_ratio = statistics.median(cpu["no-billing"]) / statistics.median(cpu["billing"])
        print(f"  billing on / off by the gateway's CPU per request: {cpu_ratio:.1%}")
        gateways = {name: targets[name] for name in ("billing", "no-billing")}
        together: list[float] = []
        for _ in range(args.together_rounds):
            results = asyncio.run(_together(gateways, args.concurrency, 2.0))
            (on, ok_on, _), (off, ok_off, _) = results["billing"], results["no-billing"]
            assert min(ok_on, ok_off) == 1.0, results
            together.append(on / off)
        if together:
            print(
                f"  both loaded at once, {args.concurrency} connections each: billing on / off"
                f" {statistics.median(together):.1%} (median of {len(together)} rounds of 2 s;"
                f" rounds {min(together):.1%}-{max(together):.1%})"
            )
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
