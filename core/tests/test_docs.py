"""Docs that must not drift from the code: the hook reference and every hook's docstring."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from click.testing import CliRunner
from cogapp import Cog

from apimodels import hookspecs
from apimodels.cli import cli

ROOT = Path(__file__).parents[2]
SPECS = {n: f for n, f in vars(hookspecs).items() if hasattr(f, "apimodels_spec")}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_hook_is_documented(name: str) -> None:
    fn = SPECS[name]
    doc = inspect.getdoc(fn)
    assert doc, f"{name} has no docstring"
    for param in inspect.signature(fn).parameters:
        assert f":param {param}:" in doc, f"{name}: no ':param {param}:' line"
    if fn.apimodels_spec.get("firstresult"):
        assert "Stops at the first non-None result." in doc, name


def test_hook_reference_in_docs_is_current() -> None:
    status = Cog().main(["cog", "--check", str(ROOT / "docs" / "plugins.md")])
    assert status == 0, "docs/plugins.md is stale: run `cog -r docs/plugins.md`"


def _commands(group, prefix=()):  # type: ignore[no-untyped-def]
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize("path", sorted(_commands(cli)))
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    lines = result.output.split("\n\n")
    assert len(lines) > 2 and lines[1].strip(), f"{' '.join(path)} has no description"
