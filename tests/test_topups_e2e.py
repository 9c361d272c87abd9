"""Top-ups end to end: the gateway and the Stripe simulator over real HTTP on 127.0.0.1, the
official ``stripe`` library as Stripe's client, webhooks signed as Stripe signs them."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from click.testing import CliRunner

from apimodels.cli import cli
from apimodels.server import assemble
from apimodels.testing import OpenAPI, serve
from apimodels.topups.simulator import create_app as create_stripe
from apimodels.topups.simulator import sign
from support import SIM_KEY, Gateway, Simulator, registry_for

STRIPE_KEY = "sk_test_e2e_" + "0" * 24
WHSEC = "whsec_e2e_0123456789abcdef"
RATE = "7.1234"
SCHEMAS = OpenAPI.load(Path(__file__).parent / "data" / "stripe" / "stripe-openapi.trimmed.json")


def topups_toml(stripe_url: str, as_of: datetime) -> str:
    return f"""
[topups]
enabled = true
min_usd = "5"
max_usd = "10000"
stripe_api_base = "{stripe_url}"
success_url = "http://127.0.0.1/done?session_id={{CHECKOUT_SESSION_ID}}"
cancel_url = "http://127.0.0.1/cancelled"

[topups.rate]
source = "fixed"
cny_per_usd = "{RATE}"
as_of = "{as_of.isoformat()}"
max_age_hours = 24
"""


@dataclass
class Stripe:
    url: str
    app: Any

    @property
    def state(self) -> Any:
        return self.app.state.stripe

    def config(self, **values: Any) -> None:
        httpx.post(f"{self.url}/_sim/config", json=values).raise_for_status()

    def events(self, session_id: str | None = None) -> list[dict[str, Any]]:
        events = httpx.get(f"{self.url}/_sim/events").json()
        if session_id is None:
            return events
        return [e for e in events if e["data"]["object"].get("id") == session_id]

    def act(self, checkout_url: str, action: str) -> httpx.Response:
        return httpx.post(checkout_url, data={"action": action}, timeout=20)

    def client(self) -> stripe.StripeClient:
        return stripe.StripeClient(
            STRIPE_KEY,
            base_addresses={"api": self.url},
            http_client=stripe.RequestsClient(),
        )


@dataclass
class TopupsGateway(Gateway):
    env: dict[str, str] | None = None

    def post_topup(self, key: str, **body: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/topups",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=20,
        )

    def get(self, key: str, path: str) -> httpx.Response:
        return httpx.get(
            f"{self.url}{path}", headers={"authorization": f"Bearer {key}"}, timeout=20
        )

    def balance(self, account_id: str) -> int:
        return self.ledger.balance(account_id).balance_micros

    def deliver(
        self, event: dict[str, Any], *, secret: str = WHSEC, t: int | None = None
    ) -> httpx.Response:
        payload = json.dumps(event)
        headers = {"stripe-signature": sign(payload, secret, t), "content-type": "application/json"}
        return httpx.post(
            f"{self.url}/webhooks/stripe", content=payload, headers=headers, timeout=20
        )

    def cli(self, *args: str) -> Any:
        env = {"APIMODELS_REGISTRY": self.env["registry"], "APIMODELS_DB": self.env["db"]}  # type: ignore[index]
        env["STRIPE_SECRET_KEY"] = STRIPE_KEY
        return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture(scope="module")
def stripe_sim() -> Iterator[Stripe]:
    app = create_stripe(STRIPE_KEY, WHSEC)
    with serve(app) as url:
        yield Stripe(url, app)


def _gateway(
    simulator: Simulator, stripe_url: str, tmp: Path, as_of: datetime
) -> tuple[Any, Path, Path]:
    registry = registry_for(simulator.url, tmp, topups_toml(stripe_url, as_of))
    environ = {
        "OPENAI_API_KEY": SIM_KEY,
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
    }
    return assemble(registry, tmp / "gateway.db", environ=environ), registry, tmp / "gateway.db"


@pytest.fixture(scope="module")
def gw(
    simulator: Simulator, stripe_sim: Stripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TopupsGateway]:
    tmp = tmp_path_factory.mktemp("topups")
    server, registry, db = _gateway(
        simulator, stripe_sim.url, tmp, datetime.now(UTC) - timedelta(hours=1)
    )
    with serve(server.app) as url:
        stripe_sim.config(webhook_url=f"{url}/webhooks/stripe", delivery="sync")
        yield TopupsGateway(url, server, "", "", {"registry": str(registry), "db": str(db)})


@pytest.fixture(autouse=True)
def _sync_delivery(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "stripe_sim" in request.fixturenames:
        request.getfixturevalue("stripe_sim").config(delivery="sync")


def _order(gw: TopupsGateway, key: str, **body: Any) -> dict[str, Any]:
    r = gw.post_topup(key, **body)
    assert r.status_code == 201, r.text
    return r.json()


# --- happy paths --------------------------------------------------------------------------


def test_card_topup_end_to_end(gw: TopupsGateway, stripe_sim: Stripe) -> None:
    account, key = gw.new_account("card@example.com")
    order = _order(gw, key, amount_usd="20", method="card")
    assert order["status"] == "open" and order["amount_usd"] == "20.000000"
    assert order["charged"] == {"currency": "usd", "amount": "20.00"}
    assert order["exchange_rate"] is None and order["checkout_url"].startswith(stripe_sim.url)

    page = httpx.get(order["checkout_url"])
    assert page.status_code == 200 and "20.00 USD" in page.text
    assert stripe_sim.act(order["checkout_url"], "pay").status_code == 303

    assert gw.balance(account) == 20_000_000
    receipt = gw.get(key, f"/v1/topups/{order['id']}").json()
    assert receipt["status"] == "paid" and receipt["paid_at"]
    assert [(e["kind"], e["amount"]) for e in receipt["ledger_entries"]] == [("topup", "20.000000")]
    listed = gw.get(key, "/v1/topups").json()["data"]
    assert [o["id"] for o in listed] == [order["id"]]
    assert gw.get(key, "/v1/credits").json()["balance"] == "20.000000"
    # Stripe's own view, read with the official library: the session is paid, for that amount.
    session = stripe_sim.client().v1.checkout.sessions.retrieve(
        order["checkout_url"].rsplit("/", 1)[1]
    )
    assert (session.payment_status, session.amount_total, session.currency) == ("paid", 2000, "usd")
    assert session.metadata["order_id"] == order["id"]


def test_alipay_topup_charges_cny_at_the_recorded_rate(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    account, key = gw.new_account("alipay@example.com")
    order = _order(gw, key, amount_usd="10.01", method="alipay")
    # 10.01 USD x 7.1234 = 71.305234 CNY -> 7131 fen, rounded half up to the fen.
    assert order["charged"] == {"currency": "cny", "amount": "71.31"}
    assert order["exchange_rate"]["cny_per_usd"] == RATE
    assert order["exchange_rate"]["source"] == "fixed" and order["exchange_rate"]["as_of"]
    session_id = order["checkout_url"].rsplit("/", 1)[1]
    session = stripe_sim.client().v1.checkout.sessions.retrieve(session_id)
    assert session.payment_method_types == ["alipay"] and session.amount_total == 7131

    # A delayed confirmation: completed but unpaid first, credited only when it succeeds.
    stripe_sim.act(order["checkout_url"], "delayed")
    assert gw.get(key, f"/v1/topups/{order['id']}").json()["status"] == "processing"
    assert gw.balance(account) == 0
    stripe_sim.act(order["checkout_url"], "settle")
    assert gw.get(key, f"/v1/topups/{order['id']}").json()["status"] == "paid"
    assert gw.balance(account) == 10_010_000


def test_delayed_payment_that_fails_credits_nothing(gw: TopupsGateway, stripe_sim: Stripe) -> None:
    account, key = gw.new_account("alipay-fail@example.com")
    order = _order(gw, key, amount_usd="8", method="alipay")
    stripe_sim.act(order["checkout_url"], "delayed")
    stripe_sim.act(order["checkout_url"], "fail")
    receipt = gw.get(key, f"/v1/topups/{order['id']}").json()
    assert (receipt["status"], receipt["error_code"], receipt["ledger_entries"]) == (
        "failed",
        "payment_failed",
        [],
    )
    assert gw.balance(account) == 0


def test_expired_session_marks_the_order(gw: TopupsGateway, stripe_sim: Stripe) -> None:
    _, key = gw.new_account("expired@example.com")
    order = _order(gw, key, amount_usd="6")
    stripe_sim.client().v1.checkout.sessions.expire(order["checkout_url"].rsplit("/", 1)[1])
    assert gw.get(key, f"/v1/topups/{order['id']}").json()["status"] == "expired"


# --- exactly once -------------------------------------------------------------------------


def _blast(gw: TopupsGateway, events: list[dict[str, Any]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=len(events)) as pool:
        return list(pool.map(gw.deliver, events))


def test_same_events_ten_times_concurrently_and_out_of_order_credit_once(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    account, key = gw.new_account("replay@example.com")
    order = _order(gw, key, amount_usd="12.34", method="alipay")
    stripe_sim.config(delivery="off")  # collect the events, then deliver them ourselves
    stripe_sim.act(order["checkout_url"], "delayed")
    stripe_sim.act(order["checkout_url"], "settle")
    events = stripe_sim.events(order["checkout_url"].rsplit("/", 1)[1])
    assert [e["type"] for e in events] == [
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    ]
    deliveries = [e for e in events for _ in range(10)]
    random.Random(6).shuffle(deliveries)
    deliveries.sort(key=lambda e: e["type"] == "checkout.session.completed")  # success first
    responses = _blast(gw, deliveries)
    assert {r.status_code for r in responses} == {200}
    outcomes = [r.json()["outcome"] for r in responses]
    assert outcomes.count("credited") == 1
    assert gw.balance(account) == 12_340_000
    receipt = gw.get(key, f"/v1/topups/{order['id']}").json()
    assert receipt["status"] == "paid" and len(receipt["ledger_entries"]) == 1


def test_card_completion_delivered_ten_times_at_once_credits_once(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    account, key = gw.new_account("replay-card@example.com")
    order = _order(gw, key, amount_usd="5")
    stripe_sim.config(delivery="off")
    stripe_sim.act(order["checkout_url"], "pay")
    (event,) = stripe_sim.events(order["checkout_url"].rsplit("/", 1)[1])
    outcomes = [r.json()["outcome"] for r in _blast(gw, [event] * 10)]
    assert outcomes.count("credited") == 1 and outcomes.count("duplicate") == 9
    assert gw.balance(account) == 5_000_000


# --- refused webhooks -------------------------------------------------------------------


def _paid_event(gw: TopupsGateway, stripe_sim: Stripe, email: str) -> tuple[str, dict[str, Any]]:
    account, key = gw.new_account(email)
    order = _order(gw, key, amount_usd="7")
    stripe_sim.config(delivery="off")
    stripe_sim.act(order["checkout_url"], "pay")
    (event,) = stripe_sim.events(order["checkout_url"].rsplit("/", 1)[1])
    return account, event


def test_bad_or_old_signatures_credit_nothing(gw: TopupsGateway, stripe_sim: Stripe) -> None:
    account, event = _paid_event(gw, stripe_sim, "forged@example.com")
    for response in (
        gw.deliver(event, secret="whsec_not_the_secret"),
        gw.deliver(event, t=int(time.time()) - 600),  # older than the 300 s tolerance
        httpx.post(f"{gw.url}/webhooks/stripe", json=event),  # no signature at all
    ):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
    # A body changed after signing fails too.
    payload = json.dumps(event)
    tampered = payload.replace('"amount_total": 700', '"amount_total": 70000')
    r = httpx.post(
        f"{gw.url}/webhooks/stripe",
        content=tampered,
        headers={"stripe-signature": sign(payload, WHSEC)},
    )
    assert r.status_code == 400
    assert gw.balance(account) == 0
    assert gw.deliver(event).json()["outcome"] == "credited"  # the genuine one still works


def test_unknown_order_and_mismatched_amount_credit_nothing(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    account, event = _paid_event(gw, stripe_sim, "mismatch@example.com")
    unknown = json.loads(json.dumps(event))
    unknown["id"] = "evt_unknown_order"
    unknown["data"]["object"]["metadata"]["order_id"] = "ord_does_not_exist"
    unknown["data"]["object"]["client_reference_id"] = "ord_does_not_exist"
    r = gw.deliver(unknown)
    assert r.status_code == 404 and r.json()["error"]["code"] == "order_not_found"

    cheaper = json.loads(json.dumps(event))
    cheaper["id"] = "evt_wrong_amount"
    cheaper["data"]["object"]["amount_total"] = 1
    r = gw.deliver(cheaper)
    assert r.status_code == 400 and r.json()["error"]["code"] == "order_mismatch"
    assert gw.balance(account) == 0


# --- bad orders ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"amount_usd": "4.99"}, "amount_out_of_range"),
        ({"amount_usd": "10000.01"}, "amount_out_of_range"),
        ({"amount_usd": 0}, "amount_out_of_range"),
        ({"amount_usd": "10.001"}, "invalid_value"),
        ({"amount_usd": "ten"}, "invalid_value"),
        ({"amount_usd": "1e999999"}, "amount_out_of_range"),
        ({"amount_usd": "NaN"}, "invalid_value"),
        ({"amount_usd": True}, "invalid_value"),
        ({"amount_usd": "20", "method": "bitcoin"}, "invalid_value"),
        ({"method": "card"}, "missing_required_parameter"),
    ],
)
def test_bad_orders_are_refused(gw: TopupsGateway, body: dict[str, Any], code: str) -> None:
    _, key = gw.new_account(f"bad-{code}-{random.random()}@example.com")
    r = gw.post_topup(key, **body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["type"]) == (code, "invalid_request_error") and error["message"]
    assert gw.get(key, "/v1/topups").json()["data"] == []


def test_a_json_number_is_read_exactly(gw: TopupsGateway) -> None:
    _, key = gw.new_account("exact@example.com")
    order = _order(gw, key, amount_usd=19.99)
    assert order["amount_usd"] == "19.990000" and order["charged"]["amount"] == "19.99"


def test_orders_need_a_key_and_stay_private(gw: TopupsGateway) -> None:
    assert httpx.post(f"{gw.url}/v1/topups", json={"amount_usd": "10"}).status_code == 401
    _, key = gw.new_account("owner@example.com")
    _, other = gw.new_account("other@example.com")
    order = _order(gw, key, amount_usd="9")
    r = gw.get(other, f"/v1/topups/{order['id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "order_not_found"
    assert gw.get(other, "/v1/topups").json()["data"] == []


def test_a_stale_exchange_rate_refuses_alipay_orders(
    simulator: Simulator, stripe_sim: Stripe, tmp_path: Path
) -> None:
    server, _, _ = _gateway(
        simulator, stripe_sim.url, tmp_path, datetime.now(UTC) - timedelta(days=3)
    )
    with serve(server.app) as url:
        gw = TopupsGateway(url, server, "", "")
        _, key = gw.new_account("stale@example.com")
        r = gw.post_topup(key, amount_usd="10", method="alipay")
        assert r.status_code == 503 and r.json()["error"]["code"] == "exchange_rate_unavailable"
        assert (
            _order(gw, key, amount_usd="10", method="card")["status"] == "open"
        )  # cards still work
        assert [o["method"] for o in gw.get(key, "/v1/topups").json()["data"]] == ["card"]


# --- refunds, disputes, review --------------------------------------------------------------


def _paid_order(
    gw: TopupsGateway, stripe_sim: Stripe, email: str, usd: str, method: str = "card"
) -> tuple[str, str, dict[str, Any]]:
    account, key = gw.new_account(email)
    order = _order(gw, key, amount_usd=usd, method=method)
    stripe_sim.act(order["checkout_url"], "pay")
    return account, key, order


def test_refund_after_partial_consumption_leaves_the_balance_negative(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    account, key, order = _paid_order(gw, stripe_sim, "refund@example.com", "20")
    chat = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}
    assert (
        httpx.post(
            f"{gw.url}/v1/chat/completions", json=chat, headers=headers, timeout=20
        ).status_code
        == 200
    )
    spent = 20_000_000 - gw.balance(account)
    assert spent > 0

    stripe_sim.config(delivery="off")  # the CLI records the refund; the webhook comes later
    result = gw.cli("orders", "refund", order["id"], "--reason", "customer asked")
    assert result.exit_code == 0, result.output
    assert gw.balance(account) == -spent
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat, headers=headers, timeout=20)
    assert r.status_code == 402

    # Stripe's charge.refunded webhook for the same refund arrives, late and twice: no change.
    (refunded,) = [
        e
        for e in stripe_sim.events()
        if e["type"] == "charge.refunded"
        and e["data"]["object"]["payment_intent"] == _intent(gw, order)
    ]
    assert refunded["data"]["object"]["amount_refunded"] == 2000
    assert [gw.deliver(refunded).json()["outcome"] for _ in range(2)] == [
        "already_recorded",
        "duplicate",
    ]
    assert gw.balance(account) == -spent
    receipt = gw.get(key, f"/v1/topups/{order['id']}").json()
    assert receipt["refunded_usd"] == "20.000000"
    assert [(e["kind"], e["amount"]) for e in receipt["ledger_entries"]] == [
        ("topup", "20.000000"),
        ("refund", "-20.000000"),
    ]
    again = gw.cli("orders", "refund", order["id"], "--reason", "twice")
    assert again.exit_code == 1 and "left to refund" in again.output


def _intent(gw: TopupsGateway, order: dict[str, Any]) -> str:
    return gw.db.execute(
        "SELECT stripe_payment_intent FROM topup_orders WHERE id = ?", [order["id"]]
    ).fetchone()[0]


def test_partial_refunds_from_stripe_convert_back_at_the_order_rate(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    account, key, order = _paid_order(gw, stripe_sim, "partial@example.com", "10.01", "alipay")
    client = stripe_sim.client()
    intent = _intent(gw, order)
    # Refunds made in Stripe's dashboard: 1000 fen, then the remaining 6131 fen.
    client.v1.refunds.create({"payment_intent": intent, "amount": 1000})
    # 1000 / 7131 of 10.01 USD = 1.403730... -> 1.403730 USD (half up, to the micro-dollar)
    assert gw.balance(account) == 10_010_000 - 1_403_730
    events = [
        e
        for e in stripe_sim.events()
        if e["type"] == "charge.refunded" and e["data"]["object"]["payment_intent"] == intent
    ]
    client.v1.refunds.create({"payment_intent": intent})
    assert gw.balance(account) == 0  # the whole charge refunded: exactly what it bought, removed
    assert (
        gw.deliver(events[0] | {"id": "evt_replayed_old_refund"}).json()["outcome"]
        == "already_recorded"
    )
    assert gw.balance(account) == 0
    entries = gw.get(key, f"/v1/topups/{order['id']}").json()["ledger_entries"]
    assert [e["amount"] for e in entries] == ["10.010000", "-1.403730", "-8.606270"]


def test_disputes_take_credits_back_and_a_won_dispute_returns_them(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    account, _, order = _paid_order(gw, stripe_sim, "dispute@example.com", "15")
    dispute = httpx.post(
        f"{stripe_sim.url}/_sim/disputes", json={"payment_intent": _intent(gw, order)}
    ).json()
    assert gw.balance(account) == 0
    httpx.post(
        f"{stripe_sim.url}/_sim/disputes/{dispute['id']}/close", json={"status": "won"}
    ).raise_for_status()
    assert gw.balance(account) == 15_000_000
    assert gw.cli("orders", "reconcile").exit_code == 0


def test_reconcile_finds_an_injected_mismatch(gw: TopupsGateway, stripe_sim: Stripe) -> None:
    _paid_order(gw, stripe_sim, "reconcile@example.com", "5")
    clean = gw.cli("orders", "reconcile")
    assert clean.exit_code == 0, clean.output
    _, key = gw.new_account("lost-webhook@example.com")
    order = _order(gw, key, amount_usd="30")
    # Paid at Stripe and marked paid here, but the credit never reached the ledger.
    gw.db.execute("UPDATE topup_orders SET status = 'paid' WHERE id = ?", [order["id"]])
    try:
        found = gw.cli("orders", "reconcile")
        assert found.exit_code == 1
        assert order["id"] in found.output and "top-up credits are: none" in found.output
    finally:
        gw.db.execute("UPDATE topup_orders SET status = 'expired' WHERE id = ?", [order["id"]])
    assert gw.cli("orders", "reconcile").exit_code == 0


def test_orders_cli_lists_and_shows(gw: TopupsGateway, stripe_sim: Stripe) -> None:
    account, _, order = _paid_order(gw, stripe_sim, "cli@example.com", "11")
    listed = gw.cli("orders", "list", "--account", "cli@example.com")
    assert listed.exit_code == 0 and order["id"] in listed.output and "paid" in listed.output
    shown = json.loads(gw.cli("orders", "show", order["id"]).output)
    assert shown["account_id"] == account and shown["ledger_entries"][0]["amount"] == "11.000000"


# --- the simulator against Stripe's published description ----------------------------------


def test_simulator_objects_match_stripes_published_schemas(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    _, _, order = _paid_order(gw, stripe_sim, "schema@example.com", "9")
    session_id = order["checkout_url"].rsplit("/", 1)[1]
    auth = {"authorization": f"Bearer {STRIPE_KEY}"}
    session = httpx.get(f"{stripe_sim.url}/v1/checkout/sessions/{session_id}", headers=auth).json()
    SCHEMAS.validate_schema("checkout.session", session)
    refund = httpx.post(
        f"{stripe_sim.url}/v1/refunds",
        data={"payment_intent": session["payment_intent"], "amount": "100"},
        headers=auth,
    ).json()
    SCHEMAS.validate_schema("refund", refund)
    for event in stripe_sim.events()[-3:]:
        SCHEMAS.validate_schema("event", event)
        fetched = httpx.get(f"{stripe_sim.url}/v1/events/{event['id']}", headers=auth).json()
        assert fetched == event
    for bad in (
        httpx.get(f"{stripe_sim.url}/v1/checkout/sessions/cs_nope", headers=auth),
        httpx.get(
            f"{stripe_sim.url}/v1/checkout/sessions/{session_id}",
            headers={"authorization": "Bearer sk_wrong"},
        ),
        httpx.post(
            f"{stripe_sim.url}/v1/checkout/sessions", data={"mode": "payment"}, headers=auth
        ),
    ):
        assert bad.status_code in (400, 401, 404)
        SCHEMAS.validate_schema("error", bad.json())
    with pytest.raises(AssertionError):  # the check can fail
        SCHEMAS.validate_schema("refund", {"object": "refund"})


def test_simulator_idempotency_keys(stripe_sim: Stripe) -> None:
    client = stripe_sim.client()
    params: Any = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 500,
                    "product_data": {"name": "x"},
                },
                "quantity": 1,
            }
        ],
        "success_url": "http://127.0.0.1/ok",
        "cancel_url": "http://127.0.0.1/no",
    }
    first = client.v1.checkout.sessions.create(params, {"idempotency_key": "same"})
    assert client.v1.checkout.sessions.create(params, {"idempotency_key": "same"}).id == first.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.checkout.sessions.create(
            params | {"cancel_url": "http://127.0.0.1/other"}, {"idempotency_key": "same"}
        )
    with pytest.raises(stripe.InvalidRequestError):
        alipay = params | {"payment_method_types": ["alipay"]}
        alipay["line_items"] = [
            {
                "price_data": {
                    "currency": "inr",
                    "unit_amount": 500,
                    "product_data": {"name": "x"},
                },
                "quantity": 1,
            }
        ]
        client.v1.checkout.sessions.create(alipay)


def test_dispute_events_out_of_order_and_lost(gw: TopupsGateway, stripe_sim: Stripe) -> None:
    account, _, order = _paid_order(gw, stripe_sim, "dispute-order@example.com", "15")
    stripe_sim.config(delivery="off")
    sim = stripe_sim.url
    dispute = httpx.post(f"{sim}/_sim/disputes", json={"payment_intent": _intent(gw, order)}).json()
    httpx.post(
        f"{sim}/_sim/disputes/{dispute['id']}/close", json={"status": "won"}
    ).raise_for_status()
    opened, won = [e for e in stripe_sim.events() if e["data"]["object"].get("id") == dispute["id"]]
    # "won" arrives before "created": nothing was taken, so nothing is given back, and the
    # late "created" then takes nothing either.
    assert [gw.deliver(e).status_code for e in (won, opened, won, opened)] == [200] * 4
    assert gw.balance(account) == 15_000_000

    stripe_sim.config(delivery="sync")
    account, _, order = _paid_order(gw, stripe_sim, "dispute-lost@example.com", "6")
    dispute = httpx.post(
        f"{sim}/_sim/disputes", json={"payment_intent": _intent(gw, order), "amount": 300}
    ).json()
    assert gw.balance(account) == 3_000_000
    httpx.post(
        f"{sim}/_sim/disputes/{dispute['id']}/close", json={"status": "lost"}
    ).raise_for_status()
    assert gw.balance(account) == 3_000_000
    assert gw.cli("orders", "reconcile").exit_code == 0


def test_a_retried_order_request_with_an_idempotency_key_makes_one_order(gw: TopupsGateway) -> None:
    _, key = gw.new_account("idempotent@example.com")
    headers = {"authorization": f"Bearer {key}", "idempotency-key": "buy-20-once"}
    first, again = (
        httpx.post(f"{gw.url}/v1/topups", json={"amount_usd": "20"}, headers=headers)
        for _ in range(2)
    )
    assert first.status_code == again.status_code == 201
    assert (
        first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    )
    assert len(gw.get(key, "/v1/topups").json()["data"]) == 1
    other = httpx.post(f"{gw.url}/v1/topups", json={"amount_usd": "30"}, headers=headers)
    assert other.status_code == 400 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert gw.get(key, "/v1/topups?limit=0").status_code == 400


def test_sandbox_mode_serves_a_clickable_checkout(simulator: Simulator, tmp_path: Path) -> None:
    # The repository's registry.toml has no [topups]: sandbox mode turns them on anyway,
    # with a simulated Stripe and a demo exchange rate.
    registry = registry_for(simulator.url, tmp_path)
    server = assemble(registry, tmp_path / "sandbox.db", sandbox=True, environ={})
    with serve(server.app) as url:
        server.stripe_simulator.point_webhooks_at(f"{url}/webhooks/stripe")
        gw = TopupsGateway(url, server, "", "")
        account, key = gw.new_account("newcomer@example.com")
        order = _order(gw, key, amount_usd="10", method="alipay")
        assert order["checkout_url"].startswith(server.stripe_simulator.origin)
        assert order["charged"] == {"currency": "cny", "amount": "71.00"}
        page = httpx.get(order["checkout_url"])
        assert "Simulated Stripe Checkout" in page.text and "71.00 CNY" in page.text
        paid = httpx.post(order["checkout_url"], data={"action": "pay"}, follow_redirects=True)
        assert gw.balance(account) == 10_000_000
        back = re.search(r'href="([^"]+)">Back to the merchant', paid.text).group(1)  # type: ignore[union-attr]
        assert "Payment done" in httpx.get(back).text
        cancelled = httpx.post(
            _order(gw, key, amount_usd="5")["checkout_url"],
            data={"action": "cancel"},
            follow_redirects=True,
        )
        assert "Nothing was charged" in cancelled.text


def _form_typed(value: Any, schema: dict[str, Any]) -> Any:
    """A form-encoded value (always text) as the type its schema asks for."""
    if "anyOf" in schema:
        branch = next((b for b in schema["anyOf"] if b.get("type") == "object"), schema["anyOf"][0])
        return _form_typed(value, branch)
    kind = schema.get("type")
    if kind == "integer" and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    if kind == "array" and isinstance(value, list):
        return [_form_typed(v, schema.get("items", {})) for v in value]
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: _form_typed(v, props.get(k, extra if isinstance(extra, dict) else {}))
            for k, v in value.items()
        }
    return value


def test_what_the_gateway_sends_stripe_matches_the_published_request_schemas(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    """The stripe library's calls, as the simulator received them (form fields decoded),
    checked against the request bodies of Stripe's published description."""
    first = len(stripe_sim.state.requests)
    _, _, order = _paid_order(gw, stripe_sim, "requests@example.com", "10", "alipay")
    assert gw.cli("orders", "refund", order["id"], "--reason", "check", "--usd", "2").exit_code == 0
    sent = stripe_sim.state.requests[first:]
    assert [(r["method"], r["path"]) for r in sent] == [
        ("POST", "/v1/checkout/sessions"),
        ("POST", "/v1/refunds"),
    ]
    for request in sent:
        op = SCHEMAS.spec["paths"][request["path"]]["post"]
        schema = op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
        SCHEMAS.validate_request(
            "post",
            request["path"],
            _form_typed(request["params"], schema),
            content_type="application/x-www-form-urlencoded",
        )
    checkout, refund = sent[0]["params"], sent[1]["params"]
    assert checkout["payment_method_types"] == ["alipay"]
    assert checkout["line_items"][0]["price_data"] == {
        "currency": "cny",
        "unit_amount": "7123",  # 10 USD x 7.1234 = 71.234 CNY -> 7123 fen
        "product_data": {"name": "apimodels credits"},
    }
    assert checkout["metadata"]["order_id"] == order["id"]
    # 2 of the 10 USD = 1424.6 fen -> 1425 fen, at the order's own rate
    assert (refund["amount"], refund["reason"]) == ("1425", "requested_by_customer")
    with pytest.raises(AssertionError):  # the check can fail: an unknown parameter
        SCHEMAS.validate_request(
            "post",
            "/v1/refunds",
            {"amount": 1, "bogus": "x"},
            content_type="application/x-www-form-urlencoded",
        )


def test_reconcile_with_stripe_finds_a_lost_webhook(gw: TopupsGateway, stripe_sim: Stripe) -> None:
    account, key = gw.new_account("lost@example.com")
    order = _order(gw, key, amount_usd="14", method="alipay")
    stripe_sim.config(delivery="off")  # the user pays and closes the page; the webhook is lost
    stripe_sim.act(order["checkout_url"], "pay")
    assert gw.cli("orders", "reconcile").exit_code == 0  # the ledger alone cannot see it
    found = gw.cli("orders", "reconcile", "--stripe")
    assert found.exit_code == 1 and order["id"] in found.output and "paid at Stripe" in found.output
    (event,) = stripe_sim.events(order["checkout_url"].rsplit("/", 1)[1])
    resent = httpx.post(f"{stripe_sim.url}/_sim/events/{event['id']}/resend").json()
    assert resent == {"event": event["id"], "type": event["type"], "status": 200}
    # (Other tests here leave sessions paid at Stripe on purpose; this order is settled.)
    assert order["id"] not in gw.cli("orders", "reconcile", "--stripe").output
    assert gw.balance(account) == 14_000_000


def test_a_refund_that_arrives_before_its_payment_is_applied_once_credited(
    gw: TopupsGateway, stripe_sim: Stripe
) -> None:
    """Stripe does not keep the order of its events: a refund delivered before the payment's
    completion is held back, then applied right after the credit (and once)."""
    account, key = gw.new_account("refund-first@example.com")
    order = _order(gw, key, amount_usd="10")
    stripe_sim.config(delivery="off")
    stripe_sim.act(order["checkout_url"], "pay")
    session_id = order["checkout_url"].rsplit("/", 1)[1]
    (completed,) = stripe_sim.events(session_id)
    intent = completed["data"]["object"]["payment_intent"]
    stripe_sim.client().v1.refunds.create({"payment_intent": intent})
    (refunded,) = [
        e
        for e in stripe_sim.events()
        if e["type"] == "charge.refunded" and e["data"]["object"]["payment_intent"] == intent
    ]
    assert gw.deliver(refunded).json()["outcome"] == "unmatched"
    assert gw.deliver(completed).json()["outcome"] == "credited"
    assert gw.balance(account) == 0  # credited, then the refund taken back
    assert gw.deliver(refunded).json()["outcome"] == "duplicate"
    assert gw.balance(account) == 0
    assert gw.cli("orders", "reconcile").exit_code == 0


def test_sessions_of_other_products_are_acknowledged_not_retried(gw: TopupsGateway) -> None:
    event = {
        "id": "evt_foreign_session",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": "cs_other_product",
                "object": "checkout.session",
                "payment_status": "paid",
                "metadata": {},
                "client_reference_id": None,
                "currency": "usd",
                "amount_total": 999,
            }
        },
    }
    r = gw.deliver(event)
    assert r.status_code == 200 and r.json()["outcome"] == "ignored"


def test_a_body_that_is_not_utf8_is_a_clear_400(gw: TopupsGateway) -> None:
    r = httpx.post(
        f"{gw.url}/webhooks/stripe", content=b"\xff\xfe", headers={"stripe-signature": "t=1,v1=ab"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_signature"


def test_a_card_network_inquiry_takes_no_credits(gw: TopupsGateway, stripe_sim: Stripe) -> None:
    account, _, order = _paid_order(gw, stripe_sim, "inquiry@example.com", "15")
    dispute = {
        "id": "dp_inquiry_1",
        "object": "dispute",
        "amount": 1500,
        "currency": "usd",
        "payment_intent": _intent(gw, order),
        "status": "warning_needs_response",
    }
    created = {
        "id": "evt_inq_created",
        "type": "charge.dispute.created",
        "data": {"object": dispute},
    }
    assert gw.deliver(created).json()["outcome"] == "inquiry"
    closed = {
        "id": "evt_inq_closed",
        "type": "charge.dispute.closed",
        "data": {"object": dispute | {"status": "warning_closed"}},
    }
    assert gw.deliver(closed).json()["outcome"] == "inquiry"
    assert gw.balance(account) == 15_000_000
