"""A kill -9 in the middle of a request loses no credits and charges nothing twice."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from apimodels.accounts import create_account, create_key
from apimodels.db import open_db
from apimodels.ledger import Ledger
from support import SIM_KEY, Simulator, registry_for


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _apimodels(registry: Path, db: Path, *args: str) -> list[str]:
    """The command line of the ``apimodels`` CLI on this registry and database."""
    return [
        sys.executable,
        "-m",
        "apimodels.cli",
        "--registry",
        str(registry),
        "--db",
        str(db),
        *args,
    ]


def _start(registry: Path, db: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        _apimodels(registry, db, "serve", "--port", str(port), "--no-access-log"),
        env=os.environ | {"OPENAI_API_KEY": SIM_KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def _cli(registry: Path, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _apimodels(registry, db, *args), capture_output=True, text=True, timeout=60
    )


def test_kill_9_mid_request_then_restart(simulator: Simulator, tmp_path: Path) -> None:
    registry = registry_for(simulator.url, tmp_path, "")
    text = registry.read_text().replace(
        "[gateway]\n", "[gateway]\nhold_ttl_seconds = 2\nexpiry_sweep_seconds = 0.5\n"
    )
    registry.write_text(text)
    db_path = tmp_path / "crash.db"
    db = open_db(db_path)
    account = create_account(db, "crash@example.com")["id"]
    _, key = create_key(db, account)
    Ledger(db).post(account, 2_000_000, kind="grant", reason="t", actor="t")
    db.conn.close()

    port = _port()
    server = _start(registry, db_path, port)
    simulator.knobs(latency=10)
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    def doomed() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"},
                timeout=20,
            )

    caller = threading.Thread(target=doomed)
    caller.start()
    watch = open_db(db_path)
    deadline = time.monotonic() + 10
    while not watch.execute("SELECT 1 FROM usage WHERE hold_state = 'pending'").fetchone():
        assert time.monotonic() < deadline, "the request never took its hold"
        time.sleep(0.02)
    assert Ledger(watch).balance(account).held_micros > 0
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    caller.join()
    simulator.reset()

    server = _start(registry, db_path, _port())
    try:
        deadline = time.monotonic() + 10
        while watch.execute("SELECT 1 FROM usage WHERE hold_state = 'pending'").fetchone():
            assert time.monotonic() < deadline, "the stranded hold was never released"
            time.sleep(0.1)
        check = _cli(registry, db_path, "ledger", "check")
        assert check.returncode == 0, check.stderr
        b = Ledger(watch).balance(account)
        assert (b.balance_micros, b.held_micros) == (2_000_000, 0)
        [row] = watch.query("SELECT * FROM usage")
        assert row["hold_state"] == "expired" and row["cost_micros"] == 0
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
        watch.conn.close()
