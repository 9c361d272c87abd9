"""Gateways run as the operator runs them: ``apimodels serve`` in processes of their own, on
a database file they share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

from support import REPLICATE_KEY, SIM_KEY

#: How a server that shut down cleanly on SIGTERM exits: uvicorn raises the signal again
#: once its shutdown is done, as a process without a handler would end.
STOPPED = (0, -signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apimodels(registry: Path, db: Path, *args: str) -> list[str]:
    """The command line of the ``apimodels`` CLI on this registry and database."""
    base = [sys.executable, "-m", "apimodels.cli", "--registry", str(registry), "--db", str(db)]
    return [*base, *args]


def cli(registry: Path, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        apimodels(registry, db, *args), capture_output=True, text=True, timeout=60
    )


class Served:
    """One ``apimodels serve`` (its supervisor, with ``--workers``) on 127.0.0.1."""

    def __init__(
        self,
        registry: Path,
        db: Path,
        *args: str,
        stderr: IO[bytes] | int = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = apimodels(registry, db, "serve", "--port", str(self.port), *args)
        self.process = subprocess.Popen(
            command,
            env=os.environ
            | {"OPENAI_API_KEY": SIM_KEY, "REPLICATE_API_TOKEN": REPLICATE_KEY}
            | (env or {}),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not become ready")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the exit (SIGKILL if it takes too long)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=10)


@contextmanager
def serving(registry: Path, db: Path, *args: str, **kwargs: object) -> Iterator[Served]:
    served = Served(registry, db, *args, **kwargs)  # type: ignore[arg-type]
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()


def open_db_after(barriers: list[Any], paths: list[str]) -> None:
    """Open (and so migrate) each database of ``paths`` once every process reaches its
    barrier. A child of a spawned process imports it from here: a test module, named
    ``tests.test_...`` under pytest's importlib mode, cannot be imported by the child."""
    from apimodels.store.db import open_db

    for barrier, path in zip(barriers, paths, strict=True):
        barrier.wait()
        open_db(path).conn.close()
