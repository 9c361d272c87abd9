"""The command line: accounts and keys, catalog and plugin listings, clean errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from apimodels.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    def invoke(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(
            cli,
            ["--registry", str(ROOT / "registry.toml"), "--db", str(tmp_path / "cli.db"), *args],
        )
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def test_accounts_and_key_lifecycle(run) -> None:  # type: ignore[no-untyped-def]
    assert "created account acct_" in run("accounts", "create", "ops@example.com")
    out = run("keys", "create", "ops@example.com", "--name", "ci")
    key = re.search(r"amk_\w+", out).group(0)  # type: ignore[union-attr]
    key_id = re.search(r"key_\w+", out).group(0)  # type: ignore[union-attr]
    listing = run("keys", "list", "ops@example.com")
    assert key_id in listing and key not in listing
    rotated = run("keys", "rotate", key_id, "--grace-hours", "1")
    new_key = re.search(r"amk_\w+", rotated).group(0)  # type: ignore[union-attr]
    assert new_key != key and "works until" in rotated
    assert "revoked" in run("keys", "revoke", key_id)
    assert "no key 'key_nope'" in run("keys", "revoke", "key_nope", code=1)
    assert "already exists" in run("accounts", "create", "ops@example.com", code=1)


def test_models_and_plugins(run) -> None:  # type: ignore[no-untyped-def]
    out = run("models", "--json")
    assert '"id": "openai/gpt-4o-mini"' in out and '"input_per_1m": "0.15"' in out
    table = run("plugins")
    assert "apimodels-openai" in table and "openai" in table


def test_a_bad_catalog_is_one_clean_line(tmp_path: Path) -> None:
    bad = tmp_path / "registry.toml"
    bad.write_text('[models."x/y"]\nprovider = "x"\n')
    result = CliRunner().invoke(cli, ["--registry", str(bad), "models"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert str(bad) in result.output


def test_sandbox_serve_prints_a_working_key_and_curl_line(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apimodels.cli",
            "--registry",
            str(ROOT / "registry.toml"),
            "--db",
            str(tmp_path / "sandbox.db"),
            "serve",
            "--sandbox",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"COLUMNS": "200"},
    )
    try:
        output = ""
        deadline = time.monotonic() + 30
        while "curl" not in output and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            output += line
        assert "SANDBOX MODE" in output and "simulated" in output
        key = re.search(r"amk_\w+", output).group(0)  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}/v1" in output
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0
        ) as client:
            reply = client.chat.completions.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
            assert float(reply.usage.cost) > 0  # type: ignore[union-attr]
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        # A video task from the Replicate simulator, its output downloaded from storage.
        headers = {"authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{port}/v1"
        task = httpx.post(
            f"{base}/tasks",
            json={"model": "replicate/veo-3.1-fast", "input": {"prompt": "waves", "duration": 4}},
            headers=headers,
        ).json()
        deadline = time.monotonic() + 30
        while task["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, task
            time.sleep(0.2)
            task = httpx.get(f"{base}/tasks/{task['id']}", headers=headers).json()
        assert task["status"] == "succeeded", task
        assert Decimal(str(task["cost"])) == Decimal("0.600000")  # 4 s at $0.15
        video = httpx.get(task["output"][0]["url"])
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        proc.stdout.close()  # type: ignore[union-attr]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_credits_ledger_and_account_status(run) -> None:  # type: ignore[no-untyped-def]
    run("accounts", "create", "money@example.com")
    assert "balance 25.000000 USD" in run(
        "credits", "grant", "money@example.com", "25", "--reason", "welcome"
    )
    out = run("credits", "adjust", "money@example.com", "-1.5", "--reason", "duplicate charge")
    assert "balance 23.500000 USD" in out
    assert "not a whole number of micro-dollars" in run(
        "credits", "grant", "money@example.com", "0.0000001", "--reason", "dust", code=2
    )
    assert "Missing option '--reason'" in run("credits", "grant", "money@example.com", "5", code=2)
    shown = run("credits", "show", "money@example.com")
    assert "adjustment" in shown and "-1.500000" in shown and "welcome" in shown
    assert "ledger ok" in run("ledger", "check")
    assert "suspended" in run(
        "accounts", "suspend", "money@example.com", "--reason", "abuse report 17"
    )
    assert "active" in run("accounts", "unsuspend", "money@example.com", "--reason", "resolved")
    keyed = run("keys", "create", "money@example.com")
    key_id = re.search(r"key_\w+", keyed).group(0)  # type: ignore[union-attr]
    assert "rpm 60" in run("keys", "limit", key_id, "--rpm", "60", "--daily-usd", "5")
    assert "give --rpm" in run("keys", "limit", key_id, code=2)
    exported = json.loads(run("accounts", "export", "money@example.com"))
    assert exported["account"]["email"] == "money@example.com"
    assert [e["amount_micros"] for e in exported["ledger_entries"]] == [25_000_000, -1_500_000]
    assert exported["keys"][0]["rpm_limit"] == 60 and "hash" not in exported["keys"][0]
    run("accounts", "close", "money@example.com", "--reason", "asked to leave")
    closed = json.loads(run("accounts", "export", "money@example.com"))
    assert closed["account"]["status"] == "closed" and all(k["revoked_at"] for k in closed["keys"])
    assert "is closed" in run("accounts", "suspend", "money@example.com", "--reason", "x", code=1)


def test_ledger_check_fails_on_a_tampered_balance(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("accounts", "create", "tamper@example.com")
    run("credits", "grant", "tamper@example.com", "10", "--reason", "t")
    from apimodels.store.db import open_db

    db = open_db(tmp_path / "cli.db")
    db.execute("UPDATE accounts SET balance_micros = balance_micros + 1")
    db.conn.close()
    out = run("ledger", "check", code=1)
    assert "entries sum to 10000000" in out


def test_webhook_secret_is_shown_and_rotated(run) -> None:  # type: ignore[no-untyped-def]
    run("accounts", "create", "hooks@example.com")
    first = run("accounts", "webhook-secret", "hooks@example.com").strip()
    assert first.startswith("whsec_")
    assert run("accounts", "webhook-secret", "hooks@example.com").strip() == first
    rotated = run("accounts", "webhook-secret", "hooks@example.com", "--rotate").strip()
    assert rotated.startswith("whsec_") and rotated != first
    assert "no account" in run("accounts", "webhook-secret", "nobody@example.com", code=1)


def test_tasks_list(run) -> None:  # type: ignore[no-untyped-def]
    run("accounts", "create", "t@example.com")
    out = run("tasks", "list", "--account", "t@example.com", "--status", "failed")
    assert "id" in out and "task_" not in out
    assert "Invalid value" in run("tasks", "list", "--status", "nope", code=2)


def test_plugins_lists_instances_and_their_key_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = (ROOT / "registry.toml").read_text() + (
        '\n[providers.openai-eu]\npackage = "apimodels-openai"\nkind = "openai"\n'
        'base_url = "https://eu.example/v1"\n'
        '[[providers.openai-eu.keys]]\nenv = "EU_KEY_2"\nweight = 3\n'
    )
    (tmp_path / "registry.toml").write_text(registry)
    monkeypatch.setenv("EU_KEY_2", "sk-never-shown-0123456789abcdef")
    monkeypatch.delenv("OPENAI_EU_API_KEY", raising=False)
    result = CliRunner().invoke(
        cli,
        ["--registry", str(tmp_path / "registry.toml"), "--db", str(tmp_path / "c.db"), "plugins"],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    line = next(
        row for row in result.output.splitlines() if "openai-eu" in row and "eu.example" in row
    )
    assert "OPENAI_EU_API_KEY: not set, 1" in line and "EU_KEY_2: set, 3" in line
    assert "sk-never-shown" not in result.output
    row = next(r for r in result.output.splitlines() if r.startswith("│ openai "))
    assert "openai, openai-eu" in row  # the openai plugin's provider, enabled twice


def test_serve_on_a_port_in_use_says_so(run) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        output = run("serve", "--port", str(port), code=1)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in output
    assert "Traceback" not in output
