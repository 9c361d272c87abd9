"""Storage benchmark: what keeping outputs costs.

- signed URL: microseconds to sign one local URL and to presign one S3 URL (no I/O; done
  each time a task is read, so it is on the read path);
- local put: MiB/s writing a streamed 64 MiB output (temp file, fsync, rename), and small
  objects (100 KiB images) per second;
- download: MiB/s fetching that output through the gateway's /v1/files route over HTTP.

    uv run python bench/storage.py [--mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from apimodels.server import assemble
from apimodels.storage import LocalStorage
from apimodels.storage.s3 import S3Storage
from apimodels.testing import serve

SECRET = b"bench-secret-0123456789abcdef-0123"
ROOT = Path(__file__).resolve().parents[1]


def per_call_us(fn, n: int = 20000) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


async def chunked(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    block = os.urandom(size)
    for _ in range(total // size):
        yield block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="size of the large output")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalStorage(Path(tmp) / "out", SECRET)
        key = local.object_key("acct_bench", "task_bench", 0, "mp4")
        s3 = S3Storage(
            SECRET,
            endpoint_url="http://127.0.0.1:9",  # never contacted: presigning is local
            bucket="bench",
            access_key_id="AKIABENCH",
            secret_access_key="bench",
        )
        print(f"sign a local URL      {per_call_us(lambda i: local.url(key)):8.1f} us")
        print(f"presign an S3 URL     {per_call_us(lambda i: s3.url(key), 2000):8.1f} us")

        total = args.mib * 1024 * 1024
        start = time.perf_counter()
        asyncio.run(local.put(key, chunked(total), "video/mp4"))
        print(
            f"local put, streamed   {args.mib / (time.perf_counter() - start):8.0f} MiB/s ({args.mib} MiB)"
        )

        image = os.urandom(100 * 1024)

        async def many(n: int) -> None:
            for i in range(n):
                await local.put(
                    local.object_key("acct_bench", f"task_{i}", 0, "png"), image, "image/png"
                )

        start = time.perf_counter()
        asyncio.run(many(200))
        print(f"local put, 100 KiB    {200 / (time.perf_counter() - start):8.0f} objects/s")

        server = assemble(ROOT / "registry.toml", Path(tmp) / "bench.db")
        assert isinstance(server.storage, LocalStorage)
        big = server.storage.object_key("acct_bench", "task_dl", 0, "mp4")
        asyncio.run(server.storage.put(big, chunked(total), "video/mp4"))
        with serve(server.app) as url, httpx.Client() as client:
            rates = []
            for _ in range(3):
                start = time.perf_counter()
                with client.stream("GET", url + server.storage.url(big)) as r:
                    got = sum(len(c) for c in r.iter_bytes())
                assert r.status_code == 200 and got == total
                rates.append(args.mib / (time.perf_counter() - start))
        print(f"download via gateway  {statistics.median(rates):8.0f} MiB/s (median of 3)")


if __name__ == "__main__":
    main()
