"""Writing JSON on the path every call takes: orjson, with the standard library for what
orjson refuses.

A chat call writes JSON twice (the upstream's request and the client's answer), a stream
once per event. The standard library's encoder took about 3 % of a request; orjson takes
a tenth of that. Reading stays with the standard library: orjson reads an integer beyond
64 bits as a float, silently, and a client's number must reach the upstream as sent.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["dumps"]


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as ``json.dumps(value, separators=(",", ":"),
    ensure_ascii=False).encode()`` writes it, except that floats take their shortest form
    (``1e-7``, ``0.00001``), NaN and infinities become ``null`` rather than invalid JSON,
    dates, UUIDs, enums and dataclasses are written rather than refused, and a ``Decimal``
    (a cost) is a number written with its own digits (``0.000135``)."""
    try:
        return orjson.dumps(value, default=_exact)
    except TypeError:  # JSONEncodeError: ints beyond 64 bits, keys that are not strings...
        # ASCII with escapes: a lone surrogate (half an emoji from an upstream) encodes too.
        return json.dumps(value, separators=(",", ":"), default=_float).encode()


def _exact(value: Any) -> Any:
    """A Decimal (a cost, ``money.usd_number``) as a JSON number with its own digits."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON")


def _float(value: Any) -> Any:
    """The standard library's fallback: a Decimal as a float, whose shortest form has the
    same digits for an amount of six places."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
