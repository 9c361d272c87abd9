"""Trim ElevenLabs' published OpenAPI description to what apimodels uses.

Keeps the operations the ElevenLabs plugin and its simulator speak, and every component
they reference (transitively), so the tests carry tens of kilobytes instead of 3.5 MB.

    python trim_spec.py /path/to/elevenlabs/openapi.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OPERATIONS = {
    "/v1/text-to-speech/{voice_id}": ["post"],
    "/v1/text-to-speech/{voice_id}/stream": ["post"],
    "/v1/voices": ["get"],
    "/v1/models": ["get"],
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
        "paths": paths,
        "components": {k: dict(sorted(v.items())) for k, v in sorted(components.items())},
    }


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(__file__).with_name("elevenlabs-openapi.trimmed.json")
    out.write_text(json.dumps(trim(spec), indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
