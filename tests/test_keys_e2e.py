"""Several upstream keys for one provider: calls spread over them by weight, and a key the
upstream refuses rests while the others serve (the OpenAI simulator takes both keys and
logs which one each request bore, masked as OpenAI masks keys)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.testing import serve
from apimodels_openai.simulator import create_app, mask_key
from support import Gateway, Simulator, registry_for

KEY_A = "sk-sim-keys-aaaaaaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-sim-keys-bbbbbbbbbbbbbbbbbbbbbbbb"
MASKED = {mask_key(KEY_A): "A", mask_key(KEY_B): "B"}
CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

POOL = """
[[providers.openai.keys]]
env = "OPENAI_KEY_B"
weight = 3
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with serve(create_app(api_key=[KEY_A, KEY_B])) as url:
        yield Simulator(url)


@pytest.fixture
def gateway(sim: Simulator, tmp_path: Path) -> Iterator[Gateway]:
    registry = registry_for(sim.url, tmp_path, POOL)
    environ = {"OPENAI_API_KEY": KEY_A, "OPENAI_KEY_B": KEY_B}
    server = assemble(registry, tmp_path / "gateway.db", environ=environ)
    account = create_account(server.db, "keys@example.com")
    _, key = create_key(server.db, account["id"])
    server.ledger.post(account["id"], 10_000_000, kind="grant", reason="t", actor="tests")
    sim.reset()
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])


def chat(gateway: Gateway) -> httpx.Response:
    headers = {"authorization": f"Bearer {gateway.key}"}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers)


def keys_used(sim: Simulator, after: int = 0) -> list[str]:
    return [MASKED[r["key"]] for r in sim.requests() if r["seq"] > after]


def test_calls_spread_over_the_keys_by_weight(gateway: Gateway, sim: Simulator) -> None:
    before = sim.received()
    for _ in range(80):
        assert chat(gateway).status_code == 200
    used = Counter(keys_used(sim, after=before))
    assert used["A"] + used["B"] == 80
    # B weighs 3, A 1: B serves about 60 of 80 (this fails once in millions of runs)
    assert 8 <= used["A"] <= 34, used


@pytest.mark.parametrize("status", [429, 401])
def test_a_refused_key_rests_while_the_other_serves(
    gateway: Gateway, sim: Simulator, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    sim.knobs(fail=[{"kind": "error", "status": status}])
    before = sim.received()
    with caplog.at_level(logging.WARNING, logger="apimodels"):
        refused = chat(gateway)
    assert refused.status_code == {429: 429, 401: 502}[status]
    assert KEY_A not in refused.text and KEY_B not in refused.text
    (resting,) = keys_used(sim, after=before)
    assert any("rests 60 s" in r.getMessage() for r in caplog.records)
    seen = sim.received()
    for _ in range(20):
        assert chat(gateway).status_code == 200
    assert resting not in keys_used(sim, after=seen)  # the other key served them all
    pool = gateway.server.gateway.providers["openai"].keys
    assert pool is not None
    health = {k["env"]: k for k in pool.health()}
    env = {"A": "OPENAI_API_KEY", "B": "OPENAI_KEY_B"}[resting]
    assert health[env]["refusals"] == 1 and health[env]["resting_seconds"] > 50


def test_one_key_makes_no_pool(sim: Simulator, tmp_path: Path) -> None:
    registry = registry_for(sim.url, tmp_path, POOL)
    server = assemble(registry, tmp_path / "g.db", environ={"OPENAI_API_KEY": KEY_A})
    assert server.gateway.providers["openai"].keys is None
    assert any("OPENAI_KEY_B is not set" in n for n in server.gateway.notices)
