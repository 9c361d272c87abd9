"""The upstream client, chosen by measurement: the CPU time a client process spends per
call to the mock upstream (uvicorn on uvloop + httptools), 32 calls in flight, on uvloop as
the gateway runs. Three clients, in interleaved rounds:

- aiohttp (``ClientSession.post``, the body already JSON), what the gateway used before;
- httpx's ``AsyncClient`` on its default transport (httpcore, HTTP/1.1);
- the gateway's own ``UpstreamClient`` (``providers/http1.py``), sending the same
  ``httpx.Request`` a plugin builds and answering an ``httpx.Response``.

    uv run python bench/clients.py [--calls 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import uvloop
from overhead import PAYLOAD, ROOT, free_port, wait_ready

from apimodels import fastjson
from apimodels.catalog import ProviderConfig
from apimodels.providers.upstream import UpstreamClient

BODY = fastjson.dumps(PAYLOAD)
HEADERS = {"authorization": "Bearer sk-bench", "content-type": "application/json"}


async def _run(calls: int, one: Callable[[], Awaitable[None]]) -> float:
    """CPU seconds per call of this process for ``calls`` calls, 32 at a time."""
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    used = time.process_time()
    await asyncio.gather(*(worker() for _ in range(32)))
    return (time.process_time() - used) / calls


async def aiohttp_calls(url: str, calls: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as r:
                await r.read()
                assert r.status == 200

        await _run(64, one)
        return await _run(calls, one)


async def httpx_calls(url: str, calls: int) -> float:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one() -> None:
            r = await client.post(url, content=BODY, headers=HEADERS)
            assert r.status_code == 200

        await _run(64, one)
        return await _run(calls, one)


async def lean_calls(url: str, calls: int) -> float:
    client = UpstreamClient(ProviderConfig(package="bench", max_connections=32))
    target = httpx.URL(url)

    async def one() -> None:
        request = httpx.Request("POST", target, content=BODY, headers=HEADERS)
        r = await client.send(request)
        assert r.status_code == 200

    try:
        await _run(64, one)
        return await _run(calls, one)
    finally:
        await client.aclose()


CLIENTS = {"aiohttp": aiohttp_calls, "httpx": httpx_calls, "lean (http1.py)": lean_calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    mock = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools",
            "--app-dir", str(ROOT / "bench"), "mock_upstream:app", "--port", str(port),
            "--no-access-log", "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(mock, env={**os.environ, "MOCK_LATENCY": "0"})
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        wait_ready(f"http://127.0.0.1:{port}/")
        cpu: dict[str, list[float]] = {name: [] for name in CLIENTS}
        for i in range(args.rounds):
            for name in list(CLIENTS)[:: 1 if i % 2 else -1]:
                cpu[name].append(uvloop.run(CLIENTS[name](url, args.calls)))
        base = statistics.median(cpu["aiohttp"])
        print(f"client CPU per call, 32 in flight, median of {args.rounds} rounds:")
        for name, values in cpu.items():
            median = statistics.median(values)
            print(f"  {name:16} {median * 1e6:6.0f} us  ({median / base:.0%} of aiohttp's)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
