"""The admin API end to end: a sandboxed gateway over real sockets, admin tokens made by the
CLI, the official OpenAI SDK as the account holder's client, and a refund through the
Stripe simulator the sandbox serves."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner

from apimodels.cli import cli
from apimodels.server import assemble
from apimodels.testing import serve
from support import BACKENDS, ROOT, Gateway, database_for


@dataclass
class Admin:
    gw: Gateway
    registry: Path
    write: str  # an admin token of scope write
    read: str  # ... and one of scope read
    database: str  # the server's: a SQLite file or a PostgreSQL URL, for the CLI too

    def cli(self, *args: str, code: int = 0) -> str:
        env = {
            "APIMODELS_REGISTRY": str(self.registry),
            "APIMODELS_DB": self.database,
            "APIMODELS_ACTOR": "cli:ops",
        }
        result = CliRunner().invoke(cli, list(args), env=env)
        assert result.exit_code == code, result.output
        return result.output

    def call(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token or self.write}"}
        return httpx.request(
            method, f"{self.gw.url}/admin/v1{path}", headers=headers, timeout=20, **kwargs
        )

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.call(method, path, **kwargs)
        assert r.status_code == 200, r.text
        return r.json()


def _token(run: Any, scope: str) -> str:
    return re.search(r"sk-adm-\w+", run("admin-tokens", "create", "--scope", scope)).group(0)  # type: ignore[union-attr]


@pytest.fixture(scope="module", params=BACKENDS)
def admin(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Admin]:
    """A sandboxed server on each backend, and the operator's CLI on its database."""
    tmp = tmp_path_factory.mktemp("admin")
    registry = ROOT / "registry.toml"
    database = database_for(request, tmp, "admin.db")
    server = assemble(registry, database, sandbox=True, environ={})
    with serve(server.app) as url:
        server.stripe_simulator.point_webhooks_at(f"{url}/webhooks/stripe")
        handle = Admin(Gateway(url, server, "", ""), registry, "", "", str(database))
        handle.write = _token(handle.cli, "write")
        handle.read = _token(handle.cli, "read")
        yield handle


def _sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)


CHAT = {"model": "openai/gpt-6-luna", "messages": [{"role": "user", "content": "Hello"}]}


def test_an_operator_finds_grants_suspends_and_lifts(admin: Admin) -> None:
    account, key = admin.gw.new_account("holder@example.com")
    found = admin.ok("GET", "/accounts", params={"q": "holder@"})
    assert [a["id"] for a in found["data"]] == [account]
    assert admin.ok("GET", "/accounts", params={"q": account})["data"][0]["email"] == (
        "holder@example.com"
    )

    granted = admin.ok(
        "POST", f"/accounts/{account}/grants", json={"amount_usd": "5.25", "reason": "welcome"}
    )
    assert (granted["kind"], granted["amount_micros"], granted["balance_micros"]) == (
        "grant",
        5_250_000,
        5_250_000,
    )
    with _sdk(admin.gw, key) as client:
        reply = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert reply.choices[0].message.content
        admin.gw.settled()
        detail = admin.ok("GET", f"/accounts/{account}")
        assert detail["balance_micros"] < 5_250_000 and detail["status"] == "active"
        assert [u["model"] for u in detail["recent_usage"]] == ["openai/gpt-6-luna"]
        assert [k["account_id"] for k in detail["keys"]] == [account]
        assert "hash" not in detail["keys"][0] and key not in json.dumps(detail)

        suspended = admin.ok(
            "POST", f"/accounts/{account}/suspend", json={"reason": "chargeback under review"}
        )
        assert suspended["status"] == "suspended"
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert refused.value.status_code == 403
        assert "chargeback under review" in refused.value.message
        assert refused.value.code == "account_suspended"

        admin.ok("POST", f"/accounts/{account}/unsuspend", json={"reason": "resolved"})
        assert client.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]

    log = admin.ok("GET", "/audit", params={"target": account})["data"]
    assert [e["action"] for e in log] == [
        "accounts.unsuspend",
        "accounts.suspend",
        "credits.grant",
    ]
    suspend = log[1]
    assert suspend["reason"] == "chargeback under review"
    assert suspend["actor"].startswith("admin-token:atk_")
    assert (suspend["before"]["status"], suspend["after"]["status"]) == ("active", "suspended")
    assert log[2]["after"]["balance_micros"] == 5_250_000


def test_a_read_only_token_reads_but_cannot_write(admin: Admin) -> None:
    account, _ = admin.gw.new_account("readonly@example.com")
    assert admin.call("GET", f"/accounts/{account}", admin.read).status_code == 200
    for path, body in [
        (f"/accounts/{account}/suspend", {"reason": "x"}),
        (f"/accounts/{account}/grants", {"amount_usd": "1", "reason": "x"}),
        ("/orders/ord_nope/refund", {"reason": "x"}),
        ("/tasks/task_nope/cancel", {"reason": "x"}),
    ]:
        r = admin.call("POST", path, admin.read, json=body)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "admin_read_only"
    assert admin.gw.ledger.balance(account).balance_micros == 0
    assert admin.ok("GET", f"/accounts/{account}")["status"] == "active"


def test_tokens_are_checked_and_revocation_holds_at_once(admin: Admin) -> None:
    made = admin.cli("admin-tokens", "create", "--scope", "read", "--name", "auditor")
    token = re.search(r"sk-adm-\w+", made).group(0)  # type: ignore[union-attr]
    token_id = re.search(r"atk_\w+", made).group(0)  # type: ignore[union-attr]
    assert admin.call("GET", "/ledger/check", token).status_code == 200
    listed = admin.cli("admin-tokens", "list")
    assert token_id in listed and "auditor" in listed and token not in listed
    admin.cli("admin-tokens", "revoke", token_id, "--reason", "left the team")
    r = admin.call("GET", "/ledger/check", token)
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_admin_token"
    for bad in ("", "Bearer nope", f"Bearer {token[:-1]}x", "Basic abc"):
        r = httpx.get(f"{admin.gw.url}/admin/v1/accounts", headers={"authorization": bad})
        assert r.status_code == 401 and token not in r.text
    # An account holder's API key is no admin token.
    _, key = admin.gw.new_account("not-an-admin@example.com")
    assert admin.call("GET", "/accounts", key).status_code == 401


def test_an_operator_refunds_an_order_through_stripe(admin: Admin) -> None:
    account, key = admin.gw.new_account("refund@example.com")
    headers = {"authorization": f"Bearer {key}"}
    order = httpx.post(
        f"{admin.gw.url}/v1/topups", json={"amount_usd": "20"}, headers=headers, timeout=20
    ).json()
    paid = httpx.post(order["checkout_url"], data={"action": "pay"}, timeout=20)
    assert paid.status_code == 303
    assert admin.gw.ledger.balance(account).balance_micros == 20_000_000

    listed = admin.ok("GET", "/orders", params={"account": "refund@example.com"})["data"]
    assert [(o["id"], o["status"]) for o in listed] == [(order["id"], "paid")]
    refunded = admin.ok(
        "POST",
        f"/orders/{order['id']}/refund",
        json={"reason": "customer asked", "amount_usd": "7.50"},
    )
    assert refunded["refunded_usd_micros"] == 7_500_000
    # Debited here, or by Stripe's charge.refunded webhook if it came first: once either way.
    assert refunded["debited_micros"] in (0, 7_500_000)
    assert refunded["stripe_refund_id"].startswith("re_")
    assert admin.gw.ledger.balance(account).balance_micros == 12_500_000
    shown = admin.ok("GET", f"/orders/{order['id']}")
    assert [(e["kind"], e["amount_micros"]) for e in shown["ledger_entries"]] == [
        ("topup", 20_000_000),
        ("refund", -7_500_000),
    ]
    # The rest, then nothing left: 409, and no second debit.
    admin.ok("POST", f"/orders/{order['id']}/refund", json={"reason": "the rest"})
    again = admin.call("POST", f"/orders/{order['id']}/refund", json={"reason": "twice"})
    assert again.status_code == 409, again.text
    assert admin.gw.ledger.balance(account).balance_micros == 0
    (entry,) = admin.ok("GET", "/audit", params={"target": order["id"], "limit": 1})["data"]
    assert (
        entry["action"] == "orders.refund" and entry["after"]["refunded_usd_micros"] == 20_000_000
    )
    books = admin.ok("GET", "/ledger/check")
    assert (books["ok"], books["ledger_problems"], books["order_problems"]) == (True, [], [])


def test_adjustments_key_revocation_close_usage_and_bad_input(admin: Admin) -> None:
    account, key = admin.gw.new_account("many@example.com", 3_000_000)
    adjusted = admin.ok(
        "POST", f"/accounts/{account}/adjustments", json={"amount_usd": "-1", "reason": "dup"}
    )
    assert adjusted["balance_micros"] == 2_000_000
    for body, param in [
        ({"amount_usd": "1e3", "reason": "x"}, "amount_usd"),
        ({"amount_usd": "0.0000001", "reason": "x"}, "amount_usd"),
        ({"amount_usd": "1"}, "reason"),
        ({"amount_usd": "1", "reason": "x", "extra": 1}, "extra"),
    ]:
        r = admin.call("POST", f"/accounts/{account}/grants", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    negative = admin.call(
        "POST", f"/accounts/{account}/grants", json={"amount_usd": "-1", "reason": "x"}
    )
    assert negative.status_code == 400
    assert admin.call("GET", "/accounts/acct_nope").status_code == 404
    assert admin.call("GET", "/accounts", params={"limit": "0"}).status_code == 400

    with _sdk(admin.gw, key) as client:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        key_id = admin.ok("GET", f"/accounts/{account}")["keys"][0]["id"]
        revoked = admin.ok("POST", f"/keys/{key_id}/revoke", json={"reason": "leaked"})
        assert revoked["revoked_at"]
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(**CHAT)  # type: ignore[call-overload]

    admin.gw.settled()
    per_model = admin.ok("GET", "/usage", params={"group_by": "model", "account": account})
    (row,) = per_model["data"]
    assert row["key"] == "openai/gpt-6-luna" and row["calls"] == 1 and row["cost_micros"] > 0
    per_day = admin.ok("GET", "/usage", params={"group_by": "day"})["data"]
    assert sum(d["cost_micros"] for d in per_day) == sum(
        a["cost_micros"] for a in admin.ok("GET", "/usage", params={"group_by": "account"})["data"]
    )
    assert admin.call("GET", "/usage", params={"group_by": "week"}).status_code == 400

    closed = admin.ok("POST", f"/accounts/{account}/close", json={"reason": "asked to leave"})
    assert closed["status"] == "closed" and closed["balance_micros"] == 0
    assert closed["forfeited_micros"] == 2_000_000 - row["cost_micros"]
    again = admin.call("POST", f"/accounts/{account}/suspend", json={"reason": "x"})
    assert again.status_code == 409
    assert admin.ok("GET", "/ledger/check")["ok"] is True


def test_tasks_are_listed_and_canceled(admin: Admin) -> None:
    account, key = admin.gw.new_account("tasks@example.com", 50_000_000)
    headers = {"authorization": f"Bearer {key}"}
    # Replicate's simulator keeps the prediction running long enough to be canceled.
    replicate = admin.gw.server.simulators.urls["replicate"]  # type: ignore[union-attr]
    httpx.post(f"{replicate}/_sim/knobs", json={"slow_seconds": 60}).raise_for_status()
    try:
        task = httpx.post(
            f"{admin.gw.url}/v1/tasks",
            json={"model": "replicate/veo-3.1-fast", "input": {"prompt": "waves", "duration": 4}},
            headers=headers,
            timeout=20,
        ).json()
        listed = admin.ok("GET", "/tasks", params={"account": account})["data"]
        assert [(t["id"], t["status"]) for t in listed] in (
            [(task["id"], "queued")],
            [(task["id"], "running")],
        )
        assert admin.gw.ledger.balance(account).held_micros > 0
        canceled = admin.ok("POST", f"/tasks/{task['id']}/cancel", json={"reason": "stuck"})
    finally:
        httpx.delete(f"{replicate}/_sim/knobs").raise_for_status()
    assert canceled["status"] == "canceled" and canceled["cost_micros"] in (None, 0)
    balance = admin.gw.ledger.balance(account)
    assert (balance.balance_micros, balance.held_micros) == (50_000_000, 0)
    shown = httpx.get(f"{admin.gw.url}/v1/tasks/{task['id']}", headers=headers).json()
    assert shown["status"] == "canceled" and shown["cost"] == 0
    again = admin.ok("POST", f"/tasks/{task['id']}/cancel", json={"reason": "again"})
    assert again["status"] == "canceled"  # canceled already: answered as it is
    (entry,) = admin.ok("GET", "/audit", params={"target": task["id"]})["data"]
    assert (entry["before"]["status"], entry["after"]["status"]) in (
        ("queued", "canceled"),
        ("running", "canceled"),
    )
    missing = admin.call("POST", "/tasks/task_nope/cancel", json={"reason": "x"})
    assert missing.status_code == 404


def test_the_audit_log_exports_and_the_cli_writes_to_it(admin: Admin) -> None:
    account, _ = admin.gw.new_account("cli-audit@example.com")
    admin.cli("credits", "grant", account, "2", "--reason", "from the shell")
    admin.cli("accounts", "suspend", account, "--reason", "shell suspension")
    made = admin.cli("keys", "create", account, "--name", "second")
    key_id = re.search(r"key_\w+", made).group(0)  # type: ignore[union-attr]
    admin.cli("keys", "limit", key_id, "--rpm", "5")
    on_key = admin.cli("admin-audit", "--target", key_id, "--format", "jsonl").splitlines()
    limited, created = [json.loads(line) for line in on_key]
    assert (limited["action"], created["action"]) == ("keys.limit", "keys.create")
    assert limited["after"]["rpm_limit"] == 5 and created["after"]["account_id"] == account
    admin.cli("admins", "create", "Ops@Example.com")
    assert "ops@example.com" in admin.cli("admins", "list")
    admin.cli("admins", "create", "ops@example.com", code=1)
    admin.cli("admins", "remove", "ops@example.com")
    assert "ops@example.com" not in admin.cli("admins", "list")

    lines = admin.cli("admin-audit", "--target", account, "--format", "jsonl").splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("accounts.suspend", "cli:ops"),
        ("credits.grant", "cli:ops"),
    ]
    exported = admin.call("GET", "/audit/export", params={"format": "csv"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {"admins.create", "admins.remove", "admin_tokens.create"} <= {r["action"] for r in rows}
    jsonl = admin.call("GET", "/audit/export", admin.read, params={"format": "jsonl"})
    assert len(jsonl.text.splitlines()) == len(rows)
    # Snapshots keep ids, states and amounts: no account holder's email or key name (the
    # log outlives them, docs/privacy.md), an operator's own email aside.
    for personal in ("cli-audit@example.com", "holder@example.com", "second"):
        assert personal not in exported.text
    assert "ops@example.com" in exported.text
    for token in (admin.write, admin.read):  # a token's hint at most, never a token
        assert token not in exported.text and token[7:] not in exported.text


def test_the_cli_drives_a_remote_server_with_an_admin_token(admin: Admin) -> None:
    account, key = admin.gw.new_account("remote@example.com")
    remote = ("--url", admin.gw.url, "--admin-token", admin.write)
    granted = admin.cli(*remote, "credits", "grant", account, "3", "--reason", "over HTTP")
    assert f"{account}: balance 3.000000 USD" in granted
    assert "balance 2.500000" in admin.cli(
        *remote, "credits", "adjust", account, "-0.5", "--reason", "fix"
    )
    assert "suspended (remote review)" in admin.cli(
        *remote, "accounts", "suspend", account, "--reason", "remote review"
    )
    r = httpx.get(f"{admin.gw.url}/v1/credits", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 403 and "remote review" in r.json()["error"]["message"]
    assert "ledger ok" in admin.cli(*remote, "ledger", "check")
    audit = admin.cli(*remote, "admin-audit", "--target", account, "--format", "jsonl")
    actions = [json.loads(line)["action"] for line in audit.splitlines()]
    assert actions == ["accounts.suspend", "credits.adjustment", "credits.grant"]
    assert all(json.loads(line)["actor"].startswith("admin-token:") for line in audit.splitlines())
    # A read-only token is refused a write, with the server's own message; a command that
    # needs the database refuses --url rather than open a local file.
    read_only = ("--url", admin.gw.url, "--admin-token", admin.read)
    refused = admin.cli(*read_only, "accounts", "unsuspend", account, "--reason", "x", code=1)
    assert "read-only" in refused and "403" in refused
    assert "without --url" in admin.cli(*remote, "keys", "list", account, code=2)
    assert "--admin-token" in admin.cli("--url", admin.gw.url, "ledger", "check", code=2)
