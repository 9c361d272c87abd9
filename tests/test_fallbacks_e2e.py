"""Fallbacks end to end: a second instance of the OpenAI provider (``openai-backup``, on the
same simulator, at other prices) serves when the first fails in a way it may not; the call
is billed once, at the price of the route that served, and names it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from support import Gateway, Simulator, gateway_of_its_own

PRIMARY, BACKUP = "openai/gpt-4o-mini", "openai-backup/gpt-4o-mini"
BACKUP_REGISTRY = f"""
[providers.openai-backup]
package = "apimodels-openai"
kind = "openai"
api_key_env = "OPENAI_API_KEY"

[models."{BACKUP}"]
provider = "openai-backup"
upstream = "gpt-4o-mini"
modality = "chat"
context_tokens = 128000
max_output_tokens = 16384
pricing = {{ input_per_1m = "10", output_per_1m = "20" }}
"""


def with_backup(registry: str) -> str:
    base_url = re.search(r'(?m)^base_url = "(.*)"', registry)
    assert base_url is not None
    backup = BACKUP_REGISTRY.replace(
        'kind = "openai"', f'kind = "openai"\nbase_url = "{base_url[1]}"'
    )
    primary = f'[models."{PRIMARY}"]\n'
    return registry.replace(primary, primary + f'fallbacks = ["{BACKUP}"]\n') + backup


@pytest.fixture(scope="module")
def gateway(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with gateway_of_its_own(simulator, tmp_path_factory.mktemp("fallbacks"), with_backup) as gw:
        yield gw


def balance(gateway: Gateway) -> int:
    return gateway.ledger.balance(gateway.account_id).balance_micros


def post(gateway: Gateway, body: dict, **kw: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {gateway.key}"}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


CHAT = {"model": PRIMARY, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}


def usage_row(gateway: Gateway, request_id: str) -> dict:
    return next(gateway.db.query("SELECT * FROM usage WHERE request_id = ?", [request_id]))


def test_the_backup_serves_when_the_primary_fails_billed_once_at_its_price(
    gateway: Gateway, simulator: Simulator
) -> None:
    simulator.knobs(fail=[{"kind": "error", "status": 503}])
    before, seen = balance(gateway), simulator.received()
    r = post(gateway, CHAT)
    assert r.status_code == 200, r.text
    assert r.headers["x-apimodels-route"] == BACKUP
    assert simulator.received() - seen == 2  # the primary's attempt, then the backup's
    usage = r.json()["usage"]
    cost = usage["prompt_tokens"] * 10 + usage["completion_tokens"] * 20  # the backup's prices
    assert before - balance(gateway) == cost
    row = usage_row(gateway, r.headers["x-request-id"])
    assert (row["model"], row["provider"], row["cost_micros"]) == (BACKUP, "openai-backup", cost)


@pytest.mark.parametrize("status", [402, 429, 500, 502])
def test_rate_limits_and_upstream_failures_fall_through(
    gateway: Gateway, simulator: Simulator, status: int
) -> None:
    simulator.knobs(fail=[{"kind": "error", "status": status}])
    r = post(gateway, CHAT)
    assert r.status_code == 200 and r.headers["x-apimodels-route"] == BACKUP


def test_a_call_no_route_serves_fails_once_free(gateway: Gateway, simulator: Simulator) -> None:
    simulator.knobs(fail=[{"kind": "error", "status": 503}, {"kind": "error", "status": 503}])
    before = balance(gateway)
    r = post(gateway, CHAT)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert balance(gateway) == before
    assert usage_row(gateway, r.headers["x-request-id"])["cost_micros"] == 0


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        ({"kind": "error", "status": 400}, 400),
        ({"kind": "error", "status": 400, "code": "content_policy_violation"}, 403),
    ],
)
def test_bad_input_and_refusals_never_fall_through(
    gateway: Gateway, simulator: Simulator, failure: dict, status: int
) -> None:
    simulator.knobs(fail=[failure])
    before, seen = balance(gateway), simulator.received()
    r = post(gateway, CHAT)
    assert r.status_code == status, r.text
    assert simulator.received() - seen == 1
    assert balance(gateway) == before


def test_a_stream_falls_back_before_its_first_byte(gateway: Gateway, simulator: Simulator) -> None:
    simulator.knobs(fail=[{"kind": "error", "status": 503}])
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0)
    before = balance(gateway)
    with client.chat.completions.with_streaming_response.create(
        **CHAT, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["x-apimodels-route"] == BACKUP
        chunks = list(response.parse())
    usage = chunks[-1].usage
    assert usage is not None
    cost = usage.prompt_tokens * 10 + usage.completion_tokens * 20
    assert before - balance(gateway) == cost


def test_the_request_may_name_its_own_fallbacks(gateway: Gateway, simulator: Simulator) -> None:
    simulator.knobs(fail=[{"kind": "error", "status": 503}])
    body = {**CHAT, "model": "openai/gpt-4.1-mini", "models": [BACKUP]}
    r = post(gateway, body)
    assert r.status_code == 200 and r.headers["x-apimodels-route"] == BACKUP
    sent = simulator.requests()[-1]["json"]
    assert "models" not in sent  # the gateway's field, never the upstream's


def test_models_must_be_a_list_of_ids(gateway: Gateway) -> None:
    r = post(gateway, {**CHAT, "models": "openai/gpt-4.1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "models"


def test_without_failure_the_primary_serves_and_says_so(gateway: Gateway) -> None:
    r = post(gateway, CHAT)
    assert r.status_code == 200 and r.headers["x-apimodels-route"] == PRIMARY


def test_a_catalog_fallback_must_be_another_model_of_its_modality(tmp_path: Path) -> None:
    from apimodels.catalog import parse_catalog
    from apimodels.errors import ConfigError

    data = {
        "providers": {"p": {"package": "x"}},
        "models": {
            "p/a": {
                "provider": "p",
                "upstream": "a",
                "modality": "chat",
                "fallbacks": ["p/e"],
                "pricing": {"input_per_1m": "1", "output_per_1m": "1"},
            },
            "p/e": {
                "provider": "p",
                "upstream": "e",
                "modality": "embedding",
                "pricing": {"input_per_1m": "1"},
            },
        },
    }
    with pytest.raises(ConfigError, match="falls back to 'p/e'"):
        parse_catalog(data)


def test_an_upstream_402_is_the_gateways_account_not_the_clients(
    gateway: Gateway, simulator: Simulator
) -> None:
    simulator.knobs(fail=[{"kind": "error", "status": 402}, {"kind": "error", "status": 402}])
    before = balance(gateway)
    r = post(gateway, CHAT)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_payment_required"
    assert balance(gateway) == before
