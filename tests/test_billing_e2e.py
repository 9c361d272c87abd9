"""Billing end to end: every call through the real server is charged exactly once, or not
at all when it fails, and says what it cost."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import openai
import pytest

from apimodels import ChatRequest
from apimodels.providers import dispatch
from apimodels.server import assemble
from apimodels.store.accounts import (
    KeyStore,
    create_account,
    create_key,
    set_key_limits,
    set_status,
)
from apimodels.testing import serve
from support import SIM_KEY, Gateway, Simulator, registry_for

CHAT = {
    "model": "openai/gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 10,
}


@pytest.fixture(scope="module")
def gateway(gateway_on_each_backend: Gateway) -> Gateway:
    """This module's tests run on SQLite and on PostgreSQL."""
    return gateway_on_each_backend


def balance(gateway: Gateway, account_id: str) -> tuple[int, int]:
    b = gateway.ledger.balance(account_id)
    return b.balance_micros, b.held_micros


def rows(gateway: Gateway, account_id: str) -> list[dict]:
    return list(
        gateway.db.query(
            "SELECT * FROM usage WHERE account_id = ? ORDER BY created_at", [account_id]
        )
    )


def hold_for(gateway: Gateway, body: dict) -> int:
    route = gateway.server.gateway.routes[body["model"]]
    return dispatch.estimate(route, ChatRequest.model_validate(body))[1]


def post(gateway: Gateway, key: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=30,
    )


def test_concurrent_calls_never_overspend(gateway: Gateway, simulator: Simulator) -> None:
    k, n = 3, 8
    account, key = gateway.new_account("race@example.com", hold_for(gateway, CHAT) * k)
    simulator.knobs(latency=0.5)  # every hold is taken before any call settles
    results: list[int] = []

    def call() -> None:
        results.append(post(gateway, key, CHAT).status_code)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * k + [402] * (n - k)
    final, held = balance(gateway, account)
    assert final >= 0 and held == 0
    charges = sum(r["cost_micros"] for r in rows(gateway, account))
    assert hold_for(gateway, CHAT) * k - final == charges
    assert gateway.ledger.check() == []


def test_402_is_openai_shaped_and_sends_nothing(gateway: Gateway, simulator: Simulator) -> None:
    account, key = gateway.new_account("poor@example.com", 1)
    before = simulator.received()
    with (
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as client,
        pytest.raises(openai.APIStatusError) as info,
    ):
        client.chat.completions.create(**CHAT)
    assert info.value.status_code == 402 and info.value.code == "insufficient_credits"
    assert simulator.received() == before
    assert balance(gateway, account) == (1, 0) and rows(gateway, account) == []


@pytest.mark.parametrize("kind", ["error", "malformed", "cut_stream"])
def test_failed_calls_cost_nothing_and_leave_a_failed_row(
    gateway: Gateway, simulator: Simulator, kind: str
) -> None:
    account, key = gateway.new_account(f"fail-{kind}@example.com", 1_000_000)
    simulator.knobs(fail=[{"kind": kind, "status": 500}])
    body = CHAT | {"stream": True} if kind == "cut_stream" else CHAT
    r = post(gateway, key, body)
    if kind == "cut_stream":
        assert r.status_code == 200 and '"error"' in r.text.strip().splitlines()[-1]
    else:
        assert r.status_code == 502
    assert balance(gateway, account) == (1_000_000, 0)
    [row] = rows(gateway, account)
    assert row["status"] == "failed" and row["cost_micros"] == 0 and row["hold_state"] == "released"
    assert row["error_code"]


def test_receipts_match_the_ledger(gateway: Gateway) -> None:
    _account, key = gateway.new_account("receipts@example.com", 5_000_000)
    headers = {"authorization": f"Bearer {key}"}
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(**CHAT)
        done = raw.parse()
        chunks = list(
            client.chat.completions.create(
                **CHAT, stream=True, stream_options={"include_usage": True}
            )
        )
    request_id = raw.headers["x-request-id"]
    cost = Decimal(str(done.usage.model_extra["cost"]))
    generation = httpx.get(f"{gateway.url}/v1/generation/{request_id}", headers=headers).json()
    assert generation["status"] == "succeeded" and Decimal(str(generation["cost"])) == cost
    assert generation["usage"]["output_tokens"] == done.usage.completion_tokens
    assert generation["unit_prices"]["output_per_1m"] == "0.60"
    stream_cost = Decimal(str(chunks[-1].usage.model_extra["cost"]))
    credits = httpx.get(f"{gateway.url}/v1/credits", headers=headers).json()
    assert credits["currency"] == "USD" and credits["pending_holds"] == "0.000000"
    assert Decimal(credits["balance"]) == Decimal("5") - cost - stream_cost
    page = httpx.get(f"{gateway.url}/v1/usage", headers=headers, params={"limit": 1}).json()
    assert page["has_more"] is True and page["data"][0]["stream"] is True
    rest = httpx.get(
        f"{gateway.url}/v1/usage",
        headers=headers,
        params={"limit": 1, "starting_after": page["data"][0]["id"]},
    ).json()
    assert rest["data"][0]["id"] == request_id and rest["has_more"] is False
    empty = httpx.get(
        f"{gateway.url}/v1/usage", headers=headers, params={"model": "openai/gpt-4o"}
    ).json()
    assert empty["data"] == []
    future = httpx.get(
        f"{gateway.url}/v1/usage", headers=headers, params={"since": str(time.time() + 60)}
    ).json()
    assert future["data"] == []
    # another account sees none of it
    _, other = gateway.new_account("nosy@example.com")
    r = httpx.get(
        f"{gateway.url}/v1/generation/{request_id}", headers={"authorization": f"Bearer {other}"}
    )
    assert r.status_code == 404 and request_id in r.json()["error"]["message"]
    assert (
        httpx.get(f"{gateway.url}/v1/usage", headers={"authorization": f"Bearer {other}"}).json()[
            "data"
        ]
        == []
    )
    assert (
        httpx.get(f"{gateway.url}/v1/usage", headers=headers, params={"limit": 0}).status_code
        == 400
    )


def test_idempotent_retries_are_charged_once(gateway: Gateway, simulator: Simulator) -> None:
    account, key = gateway.new_account("idem@example.com", 5_000_000)
    first = post(gateway, key, CHAT, **{"Idempotency-Key": "order-1"})
    second = post(gateway, key, CHAT, **{"Idempotency-Key": "order-1"})
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json() and second.headers["idempotent-replayed"] == "true"
    assert second.headers["x-apimodels-cost"] == first.headers["x-apimodels-cost"]
    assert len(rows(gateway, account)) == 1
    other = post(gateway, key, CHAT | {"max_tokens": 5}, **{"Idempotency-Key": "order-1"})
    assert other.status_code == 400 and other.json()["error"]["code"] == "idempotency_key_reused"
    # a repeat while the first is in flight answers 409
    simulator.knobs(latency=0.6)
    slow: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: slow.append(post(gateway, key, CHAT, **{"Idempotency-Key": "order-2"}))
    )
    t.start()
    time.sleep(0.3)
    busy = post(gateway, key, CHAT, **{"Idempotency-Key": "order-2"})
    t.join()
    assert busy.status_code == 409 and busy.headers["retry-after"] == "1"
    assert slow[0].status_code == 200
    # a failed first attempt is not stored: the retry runs (and is charged once)
    simulator.knobs(latency=0, fail=[{"kind": "error", "status": 500}])
    assert post(gateway, key, CHAT, **{"Idempotency-Key": "order-3"}).status_code == 502
    assert post(gateway, key, CHAT, **{"Idempotency-Key": "order-3"}).status_code == 200
    succeeded = [r for r in rows(gateway, account) if r["status"] == "succeeded"]
    assert len(succeeded) == 3
    assert gateway.ledger.check() == []


def test_key_limits(gateway: Gateway) -> None:
    account, key = gateway.new_account("limited@example.com", 5_000_000)
    key_id = KeyStore(gateway.db).authenticate(f"Bearer {key}").key_id
    set_key_limits(gateway.db, key_id, rpm=2, daily_cap_micros=None, total_cap_micros=None)
    gateway.server.keys.forget()
    codes = [post(gateway, key, CHAT).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = post(gateway, key, CHAT)
    assert r.json()["error"]["code"] == "key_rate_limit" and int(r.headers["retry-after"]) >= 1
    set_key_limits(
        gateway.db,
        key_id,
        rpm=None,
        daily_cap_micros=sum(r["cost_micros"] for r in rows(gateway, account))
        + hold_for(gateway, CHAT)
        + 1,
        total_cap_micros=None,
    )
    gateway.server.keys.forget()
    assert post(gateway, key, CHAT).status_code == 200
    capped = post(gateway, key, CHAT)  # spent + the next hold exceed the daily cap
    assert capped.status_code == 429 and capped.json()["error"]["code"] == "key_daily_cap"
    assert 0 < int(capped.headers["retry-after"]) <= 86400


def test_suspended_and_closed_accounts(gateway: Gateway) -> None:
    account, key = gateway.new_account("status@example.com", 1_000_000)
    set_status(gateway.db, account, "suspended", "chargeback under review")
    gateway.server.keys.forget()
    r = post(gateway, key, CHAT)
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_suspended"
    assert "chargeback under review" in r.json()["error"]["message"]
    set_status(gateway.db, account, "active", "resolved")
    gateway.server.keys.forget()
    assert post(gateway, key, CHAT).status_code == 200
    set_status(gateway.db, account, "closed", "user asked")
    gateway.server.keys.forget()
    assert post(gateway, key, CHAT).status_code == 401


def test_client_that_leaves_a_stream_is_charged_for_what_the_upstream_produced(
    gateway: Gateway, simulator: Simulator
) -> None:
    account, key = gateway.new_account("leaver@example.com", 5_000_000)
    simulator.knobs(stream_delay=0.05)
    body = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 15
    while not (found := rows(gateway, account)):  # written once the upstream finished
        assert time.monotonic() < deadline, "the stream was never settled"
        time.sleep(0.05)
    [row] = found
    assert row["status"] == "succeeded" and row["cost_micros"] > 0
    assert row["output_tokens"] > 1  # the upstream's own count, read after the client left
    assert balance(gateway, account) == (5_000_000 - row["cost_micros"], 0)


@pytest.fixture(scope="module")
def short_timeout_gateway(
    simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("short")
    registry = registry_for(simulator.url, tmp)
    registry.write_text(registry.read_text().replace("timeout = 120", "timeout = 1"))
    server = assemble(registry, tmp / "short.db", environ={"OPENAI_API_KEY": SIM_KEY})
    account = create_account(server.db, "short@example.com")
    _, key = create_key(server.db, account["id"])
    server.ledger.post(account["id"], 1_000_000, kind="grant", reason="t", actor="t")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])


def test_upstream_timeout_is_504_and_free(
    short_timeout_gateway: Gateway, simulator: Simulator
) -> None:
    gw = short_timeout_gateway
    simulator.knobs(fail=[{"kind": "timeout"}])
    r = post(gw, gw.key, CHAT)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert balance(gw, gw.account_id) == (1_000_000, 0)
    assert rows(gw, gw.account_id)[-1]["status"] == "failed"


def test_a_price_change_applies_to_new_requests_only(
    simulator: Simulator, tmp_path: Path, database: str | Path
) -> None:
    registry = registry_for(simulator.url, tmp_path)
    first = assemble(registry, database, environ={"OPENAI_API_KEY": SIM_KEY})
    account = create_account(first.db, "prices@example.com")["id"]
    _, key = create_key(first.db, account)
    first.ledger.post(account, 5_000_000, kind="grant", reason="t", actor="t")
    with serve(first.app) as url:
        before = post(Gateway(url, first, key, account), key, CHAT)
    registry.write_text(
        registry.read_text().replace('output_per_1m = "0.60"', 'output_per_1m = "6.00"', 1)
    )
    second = assemble(registry, database, environ={"OPENAI_API_KEY": SIM_KEY})
    with serve(second.app) as url:
        after = post(Gateway(url, second, key, account), key, CHAT)
    old, new = (
        next(
            second.db.query("SELECT * FROM usage WHERE request_id = ?", [r.headers["x-request-id"]])
        )
        for r in (before, after)
    )
    assert json.loads(old["unit_prices"])["output_per_1m"] == "0.60"
    assert json.loads(new["unit_prices"])["output_per_1m"] == "6.00"
    out_old, out_new = (
        before.json()["usage"]["completion_tokens"],
        after.json()["usage"]["completion_tokens"],
    )
    assert old["cost_micros"] < new["cost_micros"]
    exact = (
        Decimal(after.json()["usage"]["prompt_tokens"]) * Decimal("0.15")
        + Decimal(out_new) * Decimal("6.00")
    ) / 1_000_000
    assert Decimal(after.headers["x-apimodels-cost"]) == exact.quantize(
        Decimal("0.000001"), ROUND_HALF_UP
    )
    assert out_old > 0


def test_inputs_that_once_gave_500s(gateway: Gateway, simulator: Simulator) -> None:
    """Review findings: each of these must be a clear 4xx (or work), never a 500."""
    _, key = gateway.new_account("odd@example.com", 5_000_000)
    huge = post(gateway, key, CHAT | {"max_tokens": 10**20})
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "max_tokens"
    odd_part = CHAT | {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    assert post(gateway, key, odd_part).status_code in (200, 400)
    deep = "[" * 100_000 + "]" * 100_000
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=deep,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert r.status_code == 400
    r = httpx.get(
        f"{gateway.url}/v1/usage",
        params={"since": "0001-01-01T00:00:00+14:00"},
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"
    streamed = post(gateway, key, CHAT | {"stream": True}, **{"Idempotency-Key": "s-1"})
    assert (
        streamed.status_code == 400
        and streamed.json()["error"]["code"] == "idempotency_not_supported"
    )
    # Types are strict, as OpenAI's API and /openapi.json have them: 1 is no boolean.
    one = post(gateway, key, CHAT | {"stream": 1})
    assert one.status_code == 400 and one.json()["error"]["param"] == "stream"


def test_receipts_while_a_call_is_in_flight(gateway: Gateway, simulator: Simulator) -> None:
    _, key = gateway.new_account("inflight@example.com", 5_000_000)
    simulator.knobs(latency=0.8)
    slow = threading.Thread(target=lambda: post(gateway, key, CHAT))
    slow.start()
    time.sleep(0.3)
    auth = {"authorization": f"Bearer {key}"}
    page = httpx.get(f"{gateway.url}/v1/usage", headers=auth)
    credits = httpx.get(f"{gateway.url}/v1/credits", headers=auth).json()
    slow.join()
    # In flight: its credits are set aside; its usage row is written once, when it ends.
    assert page.status_code == 200 and page.json()["data"] == []
    assert Decimal(credits["pending_holds"]) > 0 and credits["balance"] == "5.000000"
    [row] = httpx.get(f"{gateway.url}/v1/usage", headers=auth).json()["data"]
    assert row["status"] == "succeeded" and Decimal(str(row["cost"])) > 0
    credits = httpx.get(f"{gateway.url}/v1/credits", headers=auth).json()
    assert credits["pending_holds"] == "0.000000"


def test_an_idempotent_answer_is_never_committed_without_its_charge(
    simulator: Simulator, tmp_path: Path
) -> None:
    """A kill -9 right after an idempotent call must not leave its answer stored and its
    charge lost (a retry would replay it free): both commit in one transaction."""
    registry = registry_for(simulator.url, tmp_path)
    # The longest delay allowed, long enough for the checks below to run within it; and
    # reserved credits kept (returning them would commit every queued charge at once).
    text = registry.read_text().replace("commit_delay_ms = 25 ", "commit_delay_ms = 1000 ")
    text = text.replace("reserve_idle_seconds = 0", "reserve_idle_seconds = 60")
    registry.write_text(text)
    server = assemble(registry, tmp_path / "gateway.db", environ={"OPENAI_API_KEY": SIM_KEY})
    account = create_account(server.db, "atomic@example.com")["id"]
    _, key = create_key(server.db, account)
    server.ledger.post(account, 5_000_000, kind="grant", reason="test", actor="tests")
    with serve(server.app) as url:
        headers = {"authorization": f"Bearer {key}"}
        plain = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers)
        answered = httpx.post(
            f"{url}/v1/chat/completions", json=CHAT, headers=headers | {"Idempotency-Key": "k1"}
        )
        assert plain.status_code == answered.status_code == 200
        # What a crash now would leave (the answer is stored before it is sent): the
        # database file as another connection sees it.
        with sqlite3.connect(tmp_path / "gateway.db") as c:
            state = c.execute("SELECT state FROM idempotency_keys WHERE key = 'k1'").fetchone()
            charged = {
                row[0]
                for row in c.execute(
                    "SELECT request_id FROM usage WHERE account_id = ?", (account,)
                )
            }
    assert state == ("done",)
    # The idempotent call's charge is committed with its answer, and the plain call's,
    # queued before it, with them; without the key a charge may wait for company.
    assert charged == {plain.headers["x-request-id"], answered.headers["x-request-id"]}


def test_a_streams_charge_is_committed_with_its_neighbours_after_its_last_event(
    simulator: Simulator, tmp_path: Path
) -> None:
    """A stream's last event does not wait for its charge to be written (issue 21): the
    charge joins the group commit, as an answered call's does, and is exact once there."""
    registry = registry_for(simulator.url, tmp_path)
    # The longest delay allowed, long enough for the check below to run within it.
    text = registry.read_text().replace("commit_delay_ms = 25 ", "commit_delay_ms = 1000 ")
    registry.write_text(text.replace("reserve_idle_seconds = 0", "reserve_idle_seconds = 60"))
    server = assemble(registry, tmp_path / "gateway.db", environ={"OPENAI_API_KEY": SIM_KEY})
    account = create_account(server.db, "streamed@example.com")["id"]
    _, key = create_key(server.db, account)
    server.ledger.post(account, 5_000_000, kind="grant", reason="test", actor="tests")
    with serve(server.app) as url, openai.OpenAI(base_url=f"{url}/v1", api_key=key) as client:
        stream = client.chat.completions.with_raw_response.create(
            **CHAT, stream=True, stream_options={"include_usage": True}
        )
        request_id = stream.headers["x-request-id"]
        chunks = list(stream.parse())
        # The client has the whole stream, [DONE] included; the database does not have
        # its charge yet (another connection's view: what a crash now would leave).
        with sqlite3.connect(tmp_path / "gateway.db") as c:
            written = c.execute("SELECT 1 FROM usage WHERE request_id = ?", (request_id,))
            assert written.fetchone() is None
        cost = chunks[-1].usage.model_extra["cost"]  # type: ignore[union-attr]
        auth = {"authorization": f"Bearer {key}"}
        # A request for billing data commits what its process has queued first.
        [row] = httpx.get(f"{url}/v1/usage", headers=auth).json()["data"]
    assert row["id"] == request_id and row["stream"] is True
    assert Decimal(str(row["cost"])) == Decimal(str(cost)) > 0
    assert server.ledger.balance(account).balance_micros == 5_000_000 - int(
        Decimal(str(cost)) * 1_000_000
    )
    assert server.ledger.check() == []
