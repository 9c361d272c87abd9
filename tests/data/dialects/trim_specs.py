"""Trim OpenAI's and Anthropic's published API descriptions to the schemas the dialect tests
validate against (tests/test_responses_e2e.py, tests/test_messages_e2e.py): the named
schemas and every component they reference, transitively.

    python trim_specs.py /path/to/openai/openapi.yaml /path/to/anthropic/openapi.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OPENAI = [
    "Response",
    "ResponseCreatedEvent",
    "ResponseInProgressEvent",
    "ResponseOutputItemAddedEvent",
    "ResponseOutputItemDoneEvent",
    "ResponseContentPartAddedEvent",
    "ResponseContentPartDoneEvent",
    "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent",
    "ResponseFunctionCallArgumentsDeltaEvent",
    "ResponseFunctionCallArgumentsDoneEvent",
    "ResponseCompletedEvent",
    "ResponseIncompleteEvent",
    "ResponseFailedEvent",
    "ResponseErrorEvent",
    "ErrorResponse",
]
ANTHROPIC = [
    "Message",
    "MessageStartEvent",
    "ContentBlockStartEvent",
    "ContentBlockDeltaEvent",
    "ContentBlockStopEvent",
    "MessageDeltaEvent",
    "MessageStopEvent",
    "Ping",
    "ErrorResponse",
    "CountMessageTokensResponse",
]


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[1])
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def trim(spec: dict[str, Any], names: list[str], source: str) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    kept: dict[str, Any] = {}
    todo = set(names)
    while todo:
        name = todo.pop()
        if name not in kept:
            kept[name] = schemas[name]
            todo |= refs(schemas[name])
    return {"SOURCE": source, "components": {"schemas": dict(sorted(kept.items()))}}


if __name__ == "__main__":
    here = Path(__file__).parent
    openai_spec = yaml.load(Path(sys.argv[1]).read_text(), Loader=yaml.CSafeLoader)
    anthropic_spec = json.loads(Path(sys.argv[2]).read_text())
    for spec, names, out in (
        (openai_spec, OPENAI, "openai-responses.schemas.json"),
        (anthropic_spec, ANTHROPIC, "anthropic-messages.schemas.json"),
    ):
        source = (Path(sys.argv[1 if spec is openai_spec else 2]).parent / "SOURCE").read_text()
        path = here / out
        path.write_text(json.dumps(trim(spec, names, source.strip()), indent=1) + "\n")
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
