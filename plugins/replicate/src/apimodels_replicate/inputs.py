"""A model's input checked against its input schema, as Cog checks it: the subset of JSON
Schema that Replicate's input schemas use (``type``, ``enum``, ``minimum``, ``maximum``,
``maxLength``, ``required``, array ``items``), defaults filled in, unknown fields dropped.

Standard library only, so the simulator (and a plugin) can use it at run time without
``jsonschema``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


@dataclass(frozen=True)
class InvalidField:
    """One problem with one input field."""

    type: str  # required, type, enum, greater_than_equal, less_than_equal, max_length
    field: str  # e.g. "input.num_outputs"
    description: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "field": self.field, "description": self.description}


def _is_type(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False  # JSON true is not a number
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))


def _check(name: str, value: Any, schema: dict[str, Any]) -> list[InvalidField]:
    where = f"input.{name}"
    kind = schema.get("type")
    if kind and not _is_type(value, kind):
        return [
            InvalidField(
                "type", where, f"Invalid type. Expected: {kind}, given: {type(value).__name__}"
            )
        ]
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(map(str, schema["enum"]))
        return [InvalidField("enum", where, f"{name} must be one of the following: {allowed}")]
    problems = []
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(
            InvalidField(
                "greater_than_equal", where, f"Must be greater than or equal to {schema['minimum']}"
            )
        )
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(
            InvalidField(
                "less_than_equal", where, f"Must be less than or equal to {schema['maximum']}"
            )
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        problems.append(
            InvalidField(
                "max_length",
                where,
                f"String length must be less than or equal to {schema['maxLength']}",
            )
        )
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            problems += _check(f"{name}.{i}", item, schema["items"])
    return problems


def validate_input(schema: dict[str, Any], given: Any) -> tuple[dict[str, Any], list[InvalidField]]:
    """``given`` checked against ``schema`` (a model's ``Input`` schema): the input with its
    defaults filled in and unknown fields dropped, and the problems found (none when valid)."""
    if not isinstance(given, dict):
        return {}, [InvalidField("type", "input", "Invalid type. Expected: object")]
    properties: dict[str, Any] = schema.get("properties", {})
    problems = [
        InvalidField("required", f"input.{name}", f"{name} is required")
        for name in schema.get("required", [])
        if given.get(name) is None
    ]
    cleaned: dict[str, Any] = {}
    for name, spec in properties.items():
        value = given.get(name)
        if value is None:
            if "default" in spec:
                cleaned[name] = spec["default"]
            continue
        found = _check(name, value, spec)
        problems += found
        if not found:
            cleaned[name] = int(value) if spec.get("type") == "integer" else value
    return cleaned, problems


def describe(problems: list[InvalidField]) -> str:
    """The problems as Replicate's ``detail`` lists them: one ``- field: description`` line each."""
    return "".join(f"- {p.field}: {p.description}\n" for p in problems)
