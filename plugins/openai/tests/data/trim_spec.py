"""Trim OpenAI's published OpenAPI description to what apimodels uses.

Keeps the operations the OpenAI plugin and its simulator speak, and every component they
reference (transitively), so the tests carry a few hundred kilobytes instead of 3 MB.

    python trim_spec.py /path/to/openai-openapi/openapi.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OPERATIONS = {
    "/chat/completions": ["post"],
    "/embeddings": ["post"],
    "/images/generations": ["post"],
    "/audio/speech": ["post"],
    "/audio/transcriptions": ["post"],
    "/moderations": ["post"],
    "/models": ["get"],
    "/models/{model}": ["get"],
}


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
    todo = refs(paths)
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
        "servers": spec["servers"],
        "paths": paths,
        "components": {k: dict(sorted(v.items())) for k, v in sorted(components.items())},
    }


if __name__ == "__main__":
    source = Path(sys.argv[1])
    spec = yaml.load(source.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out = Path(__file__).with_name("openai-openapi.trimmed.json")
    out.write_text(json.dumps(trim(spec), indent=1, sort_keys=False) + "\n")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
