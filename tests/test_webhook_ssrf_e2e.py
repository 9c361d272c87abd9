"""Task webhooks to IPv4 addresses hidden in IPv6 forms (NAT64, 6to4, IPv4-compatible, SIIT),
to site-local and to Teredo are refused at submission, over HTTP: nothing queued or held."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from support import Gateway, Simulator, gateway_of_its_own

HIDDEN = [
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "::127.0.0.1",  # IPv4-compatible
    "::ffff:0:7f00:1",  # SIIT
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 of 169.254.169.254
    "fec0::1",  # site-local
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo
]


@pytest.fixture(scope="module")
def strict_gateway(
    simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway with the default webhook rules (no allow_private_webhooks)."""
    with gateway_of_its_own(simulator, tmp_path_factory.mktemp("ssrf6")) as gateway:
        yield gateway


@pytest.mark.parametrize("address", HIDDEN)
def test_webhooks_to_hidden_internal_addresses_are_refused(
    strict_gateway: Gateway, address: str
) -> None:
    r = httpx.post(
        f"{strict_gateway.url}/v1/tasks",
        json={
            "model": "openai/gpt-4o-mini",
            "input": {"messages": [{"role": "user", "content": "x"}]},
            "webhook": f"https://[{address}]/hook",
        },
        headers={"authorization": f"Bearer {strict_gateway.key}"},
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "webhook"
    assert error["code"] == "webhook_not_allowed"
    assert strict_gateway.db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    assert strict_gateway.ledger.balance(strict_gateway.account_id).held_micros == 0
