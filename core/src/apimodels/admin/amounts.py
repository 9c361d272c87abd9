"""USD amounts typed by an operator: exact decimal text -> integer micro-USD, no rounding."""

from __future__ import annotations

import re
from decimal import Decimal

from ..billing.money import MICROS_PER_USD
from ..errors import InvalidRequest

#: Digits with an optional fraction and sign: no exponent, no spaces, no underscores.
_AMOUNT = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def parse_usd(value: str, *, signed: bool = False, param: str = "amount_usd") -> int:
    """``"12.5"`` -> 12_500_000. Positive unless ``signed`` (then non-zero); a whole number
    of micro-USD (400 otherwise, naming ``param``)."""
    if not isinstance(value, str) or not _AMOUNT.fullmatch(value):
        raise InvalidRequest(
            f"'{param}' must be a decimal number of USD, e.g. \"12.50\"", param=param
        )
    micros = Decimal(value) * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise InvalidRequest(
            f"'{param}' {value} is not a whole number of micro-dollars", param=param
        )
    if micros == 0 or (not signed and micros < 0):
        raise InvalidRequest(
            f"'{param}' must be {'non-zero' if signed else 'positive'}", param=param
        )
    if abs(micros) > 10**15:  # a billion dollars: beyond any real grant, and the integers
        raise InvalidRequest(f"'{param}' is out of range", param=param)
    return int(micros)
