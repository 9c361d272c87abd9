"""The Console's admin pages over real HTTP (a sandboxed server, a cookie-keeping client): who
may reach them (an operator's session only: a holder's gets 403 on every admin route, a
visitor is sent to sign in, an unverified or removed operator is refused), CSRF, the
confirmation of destructive actions, a grant posted twice granting once, every action in
the audit log as the operator with its reason, and the suspension mail."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlite_utils
from starlette.routing import Route

from apimodels.admin import Actor, Operations
from apimodels.admin.checks import check_books
from apimodels.admin.context import reading
from apimodels.admin.operators import create_admin, remove_admin
from apimodels.admin.overview import Overview, overview, record_check
from apimodels.admin.tokens import create_token
from apimodels.billing.ledger import Ledger, Settlement, settle_op, transaction
from apimodels.store.accounts import create_account, create_key, set_status
from apimodels.store.db import database_path, is_postgres, open_db
from apimodels.tasks.store import TaskStore
from console_support import Browser, ConsoleServer, console_server
from support import Simulator

CLI = Actor("cli:tests")


@pytest.fixture(scope="module")
def cs(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    extra = "\n[console]\nnotice_interval_seconds = 0.1\n"
    with console_server(tmp_path_factory.mktemp("adminui"), simulator.url, extra) as server:
        yield server


@pytest.fixture(scope="module")
def db(cs: ConsoleServer) -> Iterator[sqlite_utils.Database]:
    """The test's own connection to the server's database."""
    own = sqlite_utils.Database(database_path(cs.server.db))
    yield own
    own.close()


def holder(cs: ConsoleServer, b: Browser, email: str, *, verify: bool = True) -> None:
    assert b.sign_up(email).status_code == 303
    if verify:
        assert b.get(cs.link(email, "verify").removeprefix(cs.url)).status_code == 200


def operator(cs: ConsoleServer, db: sqlite_utils.Database, b: Browser, email: str) -> None:
    """A verified holder made an operator, signed in again (a session takes its role then)."""
    holder(cs, b, email)
    create_admin(db, CLI, email)
    assert b.sign_in(email).status_code == 303


def admin_routes(cs: ConsoleServer) -> list[tuple[str, str]]:
    """(method, concrete path) of every admin page of the Console's app."""
    app = cs.server.console.mount.app
    out = []
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/admin"):
            path = re.sub(r"\{[a-z_]+\}", "x_1", route.path)
            out += [(m, f"/console{path}") for m in sorted(route.methods - {"HEAD"})]
    return out


def test_only_an_operators_session_reaches_the_admin_pages(
    cs: ConsoleServer, db: sqlite_utils.Database, new: Callable[[], Browser]
) -> None:
    routes = admin_routes(cs)
    assert len(routes) >= 12

    visitor = new()
    for method, path in routes:
        r = visitor.http.request(method, path)
        if method == "GET":
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/console/sign-in?next=")
        else:
            assert r.status_code == 403, path

    person = new()
    holder(cs, person, "holder-only@example.com")
    assert person.get("/console/dashboard").status_code == 200
    assert "/console/admin" not in person.get("/console/dashboard").text
    for method, path in routes:
        data = {"csrf_token": person.token, "reason": "x", "confirm": "yes"}
        r = person.http.request(method, path, data=data if method == "POST" else None)
        assert r.status_code == 403, (method, path)
        assert "Operators only." in r.text

    # An operator whose address is not verified (sign-up alone proves nothing of it) is a holder.
    early = new()
    holder(cs, early, "unverified-op@example.com", verify=False)
    create_admin(db, CLI, "unverified-op@example.com")
    early.sign_in("unverified-op@example.com")
    assert early.get("/console/admin").status_code == 403

    # A verified operator is in, and out again at once when removed.
    op = new()
    operator(cs, db, op, "op-removed@example.com")
    for path in ("", "/accounts", "/orders", "/orders?status=paid", "/tasks", "/tasks?status=queued",
                 "/audit", "/audit/export?format=jsonl"):  # fmt: skip
        assert op.get(f"/console/admin{path}").status_code == 200, path
    assert op.get("/console/admin/tasks?status=nope").status_code == 400
    assert op.get("/console/admin/accounts/acct_nope").status_code == 404
    assert 'href="/console/admin"' in op.get("/console/dashboard").text
    remove_admin(db, CLI, "op-removed@example.com")
    assert op.get("/console/admin").status_code == 403
    assert op.get("/console/admin/accounts").status_code == 403


def test_an_operator_grants_suspends_and_the_holder_hears_of_it(
    cs: ConsoleServer, db: sqlite_utils.Database, new: Callable[[], Browser]
) -> None:
    op = new()
    operator(cs, db, op, "op@example.com")
    person = new()
    holder(cs, person, "customer@example.com")
    account_id = db.execute(
        "SELECT id FROM accounts WHERE email = 'customer@example.com'"
    ).fetchone()[0]

    found = op.get("/console/admin/accounts?q=customer@")
    assert account_id in found.text and "op@example.com" not in found.text
    detail = op.get(f"/console/admin/accounts/{account_id}")
    key = re.search(r'name="idempotency_key" value="([^"]+)"', detail.text).group(1)  # type: ignore[union-attr]
    grant = {"kind": "grant", "amount_usd": "12.50", "reason": "welcome", "idempotency_key": key}

    # CSRF: no token, or a holder's token, changes nothing.
    assert (
        op.post(f"/console/admin/accounts/{account_id}/credits", grant, token=False).status_code
        == 403
    )
    r = op.http.post(
        f"/console/admin/accounts/{account_id}/credits", data={**grant, "csrf_token": person.token}
    )
    assert r.status_code == 403

    # Posted twice (a double click, a reload): granted once.
    for _ in range(2):
        op.get(f"/console/admin/accounts/{account_id}")
        r = op.post(f"/console/admin/accounts/{account_id}/credits", grant)
        assert r.status_code == 303
        assert r.headers["location"] == f"/console/admin/accounts/{account_id}?done=grant"
    balance = db.execute(
        "SELECT balance_micros FROM accounts WHERE id = ?", [account_id]
    ).fetchone()
    assert balance[0] == 12_500_000
    page = op.get(f"/console/admin/accounts/{account_id}?done=grant")
    assert "Credits granted." in page.text and "$12.50" in page.text

    # A bad amount, or none, is refused and posts nothing.
    op.get(f"/console/admin/accounts/{account_id}")
    r = op.post(
        f"/console/admin/accounts/{account_id}/credits",
        {"kind": "grant", "amount_usd": "1e3", "reason": "x"},
    )
    assert r.status_code == 400 and "decimal number of USD" in r.text

    # Suspension without its confirmation, or without a reason, does nothing.
    op.get(f"/console/admin/accounts/{account_id}")
    r = op.post(f"/console/admin/accounts/{account_id}/suspend", {"reason": "abuse"})
    assert r.status_code == 422
    op.get(f"/console/admin/accounts/{account_id}")
    r = op.post(f"/console/admin/accounts/{account_id}/suspend", {"reason": " ", "confirm": "yes"})
    assert r.status_code == 400
    assert db.execute("SELECT status FROM accounts WHERE id = ?", [account_id]).fetchone()[0] == (
        "active"
    )
    op.get(f"/console/admin/accounts/{account_id}")
    r = op.post(
        f"/console/admin/accounts/{account_id}/suspend",
        {"reason": "payment dispute", "confirm": "yes"},
    )
    assert r.status_code == 303
    assert db.execute("SELECT status FROM accounts WHERE id = ?", [account_id]).fetchone()[0] == (
        "suspended"
    )

    # The holder's mail, with the reason, through the notices loop.
    deadline = time.monotonic() + 10
    while not cs.mail("customer@example.com", "suspended") and time.monotonic() < deadline:
        time.sleep(0.1)
    (mail,) = cs.mail("customer@example.com", "suspended")
    assert "payment dispute" in mail["body"]

    # The audit log: the operator, the action, the reason.
    rows = list(
        db.query(
            "SELECT actor, action, reason FROM admin_audit WHERE target = ? ORDER BY id",
            [account_id],
        )
    )
    assert rows == [
        {"actor": "console:op@example.com", "action": "credits.grant", "reason": "welcome"},
        {
            "actor": "console:op@example.com",
            "action": "accounts.suspend",
            "reason": "payment dispute",
        },
    ]
    log = op.get(f"/console/admin/audit?target={account_id}")
    assert "accounts.suspend" in log.text and "payment dispute" in log.text
    export = op.get("/console/admin/audit/export?format=csv")
    assert export.headers["content-type"].startswith("text/csv")
    assert "customer@example.com" not in export.text and "accounts.suspend" in export.text

    # Lifted (no confirmation needed), then the overview and a check of the books.
    op.get(f"/console/admin/accounts/{account_id}")
    r = op.post(f"/console/admin/accounts/{account_id}/unsuspend", {"reason": "settled"})
    assert r.status_code == 303
    overview = op.get("/console/admin")
    assert overview.status_code == 200 and "Not checked from the Console yet." in overview.text
    assert op.post("/console/admin/ledger-check", {}).status_code == 303
    overview = op.get("/console/admin?done=check")
    assert re.search(
        r'id="last-check">[^<]*by console:op@example.com:\s*<strong>no problem', overview.text
    )


def test_an_operator_revokes_adjusts_cancels_and_closes(
    cs: ConsoleServer, db: sqlite_utils.Database, new: Callable[[], Browser]
) -> None:
    op = new()
    operator(cs, db, op, "op-three@example.com")
    account_id = create_account(db, "three@example.com")["id"]
    _, key = create_key(db, account_id, "sdk")
    headers = {"authorization": f"Bearer {key}"}

    def form(path: str, data: dict[str, str]) -> httpx.Response:
        op.get(f"/console/admin/accounts/{account_id}")  # the page the form is on
        return op.post(path, data)

    base = f"/console/admin/accounts/{account_id}"
    assert (
        form(
            f"{base}/credits", {"kind": "adjustment", "amount_usd": "3", "reason": "a"}
        ).status_code
        == 303
    )
    assert (
        form(
            f"{base}/credits", {"kind": "adjustment", "amount_usd": "-0.5", "reason": "b"}
        ).status_code
        == 303
    )
    assert (
        form(f"{base}/credits", {"kind": "grant", "amount_usd": "-1", "reason": "c"}).status_code
        == 400
    )
    assert (
        form(f"{base}/credits", {"kind": "bonus", "amount_usd": "1", "reason": "c"}).status_code
        == 400
    )
    balance = db.execute("SELECT balance_micros FROM accounts WHERE id = ?", [account_id])
    assert balance.fetchone()[0] == 2_500_000

    # A task canceled from the tasks page costs nothing (the simulator keeps it running).
    replicate = cs.server.simulators.urls["replicate"]  # type: ignore[union-attr]
    httpx.post(f"{replicate}/_sim/knobs", json={"slow_seconds": 60}).raise_for_status()
    try:
        task = httpx.post(
            f"{cs.url}/v1/tasks",
            json={"model": "replicate/veo-3.1-fast", "input": {"prompt": "waves", "duration": 4}},
            headers=headers,
            timeout=20,
        ).json()
        listed = op.get("/console/admin/tasks")
        assert task["id"] in listed.text and f"Cancel {task['id']}" in listed.text
        r = op.post(f"/console/admin/tasks/{task['id']}/cancel", {"reason": "stuck"})
        assert r.status_code == 422  # not confirmed
        op.get("/console/admin/tasks")
        r = op.post(
            f"/console/admin/tasks/{task['id']}/cancel", {"reason": "stuck", "confirm": "yes"}
        )
        assert r.status_code == 303
    finally:
        httpx.delete(f"{replicate}/_sim/knobs").raise_for_status()
    status = db.execute("SELECT status FROM tasks WHERE id = ?", [task["id"]]).fetchone()[0]
    assert status == "canceled"
    balance = db.execute(
        "SELECT balance_micros, held_micros FROM accounts WHERE id = ?", [account_id]
    )
    assert balance.fetchone() == (2_500_000, 0)

    # The key, revoked from the account's page: the API refuses it at once.
    key_id = db.execute("SELECT id FROM api_keys WHERE account_id = ?", [account_id]).fetchone()[0]
    assert form(f"/console/admin/keys/{key_id}/revoke", {}).status_code == 422
    assert form(f"/console/admin/keys/{key_id}/revoke", {"confirm": "yes"}).status_code == 303
    assert httpx.get(f"{cs.url}/v1/models", headers=headers).status_code == 401

    # Closed for good: its page offers no more changes, and a second close is 409.
    assert form(f"{base}/close", {"reason": "asked", "confirm": "yes"}).status_code == 303
    page = op.get(base)
    assert 'id="status">closed' in page.text and "/close" not in page.text
    r = op.post(f"{base}/close", {"reason": "again", "confirm": "yes"})
    assert r.status_code == 409
    actions = [
        r["action"]
        for r in db.query(
            "SELECT action FROM admin_audit WHERE actor = 'console:op-three@example.com' ORDER BY id"
        )
    ]
    assert actions == [
        "credits.adjustment",
        "credits.adjustment",
        "tasks.cancel",
        "keys.revoke",
        "accounts.close",
    ]


def test_a_suspension_through_the_admin_api_is_mailed_too(
    cs: ConsoleServer, db: sqlite_utils.Database
) -> None:
    """The mail comes from the accounts' state, not from the door: the API's suspension (the
    CLI's calls the same function) reaches the holder as the page's does."""
    account_id = create_account(db, "api-suspended@example.com")["id"]
    _, token = create_token(db, CLI, "tests", "write")
    r = httpx.post(
        f"{cs.url}/admin/v1/accounts/{account_id}/suspend",
        json={"reason": "chargeback 7"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while not cs.mail("api-suspended@example.com", "suspended") and time.monotonic() < deadline:
        time.sleep(0.1)
    (mail,) = cs.mail("api-suspended@example.com", "suspended")
    assert "chargeback 7" in mail["body"]


def test_the_account_search_pages_through_every_match(
    cs: ConsoleServer, db: sqlite_utils.Database, new: Callable[[], Browser]
) -> None:
    made = {create_account(db, f"paged-{i:02d}@example.com")["id"] for i in range(30)}
    op = new()
    operator(cs, db, op, "op-pages@example.com")
    seen: list[str] = []
    path: str | None = "/console/admin/accounts?q=paged-"
    while path:
        page = op.get(path)
        assert page.status_code == 200
        seen += re.findall(r'href="/console/admin/accounts/(acct_\w+)"', page.text)
        more = re.search(r'rel="next" href="([^"]+)"', page.text)
        path = more.group(1).replace("&amp;", "&") if more else None
    assert len(seen) == 30 and set(seen) == made  # 25, then 5; none twice


def test_the_overview_adds_up_on_each_backend(database: str | Path) -> None:
    """The overview's figures from known usage rows, on SQLite and on PostgreSQL (its SQL is
    portable; sums come back as exact integers on both)."""
    db = open_db(database)
    ledger = Ledger(db)
    ops = Operations(db, ledger, TaskStore(db, ledger), 30)
    a, b = (
        create_account(db, "ov-a@example.com")["id"],
        create_account(db, "ov-b@example.com")["id"],
    )
    set_status(db, b, "suspended", "test")
    now = datetime.now(UTC)
    today, yesterday = (
        now.isoformat(timespec="seconds"),
        (now - timedelta(days=1)).isoformat(timespec="seconds"),
    )
    old = (now - timedelta(days=40)).isoformat(timespec="seconds")
    rows = [  # account, created_at, model, provider, status, hold_state, cost, error_code
        (a, today, "openai/x", "openai", "succeeded", "captured", 1_500_000, None),
        (a, today, "openai/x", "openai", "failed", "released", 0, "upstream_timeout"),
        (a, yesterday, "acme/y", "acme", "succeeded", "captured", 250_000, None),
        (b, yesterday, "openai/x", "openai", "failed", "released", 0, "invalid_request"),
        (b, today, "openai/x", "openai", "pending", "pending", None, None),
        (a, old, "openai/x", "openai", "succeeded", "captured", 9_000_000, None),  # not counted
    ]
    # Written as the gateway writes them: ended requests settled in a batch, a task's hold.
    for account in (a, b):
        ledger.post(account, 20_000_000, kind="grant", reason="g", actor="t")
    ended = [
        Settlement(
            request_id=f"req_ov{i}",
            account_id=acct,
            reservation_id=f"p:{acct}",
            hold_micros=2_000_000,
            cost_micros=cost,
            taken_micros=0,
            succeeded=hold == "captured",
            key_id=None,
            billed_as=(model, provider, "chat", "{}"),
            stream=0,
            created_at=at,
            error_code=code,
        )
        for i, (acct, at, model, provider, status, hold, cost, code) in enumerate(rows)
        if hold != "pending"
    ]
    with transaction(ledger) as c:
        settle_op(c, ended, now.isoformat())
    ledger.hold("task_ov4", b, 2_000_000, timedelta(minutes=5),
                {"model": "openai/x", "provider": "openai"})  # fmt: skip
    o = overview(ops, now=now)
    assert o.days[-1] == now.date().isoformat() and len(o.days) == 30
    assert (o.calls_per_day[-1], o.calls_per_day[-2], sum(o.calls_per_day)) == (3, 2, 5)
    assert (o.spend_per_day[-1], o.spend_per_day[-2]) == (1_500_000, 250_000)
    assert all(type(v) is int for v in [*o.spend_per_day, *o.spend_per_model["openai/x"]])
    assert o.spend_per_model == {
        "openai/x": [0] * 29 + [1_500_000],
        "acme/y": [0] * 28 + [250_000, 0],
    }
    assert o.accounts_by_status == {"active": 1, "suspended": 1}
    assert o.active_accounts == 2
    assert [(m["key"], m["calls"], m["cost_micros"]) for m in o.top_models] == [
        ("openai/x", 3, 1_500_000),  # the pending call is not a total yet
        ("acme/y", 1, 250_000),
    ]
    assert o.providers == [
        {"provider": "acme", "calls": 1, "upstream_errors": 0, "error_rate": "0.0%"},
        {"provider": "openai", "calls": 4, "upstream_errors": 1, "error_rate": "25.0%"},
    ]
    assert o.pending_holds == 1 and o.last_check is None
    assert ledger.check() == []  # the daily totals are the usage rows' sums, on each backend
    db.execute("UPDATE usage_daily SET upstream_errors = 0")
    [problem] = ledger.check()
    assert problem.endswith(
        "(openai/x, openai): its daily totals are off their usage rows by upstream_errors -1"
    )
    asyncio.run(record_check(ops, Actor("console:op@example.com")))
    assert overview(ops, now=now).last_check["actor"] == "console:op@example.com"  # type: ignore[index]
    if is_postgres(db):
        db.conn.close()


def test_the_overview_and_the_books_are_read_off_the_event_loop(database: str | Path) -> None:
    """Their sums scan the usage rows (seconds at a million): on a worker thread, on SQLite
    through that thread's own read-only connection, so the loop serves calls meanwhile; the
    figures are those read in place."""
    db = open_db(database)
    ledger = Ledger(db)
    ops = Operations(db, ledger, TaskStore(db, ledger), 30)
    account = create_account(db, "off-loop@example.com")["id"]
    ledger.post(account, 5_000_000, kind="grant", reason="g", actor="t")
    ledger.hold("task_off", account, 1_000_000, timedelta(minutes=5), {"key_id": "key_off"})
    readers: list[Operations] = []

    def probe(on: Operations) -> tuple[Overview, dict[str, Any]]:
        with pytest.raises(RuntimeError):  # no event loop runs on this thread
            asyncio.get_running_loop()
        readers.append(on)
        if not is_postgres(on.db):  # a connection of the thread's own, which cannot write
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                on.db.execute("DELETE FROM usage")
        return overview(on), check_books(on)

    figures, books = asyncio.run(reading(ops, probe))
    assert figures == overview(ops) and figures.pending_holds == 1
    assert books["ok"] and books["ledger_problems"] == []
    [on] = readers
    if is_postgres(db):
        assert on is ops  # the pool serves any thread
        db.conn.close()
    else:
        assert on.db is not db and on.ledger.db is on.db
