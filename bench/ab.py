"""A/B of the gateway's CPU per request: this working tree against a git commit, in one run.

Both gateways serve the same mock upstream (uvicorn on uvloop + httptools), each from its
own source: the old one from ``git archive REF`` of ``core/src`` and the plugins' ``src``
folders, put first on its ``PYTHONPATH``. Interleaved rounds (the order alternating) of a
fixed number of calls at a fixed concurrency; each round's CPU per request is the server
process's own (every thread, ``side_by_side.cpu_time``) over the calls it answered. Prints
the median of each side and the median and range of the rounds' new/old ratios: a cut is
kept when the ratio is below 1 by more than the rounds spread. ``--together`` loads both
sides at once in each round (half the connections each), so that both meet the same
moments of a shared machine: the steadier ratio for small cuts.

    uv run python bench/ab.py [--old HEAD] [--billing | --no-billing] [--rounds 10]
        [--calls 3000] [--concurrency 32] [--stream] [--together]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import PAYLOAD, REGISTRY, ROOT, free_port, funded_key, start_mock, wait_ready
from side_by_side import calls, cpu_time

STREAM = {**PAYLOAD, "stream": True}


def old_tree(ref: str, into: Path) -> list[str]:
    """The Python source folders of commit ``ref``, extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "core/src", "plugins"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return [str(into / "core" / "src"), *map(str, sorted((into / "plugins").glob("*/src")))]


def gateway(folder: Path, upstream: str, billing: bool, env: dict[str, str]) -> tuple:
    folder.mkdir()
    registry = folder / "registry.toml"
    registry.write_text(REGISTRY.format(upstream=upstream, billing=str(billing).lower()))
    key = funded_key(folder / "bench.db")
    port = free_port()
    serve = [sys.executable, "-m", "apimodels.cli", "--registry", str(registry),
             "--db", str(folder / "bench.db"), "serve", "--port", str(port),
             "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}", {"authorization": f"Bearer {key}"}


async def both(sides: dict, concurrency: int, total: int, body: dict) -> None:
    await asyncio.gather(
        *(
            calls(url + "/v1/chat/completions", headers, concurrency, total, body)
            for _, url, headers in sides.values()
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", default="HEAD", help="the git commit to compare against")
    parser.add_argument("--billing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=3000, help="calls per round and side")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true", help="streamed calls (16 chunks)")
    parser.add_argument(
        "--together", action="store_true", help="load both sides at once in each round"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "core" / "src"))

    tmp = Path(tempfile.mkdtemp(prefix="apimodels-ab-"))
    if args.stream:
        os.environ["MOCK_GAP"] = "0.001"  # each chunk its own read, without long waits
    upstream, env, mock = start_mock(0.0)
    procs = [mock]
    try:
        (tmp / "old-src").mkdir()
        old_path = old_tree(args.old, tmp / "old-src")
        old_env = {**env, "PYTHONPATH": os.pathsep.join(old_path)}
        sides = {}
        for name, side_env in (("old", old_env), ("new", env)):
            proc, url, headers = gateway(tmp / name, upstream, args.billing, side_env)
            procs.append(proc)
            sides[name] = (proc.pid, url, headers)
        wait_ready(upstream + "/")
        for _, url, _ in sides.values():
            wait_ready(url + "/health")
        body = STREAM if args.stream else PAYLOAD
        total = args.calls // 16 if args.stream else args.calls
        for _, url, headers in sides.values():  # warm up
            asyncio.run(calls(url + "/v1/chat/completions", headers, args.concurrency, 300, body))
        cpu: dict[str, list[float]] = {"old": [], "new": []}
        for i in range(args.rounds):
            if args.together:  # the same moments of the machine for both
                used = {name: cpu_time(pid) for name, (pid, _, _) in sides.items()}
                asyncio.run(both(sides, args.concurrency // 2, total, body))
                for name, (pid, _, _) in sides.items():
                    cpu[name].append((cpu_time(pid) - used[name]) / total)
                continue
            for name in ("old", "new") if i % 2 else ("new", "old"):
                pid, url, headers = sides[name]
                used = cpu_time(pid)
                asyncio.run(
                    calls(url + "/v1/chat/completions", headers, args.concurrency, total, body)
                )
                cpu[name].append((cpu_time(pid) - used) / total)
        ratios = [n / o for n, o in zip(cpu["new"], cpu["old"], strict=True)]
        print(
            json.dumps(
                {
                    "old": args.old,
                    "billing": args.billing,
                    "stream": args.stream,
                    "together": args.together,
                    "old_cpu_us": round(statistics.median(cpu["old"]) * 1e6, 1),
                    "new_cpu_us": round(statistics.median(cpu["new"]) * 1e6, 1),
                    "new_over_old": round(statistics.median(ratios), 3),
                    "rounds": [round(min(ratios), 3), round(max(ratios), 3)],
                    "load": os.getloadavg()[0],
                    "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                }
            )
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
