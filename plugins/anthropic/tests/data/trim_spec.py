"""Trim Anthropic's published OpenAPI description to what apimodels uses.

Keeps the operations the Anthropic plugin and its simulator speak, the stream event
schemas, and every component they reference (transitively).

    python trim_spec.py /path/to/openapi.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OPERATIONS = {"/v1/messages": ["post"], "/v1/messages/count_tokens": ["post"]}
#: Components the tests read by name (stream events are not an operation's response).
SCHEMAS = ("MessageStreamEvent", "ErrorResponse")


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value)
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def trim(spec: dict[str, Any]) -> dict[str, Any]:
    paths = {p: {m: spec["paths"][p][m] for m in methods} for p, methods in OPERATIONS.items()}
    components: dict[str, dict[str, Any]] = {}
    todo = refs(paths) | {f"#/components/schemas/{name}" for name in SCHEMAS}
    while todo:
        ref = todo.pop()
        _, _, kind, name = ref.split("/", 3)
        if name in components.get(kind, {}):
            continue
        node = spec["components"][kind][name]
        components.setdefault(kind, {})[name] = node
        todo |= refs(node)
    return {
        "openapi": spec["openapi"],
        "info": spec["info"],
        "paths": paths,
        "components": {k: dict(sorted(v.items())) for k, v in sorted(components.items())},
    }


if __name__ == "__main__":
    source = Path(sys.argv[1])
    out = Path(__file__).with_name("anthropic-openapi.trimmed.json")
    out.write_text(json.dumps(trim(json.loads(source.read_text())), indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
