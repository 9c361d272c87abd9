"""``apimodels plugin new``: the generated package installs, passes its own tests (the
conformance kit among them), and serves a model through the gateway with no change to core."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import openai
from click.testing import CliRunner

from apimodels.cli import cli


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_new_plugin_installs_passes_its_tests_and_serves(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["plugin", "new", "acme-echo", "--directory", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / "apimodels-acme-echo"
    assert (package / "src" / "apimodels_acme_echo" / "__init__.py").exists()

    # Installed into a folder of its own (not this environment), found by its entry point.
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(package)], check=True, timeout=120)
    env = os.environ | {"PYTHONPATH": str(site)}

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "6 passed" in tests.stdout

    catalog = package / "catalog.toml"
    listing = subprocess.run(
        [sys.executable, "-m", "apimodels.cli", "--registry", str(catalog), "plugins"],
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "apimodels-acme-echo" in listing.stdout, listing.stdout + listing.stderr

    port = _port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apimodels.cli", "--registry", str(catalog),
         "--db", str(tmp_path / "g.db"), "serve", "--sandbox", "--port", str(port)],
        env=env | {"COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        output, deadline = "", time.monotonic() + 30
        while "curl" not in output and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            output += line
        key = re.search(r"amk_\w+", output).group(0)  # type: ignore[union-attr]
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0
        ) as client:
            reply = client.chat.completions.create(
                model="acme-echo/echo-1",
                messages=[{"role": "user", "content": "hello plugin world"}],
                max_tokens=10,
            )
            assert reply.choices[0].message.content == "You said: hello plugin world"
            # 3 words in at $1.00/1M, 5 words out at $2.00/1M
            assert Decimal(str(reply.usage.cost)) == Decimal("0.000013")  # type: ignore[union-attr]
            stream = client.chat.completions.create(
                model="acme-echo/echo-1",
                messages=[{"role": "user", "content": "stream me"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "You said: stream me"
            assert Decimal(str(chunks[-1].usage.cost)) > 0  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        proc.stdout.close()  # type: ignore[union-attr]


def test_bad_names_and_existing_folders_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    for name in ("Acme", "1acme", "acme/x", "acme--x", ""):
        result = runner.invoke(cli, ["plugin", "new", name, "--directory", str(tmp_path)])
        assert result.exit_code != 0
    assert (
        runner.invoke(cli, ["plugin", "new", "acme", "--directory", str(tmp_path)]).exit_code == 0
    )
    again = runner.invoke(cli, ["plugin", "new", "acme", "--directory", str(tmp_path)])
    assert again.exit_code == 1 and "exists already" in again.output
