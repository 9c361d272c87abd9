"""JSON on the path every call takes: orjson, with the standard library for what orjson
refuses or would read differently.

A chat call writes JSON twice (the upstream's request and the client's answer), a stream
once per event, and reads it as often. The standard library's encoder took about 3 % of a
request; orjson takes a tenth of that, and reads a small answer in a sixth of the time.
orjson reads an integer beyond 64 bits as a float, silently, and a number must reach the
other side as sent: text with a run of 19 digits or more (which any such integer has) is
read by the standard library, and so is anything orjson refuses (NaN, a lone surrogate,
UTF-16...), which then reads, or fails, exactly as it always did.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

#: Every digit as 0 and every other byte as a space: a run of 19 digits, which an integer
#: orjson would read as a float has (2**63 has 19), is then one ``in`` away (a regex
#: search took three times as long as orjson's whole read).
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


def loads(data: bytes | str, fallback: Callable[[Any], Any] = json.loads) -> Any:
    """``json.loads(data)``: the same value or the same error, mostly read by orjson.
    ``fallback`` reads what orjson does not (a stricter reader of the standard library's)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _LONG_RUN not in raw.translate(_DIGITS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # the standard library's value (NaN, UTF-16...) or error
    return fallback(data)


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
