"""Checks requests and responses against OpenAI's published OpenAPI description.

The description is the trimmed copy in ``data/`` (see ``data/SOURCE``), so the checks run
from a fresh clone. The JSON Schema work (Draft 2020-12, a ``referencing`` registry for the
``#/components/...`` refs, OpenAPI 3.0's ``nullable`` read as "or null") is
``apimodels.testing.OpenAPI``; this module adds what OpenAI's description needs on top:

- paths as a client requests them (``/v1/models/gpt-4o``) or as the description writes
  them (``/models/{model}``);
- 4xx and 5xx answers checked against ``ErrorResponse`` (the description documents no error
  bodies, only a bare 429 here and there);
- multipart requests given as their form fields (text, as sent): each is converted to the
  type its schema asks for, ``name[]`` fields gathered into arrays, files skipped;
- audio answers (documented as ``application/octet-stream``) checked as non-empty bytes;
- a ``oneOf`` at the top of a response schema read as ``anyOf``: OpenAI's unions overlap
  (every verbose transcription is also a plain one), so ``oneOf`` would refuse valid answers.

Usable from any test of the repository: load this file by path (it is not a package).
Every failure is an ``AssertionError`` naming the operation, the field and the rule.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from apimodels.testing import OpenAPI

DESCRIPTION = Path(__file__).parent / "data" / "openai-openapi.trimmed.json"


@cache
def spec() -> OpenAPI:
    return OpenAPI.load(DESCRIPTION)


def operation_path(path: str) -> str:
    """The description's path for a requested one: ``/v1/models/x`` -> ``/models/{model}``."""
    path = path.split("?", 1)[0]
    path = path.removeprefix("/v1") if path.startswith("/v1/") else path
    paths = spec().spec["paths"]
    if path in paths:
        return path
    for template in paths:
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return template
    raise AssertionError(f"the description has no path {path}")


def _operation(method: str, path: str) -> dict[str, Any]:
    try:
        return spec().spec["paths"][path][method.lower()]
    except KeyError:
        raise AssertionError(f"the description has no {method.upper()} {path}") from None


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = spec().spec["components"]["schemas"][name]
    return schema


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a property schema allows (looking into anyOf / oneOf)."""
    schema = _resolve(schema)
    found = {schema["type"]} if isinstance(schema.get("type"), str) else set(schema.get("type", []))
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        found |= _types(branch)
    return found


def _convert(value: Any, types: set[str]) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if "integer" in types and re.fullmatch(r"-?\d+", value):
            return int(value)
        if "number" in types:
            return float(value)
    except ValueError:
        return value
    if "boolean" in types and value in ("true", "false"):
        return value == "true"
    return value


def form_to_object(schema: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Multipart form fields as the object the request schema describes."""
    properties = _resolve(schema).get("properties", {})
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = key.removesuffix("[]")
        prop = properties.get(name, {})
        if _resolve(prop).get("format") == "binary":
            out[name] = "<binary>"  # the file itself is not checked
        elif key.endswith("[]") or ("array" in _types(prop) and isinstance(value, list)):
            items = _resolve(prop).get("items", {})
            values = value if isinstance(value, list) else [value]
            out[name] = [_convert(v, _types(items)) for v in values]
        else:
            out[name] = _convert(value, _types(prop))
    return out


def validate_request(
    method: str, path: str, body: dict[str, Any] | None, *, content_type: str = "application/json"
) -> None:
    """Check a request body against the operation's requestBody schema. For multipart, pass
    the form fields (files may be given as anything: they are skipped)."""
    template = operation_path(path)
    operation = _operation(method, template)
    if "requestBody" not in operation:
        if body:
            raise AssertionError(f"{method.upper()} {template} takes no body")
        return
    content_type = content_type.split(";")[0].strip()
    if content_type == "multipart/form-data":
        schema = operation["requestBody"]["content"].get(content_type, {}).get("schema", {})
        body = form_to_object(schema, body or {})
    spec().validate_request(method, template, body, content_type=content_type)


def _binary(schema: dict[str, Any]) -> bool:
    return _resolve(schema).get("format") == "binary"


def validate_response(
    method: str,
    path: str,
    status: int,
    body: Any,
    *,
    content_type: str = "application/json",
) -> None:
    """Check a response body against the schema of its status (else ``default``); an error
    status without a documented body against ``ErrorResponse``."""
    template = operation_path(path)
    responses = _operation(method, template)["responses"]
    content_type = content_type.split(";")[0].strip()
    documented = responses.get(str(status), responses.get("default", {})).get("content", {})
    what = f"response {status} to {method.upper()} {template}"
    if status >= 400 and content_type not in documented:
        validate_schema("ErrorResponse", body)
        return
    if content_type.startswith("audio/") and "application/octet-stream" in documented:
        content_type = "application/octet-stream"
    if content_type not in documented:
        raise AssertionError(
            f"{what}: the description documents {', '.join(documented) or 'no body'}, not {content_type}"
        )
    schema = documented[content_type].get("schema", {})
    if _binary(schema):
        if not isinstance(body, bytes | bytearray) or not body:
            raise AssertionError(f"{what}: expected non-empty bytes")
        return
    branches = schema.get("oneOf")
    if branches and all("$ref" in b for b in branches):
        _any_of(what, [b["$ref"].rsplit("/", 1)[1] for b in branches], body)
        return
    spec().validate_response(method, template, status, body, content_type=content_type)


def _any_of(what: str, names: list[str], body: Any) -> None:
    failures = []
    for name in names:
        try:
            validate_schema(name, body)
            return
        except AssertionError as error:
            failures.append(str(error))
    raise AssertionError(f"{what} matches none of {', '.join(names)}:\n" + "\n".join(failures))


def validate_schema(name: str, body: Any) -> None:
    """Check a body against a named component schema."""
    spec().validate_schema(name, body)


def validate_stream_chunk(chunk: dict[str, Any]) -> None:
    """Check one ``data:`` event of a chat completion stream."""
    validate_schema("CreateChatCompletionStreamResponse", chunk)
