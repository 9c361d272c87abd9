"""``fastjson.dumps``: orjson's speed, the standard library's JSON."""

from __future__ import annotations

import json

import pytest

from apimodels import fastjson
from apimodels.billing.money import usd_number

VALUES = [
    {"model": "m", "messages": [{"role": "user", "content": "héllo ✓ \U0001f600"}], "n": 1},
    {"usage": {"prompt_tokens": 12, "cost": "0.000006"}, "logprobs": None, "ok": True},
    [1, 2.5, -0.0, 123456789012, -9223372036854775807, 'a"b\\c\n</script>', {}],
]


@pytest.mark.parametrize("value", VALUES)
def test_same_json_as_the_standard_library(value: object) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert fastjson.dumps(value) == expected


def test_what_orjson_refuses_the_standard_library_writes() -> None:
    value = {"seed": 10**30, 1: "an int key"}
    assert fastjson.dumps(value) == b'{"seed":1000000000000000000000000000000,"1":"an int key"}'


def test_floats_read_back_the_same_and_nan_is_null() -> None:
    floats = [1e-7, 1e300, 0.1, -2.5e-308]
    assert json.loads(fastjson.dumps(floats)) == floats
    assert fastjson.dumps({"x": float("nan"), "y": float("inf")}) == b'{"x":null,"y":null}'


def test_a_lone_surrogate_is_written_escaped() -> None:
    # Half an emoji, as an upstream may split one across stream chunks.
    assert fastjson.dumps({"delta": "\ud83d", "n": 1}) == b'{"delta":"\\ud83d","n":1}'


def test_a_cost_is_an_exact_json_number() -> None:
    body = {"usage": {"cost": usd_number(135)}, "big": 2**70}  # 2**70: the stdlib's path
    assert fastjson.dumps({"usage": {"cost": usd_number(135)}}) == b'{"usage":{"cost":0.000135}}'
    assert fastjson.dumps({"cost": usd_number(1_234_567)}) == b'{"cost":1.234567}'
    assert json.loads(fastjson.dumps(body))["usage"]["cost"] == 0.000135


#: What orjson reads differently (integers beyond 64 bits as floats) or refuses (NaN, a
#: lone surrogate, a BOM, UTF-16, nesting past its limit): read as the standard library does.
READS = [
    b'{"id": "chatcmpl-1", "created": 1700000000, "usage": {"prompt_tokens": 12}}',
    b"18446744073709551616",
    b"-9223372036854775809",
    b'{"seed": 123456789012345678901234567890}',
    b"[1e400, 1e-400, 4.9e-324, 1.7976931348623159e308, -0.0, 0.1]",
    b"NaN",
    b'"\\ud800"',
    b'"\\ud83d\\ude00"',
    "\ufeff{}".encode(),
    '{"a": "é"}'.encode("utf-16"),
    b'{"a": "\xff"}',
    b'{"a": 1, "a": 2}',
    b"[1,]",
    b"[" * 2000 + b"]" * 2000,
    '{"delta": "h\u00e9llo"}',
    '"\ud800"',
]


@pytest.mark.parametrize("data", READS)
def test_loads_reads_as_the_standard_library(data: bytes | str) -> None:
    def read(reader: object) -> object:
        try:
            value = reader(data)  # type: ignore[operator]
        except (ValueError, RecursionError) as exc:
            return type(exc)
        return repr(value), type(value)

    assert read(fastjson.loads) == read(json.loads)
