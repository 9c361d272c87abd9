"""The sample Grafana dashboard (docs/grafana-dashboard.json) asks only for metrics the
gateway exports."""

from __future__ import annotations

import json
import re

import httpx

from support import ROOT, Gateway

SUFFIXES = {"counter": ("",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def test_the_dashboard_names_only_exported_metrics(gateway: Gateway) -> None:
    scrape = httpx.get(f"{gateway.url}/metrics").text
    exported = {
        name + suffix
        for name, kind in re.findall(r"(?m)^# TYPE (apimodels_\w+) (\w+)$", scrape)
        for suffix in SUFFIXES.get(kind, ("",))
    }
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = {name for e in exprs for name in re.findall(r"apimodels_\w+", e)}
    assert len(asked) >= 10
    assert asked <= exported, asked - exported
