"""Writing JSON on the path every call takes: orjson, with the standard library for what
orjson refuses.

A chat call writes JSON twice (the upstream's request and the client's answer), a stream
once per event. The standard library's encoder took about 3 % of a request; orjson takes
a tenth of that. Reading stays with the standard library: orjson reads an integer beyond
64 bits as a float, silently, and a client's number must reach the upstream as sent.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps"]


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as ``json.dumps(value, separators=(",", ":"),
    ensure_ascii=False).encode()`` writes it, except that floats take their shortest form
    (``1e-7``, ``0.00001``), NaN and infinities become ``null`` rather than invalid JSON, and
    dates, UUIDs, enums and dataclasses are written rather than refused."""
    try:
        return orjson.dumps(value)
    except TypeError:  # JSONEncodeError: ints beyond 64 bits, keys that are not strings...
        # ASCII with escapes: a lone surrogate (half an emoji from an upstream) encodes too.
        return json.dumps(value, separators=(",", ":")).encode()
