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
from decimal import Decimal
from pathlib import Path

import httpx

from apimodels.billing.ledger import Ledger
from apimodels.store.accounts import create_account, create_key
from apimodels.store.db import open_db
from apimodels.testing import serve
from apimodels_replicate.simulator import create_app as create_replicate
from support import REPLICATE_KEY, SIM_KEY, TASKS_SETTINGS, Simulator, funded, registry_for


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
        env=os.environ | {"OPENAI_API_KEY": SIM_KEY, "REPLICATE_API_TOKEN": REPLICATE_KEY},
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
    account, key = funded(db_path, 2_000_000)

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
    while not watch.execute("SELECT 1 FROM reservations").fetchone():
        assert time.monotonic() < deadline, "the request never set its credits aside"
        time.sleep(0.02)
    assert Ledger(watch).balance(account).held_micros > 0
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    caller.join()
    simulator.reset()

    server = _start(registry, db_path, _port())
    try:
        deadline = time.monotonic() + 10
        while watch.execute("SELECT 1 FROM reservations").fetchone():
            assert time.monotonic() < deadline, "the stranded reservation was never returned"
            time.sleep(0.1)
        check = _cli(registry, db_path, "ledger", "check")
        assert check.returncode == 0, check.stderr
        b = Ledger(watch).balance(account)
        assert (b.balance_micros, b.held_micros) == (2_000_000, 0)
        # The call never ended: nothing recorded, nothing charged.
        assert list(watch.query("SELECT * FROM usage")) == []
        assert list(watch.query("SELECT * FROM ledger_entries WHERE kind = 'charge'")) == []
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
        watch.conn.close()


def test_kill_9_with_a_task_running_then_restart(simulator: Simulator, tmp_path: Path) -> None:
    """The worker of the new process takes the task over when the dead one's lease ends,
    finishes it, and it is charged exactly once."""
    with serve(create_replicate(REPLICATE_KEY)) as replicate_url:
        replicate = Simulator(replicate_url)
        registry = registry_for(
            simulator.url, tmp_path, replicate=replicate_url, tasks=TASKS_SETTINGS
        )
        db_path = tmp_path / "tasks.db"
        db = open_db(db_path)
        account = create_account(db, "restart@example.com")["id"]
        _, key = create_key(db, account)
        Ledger(db).post(account, 5_000_000, kind="grant", reason="t", actor="t")
        db.conn.close()
        replicate.knobs(slow_seconds=2)

        port = _port()
        server = _start(registry, db_path, port)
        headers = {"authorization": f"Bearer {key}"}
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/tasks",
            json={"model": "replicate/veo-3.1-fast", "input": {"prompt": "restart", "duration": 4}},
            headers=headers,
        )
        assert r.status_code == 202, r.text
        task_id = r.json()["id"]
        watch = open_db(db_path)
        deadline = time.monotonic() + 10
        while (
            watch.execute(
                "SELECT 1 FROM tasks WHERE id = ? AND status = 'running'", (task_id,)
            ).fetchone()
            is None
        ):
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        assert Ledger(watch).balance(account).held_micros > 0  # the hold survives the crash

        port = _port()
        server = _start(registry, db_path, port)
        try:
            deadline = time.monotonic() + 20
            while True:
                task = httpx.get(
                    f"http://127.0.0.1:{port}/v1/tasks/{task_id}", headers=headers
                ).json()
                if task["status"] not in ("queued", "running"):
                    break
                assert time.monotonic() < deadline, "the task was not resumed"
                time.sleep(0.1)
            assert task["status"] == "succeeded", task
            creates = [
                q
                for q in replicate.requests()
                if q["method"] == "POST" and "predictions" in q["path"]
            ]
            assert len(creates) == 1  # resumed by polling, not submitted again
            charges = watch.execute(
                "SELECT amount_micros FROM ledger_entries WHERE hold_id = ?", (task_id,)
            ).fetchall()
            assert [c[0] for c in charges] == [-int(Decimal(str(task["cost"])) * 1_000_000)]
            b = Ledger(watch).balance(account)
            assert b.held_micros == 0 and b.balance_micros == 5_000_000 + charges[0][0]
            check = _cli(registry, db_path, "ledger", "check")
            assert check.returncode == 0, check.stderr
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=10)
            watch.conn.close()
