"""The plugin manager: hook specs, the core's own fallbacks, and installed plugins.

Installed plugins are found through the ``apimodels`` entry-point group and loaded by
:func:`load_plugins`, once per process, by whoever first needs them (``apimodels serve``,
``apimodels plugins``, :func:`apimodels.server.assemble`); never while this module is
imported, so a plugin that imports core modules finds them whole.

A plugin that cannot be used is not registered, and its record says why, naming it, its
distribution and the real cause: it failed to import (or to register), or it declares
hook-API versions (``apimodels_hook_api = ">=2,<3"``, a PEP 440 specifier, on its
entry-point module or that module's top-level package) that exclude
:data:`apimodels.HOOK_API_VERSION`. A plugin that declares nothing is loaded and shown as
"undeclared". :func:`check_plugins` turns those records into a refusal to start when the
catalog needs the plugin, and into warnings otherwise.

Two environment variables help when debugging:

- ``APIMODELS_LOAD_PLUGINS``: comma-separated entry-point names to load (empty: none).
- ``APIMODELS_TRACE_PLUGINS=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import TYPE_CHECKING, Literal

import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from . import HOOK_API_VERSION, __version__, hookspecs
from .errors import ConfigError
from .policy import rules as policy_rules
from .providers import default_hooks
from .providers.runtime import trace_hook_calls

if TYPE_CHECKING:
    from .catalog import Catalog

GROUP = "apimodels"
#: Where a plugin declares the hook-API versions it supports (a PEP 440 specifier string).
HOOK_API_ATTRIBUTE = "apimodels_hook_api"

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)
pm.register(default_hooks, name="apimodels.providers.default_hooks")
pm.register(policy_rules, name="apimodels.policy.rules")  # the built-in `rules` policy
if os.environ.get("APIMODELS_TRACE_PLUGINS"):
    trace_hook_calls(pm)


@dataclass(frozen=True, kw_only=True)
class InstalledPlugin:
    """One entry point of the ``apimodels`` group, and what became of it."""

    name: str  #: the entry point's name, which is the plugin's name in the manager
    package: str | None  #: the distribution that installed it
    version: str | None
    hook_api: str | None  #: the hook-API versions it declares; None: undeclared
    status: Literal["loaded", "failed", "incompatible"] = "loaded"
    error: str | None = None  #: why it is not loaded: the whole message, naming the plugin
    cause: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def loaded(self) -> bool:
        return self.status == "loaded"

    @property
    def label(self) -> str:
        """``plugin 'acme' (apimodels-acme 0.3)``: how every message names it."""
        if self.package is None:
            return f"plugin {self.name!r}"
        return f"plugin {self.name!r} ({self.package} {self.version})"


_installed: list[InstalledPlugin] | None = None
_lock = threading.Lock()


def load_plugins() -> list[InstalledPlugin]:
    """Load the installed plugins into :data:`pm` (the first call does it; later calls
    answer the same records). Never raises for a broken plugin: see :func:`check_plugins`."""
    global _installed
    with _lock:
        if _installed is None:
            _installed = [_load(ep) for ep in _entry_points()]
        return _installed


def _entry_points() -> list[metadata.EntryPoint]:
    found = sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)
    allowed = os.environ.get("APIMODELS_LOAD_PLUGINS")
    if allowed is not None:
        names = {n.strip() for n in allowed.split(",") if n.strip()}
        found = [ep for ep in found if ep.name in names]
    # A name registered already (by a test, or by a copy of the same distribution) stays.
    return [ep for ep in found if pm.get_plugin(ep.name) is None and not pm.is_blocked(ep.name)]


def _load(ep: metadata.EntryPoint) -> InstalledPlugin:
    dist = ep.dist
    record = InstalledPlugin(
        name=ep.name,
        package=dist.name if dist else None,
        version=dist.version if dist else None,
        hook_api=None,
    )
    try:
        plugin = ep.load()
    except Exception as exc:  # whatever its import raised: the one thing worth showing
        return _failed(record, f"failed to load: {type(exc).__name__}: {exc}", exc)
    declared = _declared_hook_api(ep, plugin)
    record = replace(record, hook_api=declared)
    if declared is not None:
        try:
            supported = SpecifierSet(declared)
        except InvalidSpecifier as exc:
            return _failed(
                record,
                f"declares {HOOK_API_ATTRIBUTE} = {declared!r}, which is not a version "
                "range (write one such as '>=2,<3')",
                exc,
            )
        if not supported.contains(str(HOOK_API_VERSION)):
            return _failed(
                record,
                f"supports hook API {declared}, but apimodels {__version__} has hook API "
                f"{HOOK_API_VERSION}: install a release of "
                f"{record.package or 'the plugin'} made for hook API {HOOK_API_VERSION}, "
                "or uninstall it",
            )
    try:
        pm.register(plugin, name=ep.name)
    except Exception as exc:  # pluggy's validation names the hook and argument at fault
        return _failed(record, f"failed to register: {type(exc).__name__}: {exc}", exc)
    return record


def _declared_hook_api(ep: metadata.EntryPoint, plugin: object) -> str | None:
    """The plugin's declaration: on the loaded object, its module, or its top-level package
    (so one line in a package's ``__init__`` covers a second entry point in a submodule)."""
    top = ep.module.partition(".")[0]
    for holder in (plugin, sys.modules.get(ep.module), sys.modules.get(top)):
        value = getattr(holder, HOOK_API_ATTRIBUTE, None)
        if value is not None:
            return str(value)
    return None


def _failed(
    record: InstalledPlugin, why: str, cause: BaseException | None = None
) -> InstalledPlugin:
    status = "failed" if cause is not None else "incompatible"
    return replace(record, status=status, error=f"{record.label} {why}", cause=cause)


def check_plugins(catalog: Catalog) -> list[str]:
    """Raise ConfigError for a plugin that could not be loaded while the catalog needs it: it
    enables a provider of the plugin's package (``package = ...``) or name, or a policy of
    its name. Answer the other failures as warnings for startup to print."""
    needs: dict[str, str] = {}  # a package or entry-point name -> what in the catalog needs it
    for name, provider in catalog.providers.items():
        if provider.enabled:
            needs.setdefault(canonicalize_name(provider.package), f"provider {name!r}")
            needs.setdefault(name, f"provider {name!r}")
    for name, policy in catalog.policies.items():
        if policy.enabled:
            needs.setdefault(name, f"policy {name!r}")
    warnings = []
    for plugin in load_plugins():
        if plugin.loaded:
            continue
        package = canonicalize_name(plugin.package) if plugin.package else None
        needed_by = needs.get(plugin.name) or (package and needs.get(package))
        if needed_by:
            raise ConfigError(
                f"{plugin.error} (the catalog enables its {needed_by}: fix the plugin, or "
                "set enabled = false)"
            ) from plugin.cause
        warnings.append(f"{plugin.error} (not loaded; the catalog does not use it)")
    return warnings
