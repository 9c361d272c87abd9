"""Workers benchmark: requests per second at 32 connections through one gateway process and
through ``apimodels serve --workers 2``, billing on, on SQLite and on PostgreSQL.

Each gateway has its own database (a file, or a database on a throwaway PostgreSQL cluster
started here: fsync on, ``synchronous_commit = off`` like SQLite's ``synchronous = NORMAL``
in WAL: a crash of the machine may lose the last transactions, never corrupt); the mock
upstream answers at once (or after ``--latency``). Rounds are interleaved (the order alternating) so both see the machine's
slow and fast moments; the figures are the medians of the rounds, with the CPU time per
request of each gateway's whole process tree (its supervisor and workers). On a 2-core
machine the client and the upstream take their share of the cores too: the ratio, not the
absolute rate, is the figure to read.

    uv run python bench/workers.py [--rounds 10] [--seconds 2] [--workers 2] [--latency 0]
                                   [--backend both|sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from overhead import (
    REGISTRY,
    _load,
    cpu_seconds,
    free_port,
    funded_key,
    start_mock,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent


def tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += tree(int(child))
    return found


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):  # ended meanwhile
            total += cpu_seconds(p)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each run")
    parser.add_argument("--workers", type=int, default=2, help="the second gateway's workers")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.0, help="upstream latency in seconds")
    parser.add_argument("--backend", choices=("both", "sqlite", "postgresql"), default="both")
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    with contextlib.ExitStack() as stack:
        cluster = None
        if "postgresql" in backends:
            from apimodels.testing.postgres import Cluster

            cluster = stack.enter_context(Cluster.start(durable=True))
        run(args, backends, cluster)


def database(cluster: Any, backend: str, folder: Path) -> str:
    if backend == "sqlite":
        return str(folder / "bench.db")
    import psycopg

    url = cluster.new_database()
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET synchronous_commit = off')
    return url


def run(args: argparse.Namespace, backends: tuple[str, ...], cluster: Any) -> None:
    sys.path.insert(0, str(ROOT / "core" / "src"))
    tmp = Path(tempfile.mkdtemp(prefix="apimodels-workers-"))
    upstream, env, mock = start_mock(args.latency)
    procs = {"upstream": mock}
    targets: dict[str, tuple[str, dict]] = {}
    for backend, workers in [(b, w) for b in backends for w in (1, args.workers)]:
        name = f"{backend}, {workers} worker" + ("s" if workers > 1 else "")
        folder = tmp / f"{backend}{workers}"
        folder.mkdir()
        (folder / "registry.toml").write_text(REGISTRY.format(upstream=upstream, billing="true"))
        db = database(cluster, backend, folder)
        key = funded_key(db)
        port = free_port()
        serve = [sys.executable, "-m", "apimodels.cli", "--registry", str(folder / "registry.toml"),
                 "--db", db, "serve", "--port", str(port), "--no-access-log",
                 "--workers", str(workers)]  # fmt: skip
        procs[name] = subprocess.Popen(
            serve, env=env, stdout=subprocess.DEVNULL, stderr=(folder / "stderr.log").open("w")
        )
        targets[name] = (
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"authorization": f"Bearer {key}"},
        )
    try:
        wait_ready(upstream + "/")
        for url, _ in targets.values():
            wait_ready(url.replace("/v1/chat/completions", "/health/ready"))
        for url, headers in targets.values():  # warm every worker's pools and caches
            asyncio.run(_load(url, headers, args.concurrency, 1.0))
        rates: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        success: dict[str, list[float]] = {name: [] for name in targets}
        for r in range(args.rounds):
            for name in targets if r % 2 == 0 else reversed(targets):
                before = tree_cpu(procs[name].pid)
                rate, ok, count = asyncio.run(_load(*targets[name], args.concurrency, args.seconds))
                cpu[name].append((tree_cpu(procs[name].pid) - before) / max(count, 1) * 1e6)
                rates[name].append(rate)
                success[name].append(ok)
        print(
            f"{args.concurrency} connections, billing on, {args.rounds} interleaved rounds "
            f"of {args.seconds:g} s, upstream latency {args.latency * 1000:.0f} ms, "
            f"{os.cpu_count()} cores"
        )
        for name in targets:
            print(
                f"  {name:22} {statistics.median(rates[name]):7.0f} req/s, "
                f"{statistics.median(cpu[name]):4.0f} us CPU per request, "
                f"success {min(success[name]) * 100:.2f}%"
            )
        names = list(targets)
        pairs = [(names[i + 1], names[i]) for i in range(0, len(names), 2)]
        if len(backends) == 2:
            pairs += [(names[2], names[0]), (names[3], names[1])]
        for many, one in pairs:
            ratios = [b / a for a, b in zip(rates[one], rates[many], strict=True)]
            print(
                f"  {many} / {one}: {statistics.median(ratios):.2f}x "
                f"(median of rounds; {min(ratios):.2f}x-{max(ratios):.2f}x)"
            )
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
