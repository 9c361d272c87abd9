"""Side by side, in one run: the mock upstream called directly (uvicorn on uvloop +
httptools, the fast baseline), the gateway with billing on and off (the default ``rules``
policy on), and LiteLLM's proxy when its virtualenv is given (``bench/litellm/install.sh``).

For each: the added median and p99 latency of a chat call at one connection (interleaved
rounds, the direct call subtracted), requests per second at 32 connections and the CPU
time each request cost its server process (interleaved rounds; on a shared machine the
CPU per request is the steady figure, and its ratio to the direct mock's, measured in the
same rounds, the one to compare across machines), RSS, and for streams the added time to
the first byte and the added gap between chunks (the mock sends 16 deltas 10 ms apart).
``--leak-calls N`` then sends N more calls to the billing gateway and reports its RSS after
a warm-up and at the end (no growth: no leak). Prints a Markdown table (docs/performance.md).

``--guard N`` measures only the CPU per request of the billing gateway and of the direct
mock (N requests each, at 16 connections, 3 interleaved rounds) and prints their ratio as
JSON: what ``make bench`` prints first and tests/test_performance.py checks.

    uv run python bench/side_by_side.py [--litellm VENV] [--rounds 10] [--per-round 200]
        [--load-rounds 8] [--seconds 1.5] [--streams 20] [--leak-calls 100000]
    uv run python bench/side_by_side.py --guard 3000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from overhead import (
    PAYLOAD,
    REGISTRY,
    ROOT,
    _load,
    free_port,
    funded_key,
    rss_mb,
    sequential,
    wait_ready,
)

STREAM = {**PAYLOAD, "stream": True}
LITELLM_CONFIG = """
model_list:
  - model_name: openai/gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream}/v1
      api_key: sk-bench
"""
Target = tuple[str, dict[str, str]]


class Servers:
    """The mock, the gateways and LiteLLM, each in its own process."""

    def __init__(self, billing_off: bool = True, litellm: Path | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="apimodels-sbs-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.targets: dict[str, Target] = {}
        port = free_port()
        self.upstream = f"http://127.0.0.1:{port}"
        # One hash seed for every process: string hashing then costs the same in each.
        self.env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "PYTHONHASHSEED": "0"}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        mock = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools",
                "--app-dir", str(ROOT / "bench"), "mock_upstream:app", "--port", str(port),
                "--no-access-log", "--log-level", "warning"]  # fmt: skip
        self.procs["direct"] = subprocess.Popen(mock, env=self.env, **quiet)
        self.targets["direct"] = (
            f"{self.upstream}/v1/chat/completions",
            {"authorization": "Bearer sk-bench"},
        )
        gateways = (
            [("billing", True), ("no-billing", False)] if billing_off else [("billing", True)]
        )
        for name, billing in gateways:
            folder = self.tmp / name
            folder.mkdir()
            registry = folder / "registry.toml"
            registry.write_text(
                REGISTRY.format(upstream=self.upstream, billing=str(billing).lower())
            )
            key = funded_key(folder / "bench.db")
            port = free_port()
            serve = [sys.executable, "-m", "apimodels.cli", "--registry", str(registry),
                     "--db", str(folder / "bench.db"), "serve", "--port", str(port),
                     "--no-access-log"]  # fmt: skip
            self.procs[name] = subprocess.Popen(serve, env=self.env, **quiet)
            self.targets[name] = (
                f"http://127.0.0.1:{port}/v1/chat/completions",
                {"authorization": f"Bearer {key}"},
            )
        if litellm is not None:
            config = self.tmp / "litellm.yaml"
            config.write_text(LITELLM_CONFIG.format(upstream=self.upstream))
            port = free_port()
            command = [str(litellm / "bin" / "litellm"), "--config", str(config),
                       "--port", str(port), "--num_workers", "1"]  # fmt: skip
            # Offline: LiteLLM fetches its cost map and other catalogs from GitHub at startup
            # otherwise (its docs, "Outbound Requests and Offline Mode"); nothing here may
            # leave 127.0.0.1.
            offline = {"LITELLM_OFFLINE_MODE": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "true"}
            # Its proxy refuses to start without a master key: every call authenticated, as
            # the gateway's are.
            master = f"sk-bench-{secrets.token_hex(16)}"
            env = {**self.env, **offline, "LITELLM_MASTER_KEY": master}
            self.procs["litellm"] = subprocess.Popen(command, env=env, **quiet)
            self.targets["litellm"] = (
                f"http://127.0.0.1:{port}/v1/chat/completions",
                {"authorization": f"Bearer {master}"},
            )

    def wait(self) -> None:
        wait_ready(self.upstream + "/")
        for name, (url, _) in self.targets.items():
            if name == "litellm":
                wait_ready(url.replace("/v1/chat/completions", "/health/liveliness"), 180)
            elif name != "direct":
                wait_ready(url.replace("/v1/chat/completions", "/health"))

    def close(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def load_rounds(
    servers: Servers, rounds: int, seconds: float, concurrency: int
) -> dict[str, dict[str, float]]:
    """Interleaved rounds (the order alternating): median requests/s, CPU per request,
    and CPU per request over the direct mock's (median of the rounds' ratios)."""
    names = list(servers.targets)
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # warm every path
        asyncio.run(_load(*servers.targets[name], concurrency, 0.5))
    for i in range(rounds):
        for name in names if i % 2 else reversed(names):
            pid = servers.procs[name].pid
            used = cpu_time(pid)
            rps, ok, n = asyncio.run(_load(*servers.targets[name], concurrency, seconds))
            assert ok == 1.0, f"{name}: {ok:.2%} of calls succeeded"
            cpu[name].append((cpu_time(pid) - used) / n)
            rates[name].append(rps)
    return {
        n: {
            "rps": statistics.median(rates[n]),
            "cpu_us": statistics.median(cpu[n]) * 1e6,
            "cpu_ratio": statistics.median(
                c / d for c, d in zip(cpu[n], cpu["direct"], strict=True)
            ),
        }
        for n in names
    }


def streams(servers: Servers, count: int) -> dict[str, dict[str, float]]:
    """Interleaved streamed calls: median time to the first body byte, and the median gap
    between chunks, added over the direct call's."""
    first: dict[str, list[float]] = {n: [] for n in servers.targets}
    gaps: dict[str, list[float]] = {n: [] for n in servers.targets}
    with httpx.Client(timeout=30) as client:
        for i in range(count + 2):
            for name, (url, headers) in servers.targets.items():
                t0 = time.perf_counter()
                arrivals = []
                with client.stream("POST", url, json=STREAM, headers=headers) as r:
                    assert r.status_code == 200, r.read()
                    for chunk in r.iter_raw():
                        if chunk.strip():
                            arrivals.append(time.perf_counter())
                if i < 2:
                    continue  # warm-up
                first[name].append(arrivals[0] - t0)
                # the deltas' gaps (the last arrival holds the usage and the end)
                between = [b - a for a, b in itertools.pairwise(arrivals[1:-1])]
                gaps[name].append(statistics.median(between) if between else float("nan"))
    base_first = statistics.median(first["direct"])
    base_gap = statistics.median(gaps["direct"])
    return {
        n: {
            "first_ms": (statistics.median(first[n]) - base_first) * 1000,
            "gap_ms": (statistics.median(gaps[n]) - base_gap) * 1000,
        }
        for n in servers.targets
    }


async def calls(
    url: str, headers: dict[str, str], concurrency: int, total: int, body: dict = PAYLOAD
) -> None:
    """Exactly ``total`` calls of ``body`` over ``concurrency`` connections (all must
    succeed)."""
    left = total
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, json=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def leak_check(servers: Servers, count: int) -> tuple[float, float, float]:
    """RSS of the billing gateway after a warm-up of a tenth of ``count`` calls, then after
    all of them, and the most it reached at any tenth (MB)."""
    url, headers = servers.targets["billing"]
    pid = servers.procs["billing"].pid
    tenth = max(1, count // 10)
    asyncio.run(calls(url, headers, 32, tenth))
    warm = rss_mb(pid)
    peak = warm
    for _ in range(9):
        asyncio.run(calls(url, headers, 32, tenth))
        peak = max(peak, rss_mb(pid))
    return warm, rss_mb(pid), peak


def cpu_time(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` so far, to the nanosecond (the scheduler's
    count; /proc's stat counts in 10 ms ticks, too coarse for a short check)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def guard(requests: int) -> dict[str, float]:
    """CPU per request of the billing gateway and of the direct mock, same rounds."""
    servers = Servers(billing_off=False)
    try:
        servers.wait()
        cpu: dict[str, list[float]] = {n: [] for n in servers.targets}
        for target in servers.targets.values():  # warm up
            asyncio.run(calls(*target, 16, 200))
        for i in range(3):
            for name in list(servers.targets)[:: 1 if i % 2 else -1]:
                pid = servers.procs[name].pid
                used = cpu_time(pid)
                asyncio.run(calls(*servers.targets[name], 16, requests))
                cpu[name].append((cpu_time(pid) - used) / requests)
        gateway, direct = statistics.median(cpu["billing"]), statistics.median(cpu["direct"])
        return {
            "gateway_cpu_us": gateway * 1e6,
            "direct_cpu_us": direct * 1e6,
            "ratio": statistics.median(
                g / d for g, d in zip(cpu["billing"], cpu["direct"], strict=True)
            ),
        }
    finally:
        servers.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--litellm", type=Path, help="a virtualenv with LiteLLM's proxy")
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds")
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument("--load-rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.5, help="per throughput round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--streams", type=int, default=20, help="streamed calls per target")
    parser.add_argument("--leak-calls", type=int, default=0, help="calls for the RSS check")
    parser.add_argument("--guard", type=int, default=0, help="only the CPU-per-request ratio")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "core" / "src"))

    if args.guard:
        print(json.dumps(guard(args.guard)))
        return
    servers = Servers(litellm=args.litellm)
    try:
        servers.wait()
        latency = sequential(servers.targets, args.rounds, args.per_round)
        load = load_rounds(servers, args.load_rounds, args.seconds, args.concurrency)
        stream = streams(servers, args.streams)
        rss = {n: rss_mb(servers.procs[n].pid) for n in servers.targets}
        print(f"| {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores | added median | added p99 |"
              f" req/s at {args.concurrency} | CPU/request | x direct | RSS |"
              " stream first byte added | chunk gap added |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for name in servers.targets:
            lat, ld, st = latency[name], load[name], stream[name]
            added = "-" if name == "direct" else f"{lat['added_median']:.2f} ms"
            added99 = "-" if name == "direct" else f"{lat['added_p99']:.2f} ms"
            first = "-" if name == "direct" else f"{st['first_ms']:.2f} ms"
            gap = "-" if name == "direct" else f"{st['gap_ms']:.3f} ms"
            print(f"| {name} | {added} | {added99} | {ld['rps']:.0f} | {ld['cpu_us']:.0f} us |"
                  f" {ld['cpu_ratio']:.1f} | {rss[name]:.0f} MB | {first} | {gap} |")  # fmt: skip
        print(f"(the direct call at one connection: p50 {latency['direct']['p50']:.3f} ms,"
              f" p99 {latency['direct']['p99']:.3f} ms)")  # fmt: skip
        if args.leak_calls:
            warm, end, peak = leak_check(servers, args.leak_calls)
            print(f"RSS of the billing gateway over {args.leak_calls} more calls: {warm:.1f} MB"
                  f" after a tenth, {end:.1f} MB at the end (peak {peak:.1f} MB)")  # fmt: skip
    finally:
        servers.close()


if __name__ == "__main__":
    main()
