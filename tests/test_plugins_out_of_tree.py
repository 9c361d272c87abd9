"""Plugins from outside the repository: installed the documented way (plugins.local.txt and
`make sync`), kept by the next sync, listed and served; refused with a message naming the
plugin and the real cause when they cannot be used (an import that fails, a hook-API range
that excludes this core)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner

import apimodels
from apimodels.cli import cli

ROOT = Path(__file__).resolve().parents[1]
WIDE = {"COLUMNS": "250"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(command: list[str], env: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """``apimodels ... serve --sandbox`` in a process of its own: (url, demo key, output)."""
    port = _port()
    proc = subprocess.Popen(
        [*command, "serve", "--sandbox", "--port", str(port), "--no-access-log"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, deadline = "", time.monotonic() + 30
        while "curl" not in output and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            output += line
        key = re.search(r"amk_\w+", output)
        assert key, output
        yield f"http://127.0.0.1:{port}/v1", key.group(0), output
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        proc.stdout.close()  # type: ignore[union-attr]


def _make_sync(venv: Path, plugins_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MAKEFLAGS")}
    env |= {"UV_PROJECT_ENVIRONMENT": str(venv), "PLUGINS_FILE": str(plugins_file)}
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "sync"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_plugin_in_plugins_local_txt_survives_make_sync_and_serves(tmp_path: Path) -> None:
    made = CliRunner().invoke(cli, ["plugin", "new", "acme-echo", "--directory", str(tmp_path)])
    assert made.exit_code == 0, made.output
    package = tmp_path / "apimodels-acme-echo"  # outside the workspace, as a third party's
    # The scaffold bounds the core to this minor series (0.x) and declares this hook API.
    assert '"apimodels>=0.1,<0.2"' in (package / "pyproject.toml").read_text()
    plugins_file = tmp_path / "plugins.local.txt"
    plugins_file.write_text(f"# out-of-tree plugins\n{package}\n")
    venv = tmp_path / "venv"

    _make_sync(venv, plugins_file)
    _make_sync(venv, plugins_file)  # `make run` / `make test` sync again: the plugin stays

    apimodels_cli = [str(venv / "bin" / "apimodels"), "--registry", str(package / "catalog.toml")]
    env = os.environ | WIDE
    listing = subprocess.run(
        [*apimodels_cli, "plugins"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "apimodels-acme-echo" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:7] == [
        "acme-echo", "apimodels-acme-echo", "0.1.0", ">=2,<3", "loaded", "acme-echo", "acme-echo"
    ]  # fmt: skip
    assert listing.stderr == ""

    db = ["--db", str(tmp_path / "g.db")]
    with (
        _serving([*apimodels_cli, *db], env) as (url, key, _),
        openai.OpenAI(base_url=url, api_key=key, max_retries=0) as client,
    ):
        reply = client.chat.completions.create(
            model="acme-echo/echo-1",
            messages=[{"role": "user", "content": "out of tree"}],
            max_tokens=10,
        )
        assert reply.choices[0].message.content == "You said: out of tree"
        # 3 words in at $1.00/1M, 5 words out at $2.00/1M
        assert Decimal(str(reply.usage.cost)) == Decimal("0.000013")  # type: ignore[union-attr]


def _package(root: Path, name: str, body: str) -> Path:
    """A one-module plugin package ``apimodels-NAME`` 0.3 with its entry point."""
    module = "apimodels_" + name.replace("-", "_")
    folder = root / f"apimodels-{name}"
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(body)
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
        [project]
        name = "apimodels-{name}"
        version = "0.3"
        dependencies = ["apimodels"]

        [project.entry-points.apimodels]
        {name} = "{module}"

        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [tool.hatch.build.targets.wheel]
        packages = ["{module}"]
        """)
    )
    return folder


PROVIDER = textwrap.dedent("""
    from apimodels import ProviderSpec, hookimpl

    @hookimpl
    def register_providers(register):
        register(ProviderSpec(name={name!r}, base_url="https://{name}.test/v1", api_key_env="K"))
""")


@pytest.fixture(scope="module")
def troubled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment with four installed plugins beside this one's: one whose import fails,
    one made for a later hook API, one with a range that is no range, and one that imports
    core modules at import time (and must load whole)."""
    root = tmp_path_factory.mktemp("troubled")
    packages = [
        _package(root, "acme-broken", "import acme_missing_dependency  # not installed\n"),
        _package(
            root,
            "acme-future",
            'apimodels_hook_api = ">=3,<4"\n' + PROVIDER.format(name="acme-future"),
        ),
        _package(root, "acme-typo", 'apimodels_hook_api = "two"\n'),
        _package(
            root,
            "acme-eager",
            "from apimodels.plugins import InstalledPlugin, load_plugins\n"
            "from apimodels.server import assemble\n" + PROVIDER.format(name="acme-eager"),
        ),
    ]
    site = root / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), *map(str, packages)], check=True, timeout=180)
    return os.environ | WIDE | {"PYTHONPATH": str(site)}


def _catalog(tmp_path: Path, provider: str, package: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(f'[providers.{provider}]\npackage = "{package}"\n')
    return path


def _apimodels(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "apimodels.cli", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


BROKEN = (
    "plugin 'acme-broken' (apimodels-acme-broken 0.3) failed to load: "
    "ModuleNotFoundError: No module named 'acme_missing_dependency'"
)
FUTURE = (
    "plugin 'acme-future' (apimodels-acme-future 0.3) supports hook API >=3,<4, but apimodels "
    f"{apimodels.__version__} has hook API {apimodels.HOOK_API_VERSION}"
)
TYPO = "plugin 'acme-typo' (apimodels-acme-typo 0.3) declares apimodels_hook_api = 'two', which is not a version range"


def test_plugins_lists_the_unusable_ones_with_the_real_reason(
    troubled: dict[str, str], tmp_path: Path
) -> None:
    listing = _apimodels(
        "--registry",
        _catalog(tmp_path, "acme-eager", "apimodels-acme-eager"),
        "plugins",
        env=troubled,
    )
    assert listing.returncode == 0, listing.stderr
    rows = {
        cells[0]: cells
        for line in listing.stdout.splitlines()
        if (cells := [c.strip() for c in line.strip("│ ").split("│")]) and len(cells) > 5
    }
    assert rows["acme-broken"][1:5] == ["apimodels-acme-broken", "0.3", "undeclared", "failed"]
    assert rows["acme-future"][3:5] == [">=3,<4", "incompatible"]
    assert rows["acme-typo"][3:5] == ["two", "failed"]
    # Importing core modules at import time no longer meets a half-built plugin manager.
    assert rows["acme-eager"][3:7] == ["undeclared", "loaded", "acme-eager", "acme-eager"]
    assert rows["openai"][3:5] == [">=2,<3", "loaded"]
    errors = " ".join(listing.stderr.split())
    assert f"error: {BROKEN}" in errors
    assert f"error: {FUTURE}" in errors
    assert f"error: {TYPO}" in errors


@pytest.mark.parametrize(
    ("provider", "package", "message"),
    [
        ("acme-broken", "apimodels-acme-broken", BROKEN),  # by the package the catalog names
        ("acme-future", "apimodels-acme-future", FUTURE),
        ("acme-broken", "apimodels-acme-tools", BROKEN),  # by the plugin's name
    ],
)
def test_serve_refuses_to_start_when_the_catalog_needs_an_unusable_plugin(
    troubled: dict[str, str], tmp_path: Path, provider: str, package: str, message: str
) -> None:
    catalog = _catalog(tmp_path, provider, package)
    served = _apimodels(
        "--registry", catalog, "--db", tmp_path / "g.db", "serve", "--sandbox", env=troubled
    )
    assert served.returncode == 1
    error = " ".join(served.stderr.split())
    assert error.startswith(f"error: {message}")
    assert f"the catalog enables its provider '{provider}'" in error
    assert "Traceback" not in served.stderr


def test_serve_starts_without_an_unusable_plugin_it_does_not_need_and_says_so(
    troubled: dict[str, str], tmp_path: Path
) -> None:
    catalog = _catalog(tmp_path, "acme-eager", "apimodels-acme-eager")
    command = [sys.executable, "-m", "apimodels.cli", "--registry", str(catalog)]
    with _serving([*command, "--db", str(tmp_path / "g.db")], troubled) as (url, key, output):
        flat = " ".join(output.split())
        assert f"warning: {BROKEN} (not loaded; the catalog does not use it)" in flat
        assert f"warning: {FUTURE}" in flat
        with openai.OpenAI(base_url=url, api_key=key, max_retries=0) as client:
            assert [m.id for m in client.models.list()] == []
