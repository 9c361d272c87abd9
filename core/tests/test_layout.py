"""The core's folder tree is its architecture: each part imports only the parts below it,
and every module imports on its own (no import circles)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "apimodels"

#: What each part may import at run time (annotations under ``TYPE_CHECKING`` aside), from
#: the bottom up. A top-level module is a part of its own.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "fastjson": set(),
    "signing": set(),
    "schemas": set(),
    "responses": {"schemas"},
    "topups.config": set(),  # the [topups] table, read by the catalog with every other table
    "console.config": set(),  # the [console] table, likewise
    "catalog": {"errors", "schemas", "topups.config", "console.config"},
    "store": {"errors"},
    "billing": {"errors", "catalog", "store", "fastjson"},
    # What plugins see: the hooks and the objects passed to them (providers and policies).
    "interface": {"errors", "schemas", "catalog", "fastjson", "billing"},
    "providers": {"errors", "schemas", "catalog", "fastjson", "store", "billing", "interface"},
    "policy": {"errors", "schemas", "catalog", "store", "interface", "providers"},
    "storage": {"errors", "catalog", "store"},
    # Other API shapes of the chat request (Responses, Anthropic Messages): pure mappings.
    "dialects": {"errors", "schemas", "fastjson", "billing", "interface", "providers", "store"},
    "topups": {"errors", "store", "billing", "topups.config"},
    "tasks": {
        "errors",
        "fastjson",
        "schemas",
        "catalog",
        "signing",
        "store",
        "billing",
        "interface",
        "providers",
        "policy",
        "storage",
    },
    # Deleting content and enforcing retention: over tasks, storage, the ledger and audit.
    "privacy": {
        "errors",
        "catalog",
        "store",
        "billing",
        "policy",
        "storage",
        "topups",
        "tasks",
    },
    "http": {
        "privacy",
        "errors",
        "schemas",
        "catalog",
        "fastjson",
        "store",
        "billing",
        "interface",
        "providers",
        "policy",
        "storage",
        "topups",
        "tasks",
        "topups.config",
        "dialects",
    },
    # The operator's side: service functions over every store, and their HTTP door.
    "admin": {
        "errors",
        "fastjson",
        "catalog",
        "store",
        "billing",
        "policy",
        "privacy",
        "storage",
        "tasks",
        "topups",
        "http",
    },
    # The OpenAPI document: made from the request and answer models of http and admin.
    "openapi": {"schemas", "dialects", "http", "admin", "__init__"},
    "plugins": {"errors", "interface", "providers", "policy"},
    # The Console: a front end over the same services, and over the API's top-ups (the
    # same checkout flow and amount rule as POST /v1/topups); its admin pages over the
    # admin service functions (the admin API's own).
    "console": {
        "admin",
        "http",
        "errors",
        "catalog",
        "fastjson",
        "store",
        "billing",
        "interface",
        "providers",
        "policy",
        "storage",
        "topups",
        "tasks",
        "privacy",
        "console.config",
        "topups.config",
    },
    # Running it: metrics, logs and health, over what they measure (never over http).
    "ops": {
        "errors",
        "fastjson",
        "schemas",
        "catalog",
        "store",
        "billing",
        "interface",
        "providers",
        "policy",
        "tasks",
    },
}
#: The plugin interface, wherever its modules sit.
INTERFACE = {"hookspecs", "providers.types", "policy.spec"}
#: Assembly and tools at the top may import anything.
TOP = {"server", "cli", "scaffold", "testing", "__init__"}


def part(module: str) -> str:
    """The part of the architecture a module (``a.b``, relative to apimodels) belongs to."""
    if module in INTERFACE:
        return "interface"
    if module in ("topups.config", "console.config"):
        return module
    return module.split(".")[0]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def runtime_imports(module: str, path: Path) -> set[str]:
    """The core modules ``module`` imports when it runs (not those under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    guarded = {  # the body of ``if TYPE_CHECKING:`` (not its else, nor ``if not ...``)
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for child in node.body
        for n in ast.walk(child)
    }
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    known = modules()
    found = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                name = f"{target}.{alias.name}" if target else alias.name
                found.add(name if name in known else target)
        elif isinstance(node, ast.ImportFrom) and node.module == "apimodels":
            for alias in node.names:  # ``from apimodels import x``: a module, or the package
                found.add(alias.name if alias.name in known else "__init__")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("apimodels."):
            found.add(node.module.removeprefix("apimodels."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("apimodels."):
                    found.add(alias.name.removeprefix("apimodels."))
    return {m for m in found if m}


def test_each_part_imports_only_the_parts_below_it() -> None:
    wrong = []
    for module, path in sorted(modules().items()):
        own = part(module)
        if own in TOP or module == "__init__":
            continue
        for imported in sorted(runtime_imports(module, path)):
            other = part(imported)
            if other != own and other not in ALLOWED[own]:
                wrong.append(f"{module} ({own}) imports {imported} ({other})")
    assert wrong == []


def test_every_module_imports_alone() -> None:
    """In a fresh interpreter each, so that an import circle shows whatever the order
    (the modules split between two interpreters at once: the machine has two cores)."""
    names = sorted(f"apimodels.{m}" if m != "__init__" else "apimodels" for m in modules())
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('apimodels')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *names[half::2]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for half in (0, 1)
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
        assert out.strip() == ""
