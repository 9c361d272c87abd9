"""``apimodels plugin new NAME``: a new provider plugin package, passing its tests as made.

The package (``apimodels-NAME``, module ``apimodels_NAME``) holds hook implementations for a
toy upstream, its simulator, a catalog snippet and tests that run the conformance kit; the
author then swaps the toy upstream for the real one. The files are the templates in
``apimodels/templates/plugin`` with ``$name``, ``$module``, ``$title`` and ``$env`` filled in,
and the compatibility bounds: ``$core_range`` (the apimodels releases the package may be
installed with) and ``$hook_api`` (the hook-API versions it declares it supports).
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from . import HOOK_API_VERSION, __version__

NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


def _files(root: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    out: list[tuple[str, Traversable]] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        path = f"{prefix}{entry.name}"
        if entry.is_dir():
            out += _files(entry, path + "/")
        elif entry.name.endswith(".tmpl"):
            out.append((path.removesuffix(".tmpl"), entry))
    return out


def core_range(version: str = __version__) -> str:
    """The apimodels releases a new plugin may depend on: this minor series before 1.0
    (``>=0.1,<0.2``), this major one after (``>=1.4,<2``)."""
    major, minor = (int(part) for part in version.split(".")[:2])
    upper = f"{major}.{minor + 1}" if major == 0 else str(major + 1)
    return f">={major}.{minor},<{upper}"


def hook_api_range(version: int = HOOK_API_VERSION) -> str:
    """The hook-API versions a new plugin declares: this one, up to the next breaking one."""
    return f">={version},<{version + 1}"


def new_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write the package ``apimodels-NAME`` under ``directory``; return its folder.

    Raises ``ValueError`` for a name that cannot be a provider and package name, and
    ``FileExistsError`` rather than overwrite anything."""
    if not NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a plugin name: lowercase letters and digits, words joined by "
            "'-' or '_', starting with a letter (e.g. 'acme' or 'acme-tts')"
        )
    module = "apimodels_" + name.replace("-", "_")
    values = {
        "name": name,
        "module": module,
        "title": name.replace("-", " ").replace("_", " ").title(),
        "env": re.sub(r"[-]", "_", name).upper(),
        "core_range": core_range(),
        "hook_api": hook_api_range(),
    }
    target = Path(directory) / f"apimodels-{name}"
    if target.exists():
        raise FileExistsError(f"{target} exists already")
    templates = resources.files("apimodels") / "templates" / "plugin"
    for relative, source in _files(templates):
        if relative.startswith("src/"):
            relative = f"src/{module}/" + relative.removeprefix("src/")
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(source.read_text(encoding="utf-8")).substitute(values))
    return target
