"""The plugin manager: hook specs, the core's own fallbacks, and installed plugins.

Installed plugins are found through the ``apimodels`` entry-point group. Two environment
variables help when debugging:

- ``APIMODELS_LOAD_PLUGINS``: comma-separated entry-point names to load (empty: none).
- ``APIMODELS_TRACE_PLUGINS=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .policy import rules as policy_rules
from .providers import default_hooks
from .providers.runtime import trace_hook_calls

GROUP = "apimodels"

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)
pm.register(default_hooks, name="apimodels.providers.default_hooks")
pm.register(policy_rules, name="apimodels.policy.rules")  # the built-in `rules` policy


def _load_installed() -> None:
    allowed = os.environ.get("APIMODELS_LOAD_PLUGINS")
    if allowed is None:
        pm.load_setuptools_entrypoints(GROUP)
        return
    names = {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in metadata.entry_points(group=GROUP):
        if ep.name in names and pm.get_plugin(ep.name) is None:
            pm.register(ep.load(), name=ep.name)


_load_installed()
if os.environ.get("APIMODELS_TRACE_PLUGINS"):
    trace_hook_calls(pm)


def get_plugins() -> list[dict[str, Any]]:
    """Installed plugins: name, hooks implemented, and the distribution's name and version."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for plugin in pm.get_plugins():
        if plugin is default_hooks:
            continue
        info: dict[str, Any] = {
            "name": pm.get_name(plugin),
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        }
        dist = dists.get(id(plugin))
        if dist is not None:
            info["package"] = dist.project_name
            info["version"] = dist.version
        out.append(info)
    return sorted(out, key=lambda p: p["name"] or "")
