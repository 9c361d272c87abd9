"""What ``amount_usd`` may look like, over real HTTP: a plain ASCII decimal (string or JSON
number) of whole cents within the bounds. Python's ``Decimal()`` takes much more ("20_0",
fullwidth digits, "1e3", " 20", "+20"): each of those is a 400, and no order is made."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from test_topups_e2e import STRIPE_KEY, WHSEC, TopupsGateway, _gateway

from apimodels.testing import serve
from apimodels.topups.simulator import create_app as create_stripe
from support import Simulator

#: Raw JSON for ``amount_usd`` (the body is sent as written, so JSON numbers stay as typed).
BAD = [
    '"20_0"',
    '"1_000"',
    '"\uff12\uff10"',  # fullwidth digits
    '"\u0662\u0660"',  # Arabic-Indic digits
    '"1e3"',
    '"1E3"',
    '"20e0"',
    '" 20"',
    '"20 "',
    '"20\\n"',
    '"+20"',
    '"-20"',
    '"-0"',
    '"20."',
    '".50"',
    '"0x14"',
    '"20.5.0"',
    '"20,00"',
    '""',
    '"NaN"',
    '"Infinity"',
    '"-Infinity"',
    '"20.001"',
    "1e3",
    "2000e-2",
    "1.5E1",
    "-20",
    "-20.5",
    "20.001",
    "1e308",
    "1" + "0" * 400,
    "NaN",
    "Infinity",
    "-Infinity",
    "true",
    "false",
    "null",
    "[20]",
    '{"usd": 20}',
]


@pytest.fixture(scope="module")
def gw(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TopupsGateway]:
    with serve(create_stripe(STRIPE_KEY, WHSEC)) as stripe_url:
        tmp = tmp_path_factory.mktemp("amounts")
        server, _, _ = _gateway(simulator, stripe_url, tmp, datetime.now(UTC) - timedelta(hours=1))
        with serve(server.app) as url:
            yield TopupsGateway(url, server, "", "")


def post(gw: TopupsGateway, key: str, raw_amount: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/topups",
        content=f'{{"method": "card", "amount_usd": {raw_amount}}}'.encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=20,
    )


@pytest.mark.parametrize("raw", BAD)
def test_amounts_that_are_not_plain_decimals_are_refused(gw: TopupsGateway, raw: str) -> None:
    account, key = gw.new_account(f"amount-{random.random()}@example.com")
    r = post(gw, key, raw)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "amount_usd"
    assert error["code"] in ("invalid_value", "amount_out_of_range") and error["message"]
    count = "SELECT count(*) FROM topup_orders WHERE account_id = ?"
    assert gw.db.execute(count, (account,)).fetchone()[0] == 0


@pytest.mark.parametrize(
    ("raw", "usd"),
    [
        ('"20"', "20.000000"),
        ('"20.50"', "20.500000"),
        ('"0020.5"', "20.500000"),
        ('"5"', "5.000000"),
        ('"10000.00"', "10000.000000"),
        ("20", "20.000000"),
        ("19.99", "19.990000"),
        ("20.500", "20.500000"),
    ],
)
def test_plain_amounts_make_orders(gw: TopupsGateway, raw: str, usd: str) -> None:
    _, key = gw.new_account(f"amount-ok-{random.random()}@example.com")
    r = post(gw, key, raw)
    assert r.status_code == 201, r.text
    assert r.json()["amount_usd"] == usd
