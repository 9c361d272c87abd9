"""Validates the gateway's Responses API and Messages API bodies and stream events against
the schemas of OpenAI's and Anthropic's published descriptions (tests/data/dialects)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DATA = Path(__file__).parent / "data" / "dialects"


class Schemas:
    def __init__(self, path: Path) -> None:
        self.spec = json.loads(path.read_text())
        self.registry = Registry().with_resource(
            "urn:spec", Resource(contents=self.spec, specification=DRAFT202012)
        )

    def validate(self, name: str, body: Any) -> None:
        """Assert that ``body`` is a valid ``name`` (a component schema)."""
        assert name in self.spec["components"]["schemas"], f"no schema {name}"
        validator = Draft202012Validator(
            {"$ref": f"urn:spec#/components/schemas/{name}"}, registry=self.registry
        )
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"{name} does not match the published schema:"]
            for e in errors[:5]:
                where = "/".join(map(str, e.absolute_path)) or "(body)"
                lines.append(f"  {where}: {e.message[:300]}")
            raise AssertionError("\n".join(lines))


@cache
def openai() -> Schemas:
    return Schemas(DATA / "openai-responses.schemas.json")


@cache
def anthropic() -> Schemas:
    return Schemas(DATA / "anthropic-messages.schemas.json")


#: The Responses API's stream events this gateway writes, by type, and their schemas.
RESPONSE_EVENTS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
}

#: Anthropic's stream events, by name, and their schemas.
MESSAGE_EVENTS = {
    "message_start": "MessageStartEvent",
    "content_block_start": "ContentBlockStartEvent",
    "content_block_delta": "ContentBlockDeltaEvent",
    "content_block_stop": "ContentBlockStopEvent",
    "message_delta": "MessageDeltaEvent",
    "message_stop": "MessageStopEvent",
    "ping": "Ping",
    "error": "ErrorResponse",
}


def sse_events(lines: list[str]) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, data) of each server-sent event in a stream's lines."""
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
            name = None
    return events
