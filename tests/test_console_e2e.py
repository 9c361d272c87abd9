"""The Console over real HTTP (a sandboxed server: simulated providers, Stripe and mail),
driven by a cookie-keeping client as a browser would: accounts, mail links, keys used with
the official OpenAI SDK, usage and its cost, and the security properties (CSRF, no session
fixation, no cross-account reads, sign-in throttling, no password in any log)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from apimodels.console.mail import Mail, Notifier
from apimodels.store.accounts import create_account, set_status
from apimodels.store.db import is_postgres
from console_support import PASSWORD, Browser, ConsoleServer, console_server
from support import BACKENDS, Simulator, database_for


@pytest.fixture(scope="module", params=BACKENDS)
def cs(
    request: pytest.FixtureRequest, simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsoleServer]:
    """The Console on each backend: its sessions, links, throttle and mail log are SQL that
    must hold on PostgreSQL as on SQLite."""
    extra = "\n[console]\nnotice_interval_seconds = 0.1\n"
    tmp = tmp_path_factory.mktemp("console")
    with console_server(tmp, simulator.url, extra, database_for(request, tmp)) as server:
        yield server


def everything_stored(db: Any) -> str:
    """Every row of every table, as text (either backend)."""
    if is_postgres(db):
        sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        tables = [row[0] for row in db.execute(sql).fetchall()]
    else:
        tables = db.table_names()
    return "\n".join(
        str(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"').fetchall()
    )


@pytest.fixture
def browser(new: Callable[[], Browser]) -> Browser:
    return new()


def _new_key(b: Browser, name: str = "laptop") -> tuple[str, str]:
    b.get("/console/keys")
    page = b.post("/console/keys", {"name": name})
    assert page.status_code == 201
    key = re.search(r'id="new-key" class="secret" readonly value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    key_id = re.findall(r'<tr id="(key_[A-Za-z0-9]+)">', page.text)[0]
    return key, key_id


def _fund(cs: ConsoleServer, email: str, micros: int) -> str:
    account_id = cs.db.execute("SELECT id FROM accounts WHERE email = ?", [email]).fetchone()[0]
    cs.ledger.post(account_id, micros, kind="grant", reason="test", actor="tests")
    return account_id


def _call(cs: ConsoleServer, key: str) -> str:
    with openai.OpenAI(base_url=f"{cs.url}/v1", api_key=key, max_retries=0) as client:
        reply = client.chat.completions.with_raw_response.create(
            model="openai/gpt-6-luna", messages=[{"role": "user", "content": "Hello"}]
        )
    httpx.get(f"{cs.url}/health")  # the charge committed
    return reply.headers["x-request-id"]


def test_sign_up_mails_a_one_time_verification_link(
    new: Callable[[], Browser], cs: ConsoleServer, browser: Browser
) -> None:
    r = browser.sign_up("verify@example.com")
    assert r.status_code == 303 and r.headers["location"].endswith("/console/dashboard")
    assert "not verified yet" in browser.get("/console/dashboard").text
    link = cs.link("verify@example.com", "verify")
    assert "Email verified" in browser.get(link.removeprefix(cs.url)).text
    assert "not verified yet" not in browser.get("/console/dashboard").text
    again = browser.get(link.removeprefix(cs.url))
    assert again.status_code == 400 and "expired or was used" in again.text
    # The same address cannot sign up twice.
    other = new()
    assert other.sign_up("verify@example.com").status_code == 422


def test_a_key_made_in_the_console_serves_the_sdk_and_its_call_shows_with_its_cost(
    cs: ConsoleServer, browser: Browser
) -> None:
    browser.sign_up("calls@example.com")
    account_id = _fund(cs, "calls@example.com", 5_000_000)
    key, key_id = _new_key(browser)
    assert re.fullmatch(r"amk_[0-9A-Za-z]{54}", key)
    assert key not in browser.get("/console/keys").text  # shown once
    request_id = _call(cs, key)
    cost = cs.db.execute(
        "SELECT cost_micros FROM usage WHERE request_id = ? AND account_id = ?",
        [request_id, account_id],
    ).fetchone()[0]
    assert cost > 0
    shown = f"${cost // 1_000_000}.{cost % 1_000_000:06d}".rstrip("0")
    dashboard = browser.get("/console/dashboard").text
    assert request_id in dashboard and shown in dashboard
    assert re.search(r'id="spent-today">\$0\.0*' + re.escape(shown.split(".")[1]), dashboard)
    detail = browser.get(f"/console/usage/{request_id}").text
    assert shown in detail and "input tokens" in detail and "output tokens" in detail
    assert "input per 1m" in detail  # the unit prices in force
    usage = browser.get(f"/console/usage?key={key_id}&model=openai/gpt-6-luna").text
    assert request_id in usage
    assert request_id not in browser.get("/console/usage?model=openai/none").text
    exported = browser.get("/console/usage.csv?status=succeeded")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["request_id"] for r in rows] == [request_id]
    assert rows[0]["cost_usd"] == f"{cost / 1_000_000:.6f}"  # exact: micros as 6 decimals
    assert (
        key_id in browser.get("/console/keys").text
        and "never" not in browser.get("/console/keys").text.split(key_id)[1].split("</tr>")[0]
    )


def test_revoke_and_rotate_reach_the_api_at_once(cs: ConsoleServer, browser: Browser) -> None:
    browser.sign_up("revoke@example.com")
    _fund(cs, "revoke@example.com", 5_000_000)
    key, key_id = _new_key(browser)
    _call(cs, key)
    rotated = browser.post(f"/console/keys/{key_id}/rotate", {})
    new_key = re.search(r'readonly value="([^"]+)"', rotated.text).group(1)  # type: ignore[union-attr]
    _call(cs, key)  # the old key works for the grace period
    _call(cs, new_key)
    browser.post(f"/console/keys/{key_id}/revoke", {})
    with pytest.raises(openai.AuthenticationError):
        _call(cs, key)
    new_id = re.findall(r'<tr id="(key_[A-Za-z0-9]+)">', rotated.text)[0]
    limits = browser.post(
        f"/console/keys/{new_id}/limits",
        {"rpm": "1", "daily_usd": "", "total_usd": "2.5"},
    )
    assert "Limits saved" in limits.text
    row = cs.db.execute(
        "SELECT rpm_limit, total_cap_micros FROM api_keys WHERE revoked_at IS NULL AND name = 'laptop'"
        " AND account_id = (SELECT id FROM accounts WHERE email = 'revoke@example.com')"
    ).fetchone()
    assert tuple(row) == (1, 2_500_000)


def test_forms_without_their_token_or_from_another_site_are_refused(
    new: Callable[[], Browser], cs: ConsoleServer, browser: Browser
) -> None:
    browser.sign_up("csrf@example.com")
    browser.get("/console/keys")
    assert browser.post("/console/keys", {"name": "x"}, token=False).status_code == 403
    wrong = {"name": "x", "csrf_token": "0" * 64}
    assert browser.http.post("/console/keys", data=wrong).status_code == 403
    # A token of another browser's session is no good here.
    other = new()
    other.sign_up("csrf-other@example.com")
    other.get("/console/keys")
    theirs = {"name": "x", "csrf_token": other.token}
    assert browser.http.post("/console/keys", data=theirs).status_code == 403
    cross = browser.http.post(
        "/console/keys",
        data={"name": "x", "csrf_token": browser.token},
        headers={"sec-fetch-site": "cross-site"},
    )
    assert cross.status_code == 403
    # Signed out, the sign-in form is protected the same way.
    fresh = new()
    login = {"email": "csrf@example.com", "password": PASSWORD}
    assert fresh.post("/console/sign-in", login, token=False).status_code == 403
    assert (
        cs.db.execute(
            "SELECT COUNT(*) FROM api_keys k JOIN accounts a ON a.id = k.account_id"
            " WHERE a.email = 'csrf@example.com'"
        ).fetchone()[0]
        == 0
    )
    ok = browser.post("/console/keys", {"name": "x"})
    assert ok.status_code == 201


def test_signing_in_always_makes_a_new_session(cs: ConsoleServer, browser: Browser) -> None:
    browser.sign_up("fixation@example.com")
    browser.post("/console/sign-out", {})
    planted = "attacker-chosen-session-id"
    browser.http.cookies.set("am_session", planted, domain="127.0.0.1", path="/console")
    browser.sign_in("fixation@example.com")
    first = browser.session
    assert first and first != planted
    browser.sign_in("fixation@example.com")
    second = browser.session
    assert second and second != first
    # The replaced session is revoked; the planted one never existed.
    for token in (first, planted):
        stale = httpx.get(f"{cs.url}/console/dashboard", cookies={"am_session": token})
        assert stale.status_code == 303 and "/sign-in" in stale.headers["location"]


def test_session_cookie_flags(new: Callable[[], Browser], cs: ConsoleServer) -> None:
    b = new()
    b.get("/console/sign-up")
    r = b.post("/console/sign-up", {"email": "cookie@example.com", "password": PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
    assert "secure" not in cookie  # 127.0.0.1: a developer's machine, plain http
    # Reached by a public name (behind a proxy), the cookie is Secure.
    b.http.headers["host"] = "console.example.com"
    b.get("/console/sign-in")
    r = b.post("/console/sign-in", {"email": "cookie@example.com", "password": PASSWORD})
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


def test_one_account_cannot_read_or_change_anothers(
    new: Callable[[], Browser], cs: ConsoleServer
) -> None:
    alice, mallory = new(), new()
    alice.sign_up("alice@example.com")
    _fund(cs, "alice@example.com", 5_000_000)
    key, key_id = _new_key(alice)
    request_id = _call(cs, key)
    alice.get("/console/credits")
    order_page = alice.post("/console/credits", {"amount_usd": "10", "method": "card"})
    assert order_page.status_code == 303
    order_id = cs.db.execute(
        "SELECT id FROM topup_orders WHERE account_id ="
        " (SELECT id FROM accounts WHERE email = 'alice@example.com')"
    ).fetchone()[0]
    session_id = cs.db.execute(
        "SELECT s.id FROM console_sessions s JOIN accounts a ON a.id = s.account_id"
        " WHERE a.email = 'alice@example.com' AND s.revoked_at IS NULL"
    ).fetchone()[0]
    mallory.sign_up("mallory@example.com")
    assert mallory.get(f"/console/usage/{request_id}").status_code == 404
    assert mallory.get(f"/console/credits/{order_id}").status_code == 404
    assert mallory.get("/console/tasks/task_does_not_exist").status_code == 404
    mallory.get("/console/keys")
    for action in ("revoke", "rotate", "limits"):
        assert mallory.post(f"/console/keys/{key_id}/{action}", {"rpm": "1"}).status_code == 404
    mallory.get("/console/account")
    mallory.post(f"/console/account/sessions/{session_id}/revoke", {})
    _call(cs, key)  # alice's key still works
    assert alice.get("/console/dashboard").status_code == 200  # and her session too
    for path in ("/console/dashboard", "/console/usage", "/console/usage.csv", "/console/keys",
                 "/console/credits", "/console/account/export.json"):  # fmt: skip
        text = mallory.get(path).text
        assert request_id not in text and key_id not in text and order_id not in text, path
        assert "alice@example.com" not in text, path
    export = json.loads(mallory.get("/console/account/export.json").text)
    assert export["account"]["email"] == "mallory@example.com"
    assert "password_hash" not in export["account"]


def test_sign_in_is_throttled_per_email(new: Callable[[], Browser], cs: ConsoleServer) -> None:
    b = new()
    b.sign_up("throttle@example.com")
    attacker = new()
    for _ in range(5):
        assert attacker.sign_in("throttle@example.com", "wrong password!").status_code == 401
    blocked = attacker.sign_in("throttle@example.com")  # even the right password now
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert attacker.session is None
    # Another address is not blocked by this one's failures.
    other = new()
    other.sign_up("unthrottled@example.com")
    other.post("/console/sign-out", {})
    assert other.sign_in("unthrottled@example.com").status_code == 303


def test_reset_by_mail_replaces_the_password_and_signs_out_everywhere(
    new: Callable[[], Browser], cs: ConsoleServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # An account made by the operator's CLI has no password: a reset link sets one.
    create_account(cs.db, "cli-made@example.com")
    b, elsewhere = new(), new()
    assert b.sign_in("cli-made@example.com").status_code == 401
    b.get("/console/reset")
    b.post("/console/reset", {"email": "cli-made@example.com"})
    b.get("/console/reset")
    unknown = b.post("/console/reset", {"email": "nobody@example.com"})
    assert "If nobody@example.com has an account" in unknown.text  # no enumeration
    assert cs.mail("nobody@example.com", "reset") == []
    link = cs.link("cli-made@example.com", "reset").removeprefix(cs.url)
    b.get(link)
    assert b.post(link, {"password": "short"}).status_code == 422
    assert b.post(link, {"password": "first password 1"}).status_code == 303
    assert b.get("/console/dashboard").status_code == 200
    elsewhere.sign_in("cli-made@example.com", "first password 1")
    # A second reset: the new password works, the old does not, every session is out.
    b.post("/console/sign-out", {})
    b.get("/console/reset")
    b.post("/console/reset", {"email": "cli-made@example.com"})
    link2 = cs.link("cli-made@example.com", "reset").removeprefix(cs.url)
    b.get(link2)
    b.post(link2, {"password": "second password 2"})
    assert elsewhere.get("/console/dashboard").status_code == 303
    assert new().sign_in("cli-made@example.com", "first password 1").status_code == 401
    assert new().sign_in("cli-made@example.com", "second password 2").status_code == 303
    assert b.get(link).status_code == 400  # each link works once
    # Passwords never reach a log line, nor the database in clear.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("first password 1", "second password 2", "wrong password!"):
        assert secret not in logged
    dump = everything_stored(cs.db)
    assert "first password 1" not in dump and "second password 2" not in dump
    assert "$argon2id$" in dump


def test_password_change_and_sign_out_everywhere(
    new: Callable[[], Browser], cs: ConsoleServer
) -> None:
    a, b = new(), new()
    a.sign_up("sessions@example.com")
    b.sign_in("sessions@example.com")
    a.get("/console/account")
    assert (
        a.post(
            "/console/account/password",
            {"current_password": "nope nope nope", "new_password": "x" * 12},
        ).status_code
        == 422
    )
    changed = a.post(
        "/console/account/password",
        {"current_password": PASSWORD, "new_password": "another secret 9"},
    )
    assert "Password changed" in changed.text
    assert b.get("/console/dashboard").status_code == 303  # the other session is out
    assert a.get("/console/dashboard").status_code == 200
    c = new()
    c.sign_in("sessions@example.com", "another secret 9")
    a.get("/console/account")
    a.post("/console/account/sign-out-everywhere", {})
    assert c.get("/console/dashboard").status_code == 303
    assert a.get("/console/dashboard").status_code == 303


def test_closing_the_account_revokes_its_keys(
    new: Callable[[], Browser], cs: ConsoleServer, browser: Browser
) -> None:
    browser.sign_up("closing@example.com")
    _fund(cs, "closing@example.com", 1_000_000)
    key, _ = _new_key(browser)
    _call(cs, key)
    browser.get("/console/account")
    refused = browser.post(
        "/console/account/close", {"confirm": "wrong@example.com", "password": PASSWORD}
    )
    assert refused.status_code == 422
    closed = browser.post(
        "/console/account/close", {"confirm": "closing@example.com", "password": PASSWORD}
    )
    assert "Account closed" in closed.text
    with pytest.raises(openai.AuthenticationError):
        _call(cs, key)
    assert browser.get("/console/dashboard").status_code == 303
    assert new().sign_in("closing@example.com").status_code == 401


def test_the_price_list_is_public(cs: ConsoleServer) -> None:
    page = httpx.get(f"{cs.url}/console/models")
    assert page.status_code == 200 and "openai/gpt-6-luna" in page.text
    luna = cs.server.gateway.catalog.models["openai/gpt-6-luna"]
    assert str(luna.pricing.input_per_1m) in page.text
    assert httpx.get(f"{cs.url}/console/dashboard").status_code == 303  # the rest is not


def test_notifier_sends_through_a_real_smtp_server_and_says_when_it_cannot(
    cs: ConsoleServer,
) -> None:
    sink = cs.server.console.sink
    notifier = Notifier("127.0.0.1", sink.port, "Ops <ops@example.com>")
    sent = asyncio.run(notifier.send(Mail("smtp@example.com", "Hello", "Body text", "terms")))
    assert sent and cs.mail("smtp@example.com", "terms")[0]["body"].strip() == "Body text"
    closed_port = Notifier("127.0.0.1", 1, "x@example.com")
    assert asyncio.run(closed_port.send(Mail("a@example.com", "s", "b", "terms"))) is False


def test_the_console_is_off_outside_the_sandbox_unless_enabled(gateway: object) -> None:
    from support import Gateway

    assert isinstance(gateway, Gateway)
    assert httpx.get(f"{gateway.url}/console/models").status_code == 404


def _wait_for_mail(cs: ConsoleServer, to: str, kind: str, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + 10
    while len(cs.mail(to, kind)) < count:
        assert time.monotonic() < deadline, f"no {kind} mail to {to}"
        time.sleep(0.05)
    return cs.mail(to, kind)


def test_receipt_low_balance_and_suspension_are_mailed_once(
    cs: ConsoleServer, browser: Browser
) -> None:
    email = "events@example.com"
    browser.sign_up(email)
    browser.get(cs.link(email, "verify").removeprefix(cs.url))
    account_id = _fund(cs, email, 5_000_000)
    browser.get("/console/account")
    browser.post("/console/account/low-balance", {"low_balance_usd": "3"})
    # A top-up paid at the simulated Checkout: one receipt.
    browser.get("/console/credits")
    canceled = browser.post("/console/credits", {"amount_usd": "10", "method": "card"})
    back = httpx.post(canceled.headers["location"], data={"action": "cancel"})
    assert back.status_code == 303 and back.headers["location"] == f"{cs.url}/console/credits"
    checkout = browser.post("/console/credits", {"amount_usd": "10", "method": "card"})
    httpx.post(checkout.headers["location"], data={"action": "pay"})
    receipt = _wait_for_mail(cs, email, "receipt")[0]
    order_id = cs.db.execute(
        "SELECT id FROM topup_orders WHERE account_id = ? AND status = 'paid'", [account_id]
    ).fetchone()[0]
    assert order_id in receipt["body"] and "$10.00 of credits" in receipt["body"]
    assert f"/console/credits/{order_id}" in receipt["body"]
    # Spending down below the holder's threshold ($3): one mail, however long it stays low.
    assert cs.mail(email, "low_balance") == []
    cs.ledger.post(account_id, -13_500_000, kind="adjustment", reason="t", actor="tests")
    low = _wait_for_mail(cs, email, "low_balance")
    assert "$1.50" in low[0]["body"]
    time.sleep(0.5)
    assert len(cs.mail(email, "low_balance")) == 1 and len(cs.mail(email, "receipt")) == 1
    # Back above it re-arms the alert.
    cs.ledger.post(account_id, 5_000_000, kind="grant", reason="t", actor="tests")
    time.sleep(0.4)
    cs.ledger.post(account_id, -5_000_000, kind="adjustment", reason="t", actor="tests")
    assert len(_wait_for_mail(cs, email, "low_balance", 2)) == 2
    # A suspension, with its reason.
    set_status(cs.db, account_id, "suspended", "card dispute under review")
    suspended = _wait_for_mail(cs, email, "suspended")
    assert "card dispute under review" in suspended[0]["body"]
    time.sleep(0.4)
    assert len(cs.mail(email, "suspended")) == 1
    # Reinstated, then suspended again for the same reason: a new suspension, a new mail.
    set_status(cs.db, account_id, "active", "dispute resolved")
    set_status(cs.db, account_id, "suspended", "card dispute under review")
    assert len(_wait_for_mail(cs, email, "suspended", 2)) == 2


def test_terms_versions_are_accepted_at_sign_up_and_again_when_they_change(
    simulator: Simulator, tmp_path: Path
) -> None:
    legal = tmp_path / "legal"
    (legal / "terms").mkdir(parents=True)
    (legal / "privacy").mkdir()
    (legal / "terms" / "2026-01-01.md").write_text(
        "# Terms\n\nBe nice. <script>alert(1)</script>\n"
    )
    (legal / "privacy" / "2026-01-01.md").write_text("# Privacy\n\nWe keep little.\n")
    email = "terms@example.com"
    extra = "\n[console]\nnotice_interval_seconds = 0.1\n"
    with console_server(tmp_path, simulator.url, extra) as cs:
        page = httpx.get(f"{cs.url}/console/terms").text
        assert "<h1>Terms</h1>" in page and "<script>alert" not in page and "&lt;script&gt;" in page
        b = Browser(cs.url)
        try:
            b.get("/console/sign-up")
            assert "Terms of Service</a> (2026-01-01)" in b.get("/console/sign-up").text
            refused = b.post("/console/sign-up", {"email": email, "password": PASSWORD})
            assert refused.status_code == 422 and "Accept the Terms" in refused.text
            made = b.post(
                "/console/sign-up", {"email": email, "password": PASSWORD, "accept": "yes"}
            )
            assert made.status_code == 303
            assert "We have published" not in b.get("/console/dashboard").text
            history = b.get("/console/account").text
            assert history.count("<td>2026-01-01</td>") == 2
        finally:
            b.close()
    # The operator publishes new Terms and restarts.
    (legal / "terms" / "2026-06-01.md").write_text("# Terms\n\nBe nicer.\n")
    with console_server(tmp_path, simulator.url, extra) as cs:
        mailed = _wait_for_mail(cs, email, "terms")
        assert "2026-06-01" in mailed[0]["body"] and "/console/terms" in mailed[0]["body"]
        b = Browser(cs.url)
        try:
            b.sign_in(email)
            notice = b.get("/console/dashboard").text
            assert "We have published" in notice and "Terms of Service 2026-06-01" in notice
            assert "Privacy Policy 2026" not in notice  # accepted already
            b.post("/console/legal/accept", {"document": "terms"})
            assert "We have published" not in b.get("/console/dashboard").text
            assert "<td>2026-06-01</td>" in b.get("/console/account").text
            time.sleep(0.3)
            assert len(cs.mail(email, "terms")) == 1
        finally:
            b.close()


def test_pages_in_simplified_chinese_by_browser_or_switch(
    cs: ConsoleServer, new: Callable[[], Browser]
) -> None:
    zh = httpx.get(f"{cs.url}/console/sign-in", headers={"accept-language": "zh-CN,zh;q=0.9"})
    assert '<html lang="zh-CN">' in zh.text and "忘记密码" in zh.text
    assert '<label for="password">密码</label>' in zh.text
    en = httpx.get(f"{cs.url}/console/sign-in", headers={"accept-language": "en-GB"})
    assert '<html lang="en">' in en.text and "Forgot the password?" in en.text
    b = new()
    b.sign_up("zh@example.com")
    switched = b.get("/console/language/zh_CN?next=/console/credits")
    assert switched.status_code == 303 and switched.headers["location"].endswith("/console/credits")
    page = b.get("/console/credits").text
    assert "<h1>额度</h1>" in page and "$0.00" in page  # amounts stay in USD
    assert ">English</a>" in page  # the switch back
    b.get("/console/account")
    wrong = b.post(
        "/console/account/password", {"current_password": "x" * 12, "new_password": "y" * 12}
    )
    assert "当前密码错误。" in wrong.text
    b.get("/console/language/en?next=/console/credits")
    assert "<h1>Credits</h1>" in b.get("/console/credits").text
    # Only the Console's own pages after a switch.
    away = b.get("/console/language/en?next=https://evil.example/")
    assert away.headers["location"].endswith("/console/dashboard")


def test_the_operators_export_has_no_password_hash_and_pseudonymizing_ends_sessions(
    cs: ConsoleServer, browser: Browser
) -> None:
    from apimodels.store.accounts import export_account, pseudonymize
    from apimodels.store.db import utcnow

    browser.sign_up("export@example.com")
    account_id = cs.db.execute(
        "SELECT id FROM accounts WHERE email = 'export@example.com'"
    ).fetchone()[0]
    assert "password_hash" not in export_account(cs.db, account_id)["account"]
    browser.get("/console/account")
    browser.post("/console/account/close", {"confirm": "export@example.com", "password": PASSWORD})
    assert pseudonymize(cs.db, account_id, utcnow())
    left = cs.db.execute(
        "SELECT (SELECT COUNT(*) FROM console_sessions WHERE account_id = ?),"
        " (SELECT password_hash FROM accounts WHERE id = ?)",
        [account_id, account_id],
    ).fetchone()
    assert tuple(left) == (0, None)


def test_tasks_are_listed_with_their_outputs_playable_and_only_to_their_owner(
    cs: ConsoleServer, new: Callable[[], Browser]
) -> None:
    owner, other = new(), new()
    owner.sign_up("tasks@example.com")
    _fund(cs, "tasks@example.com", 20_000_000)
    key, _ = _new_key(owner)
    auth = {"authorization": f"Bearer {key}"}
    body = {"model": "replicate/veo-3.1-fast", "input": {"prompt": "waves", "duration": 4}}
    task = httpx.post(f"{cs.url}/v1/tasks", json=body, headers=auth, timeout=30).json()
    deadline = time.monotonic() + 30
    while task["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, task
        time.sleep(0.1)
        task = httpx.get(f"{cs.url}/v1/tasks/{task['id']}", headers=auth).json()
    assert task["status"] == "succeeded", task
    listing = owner.get("/console/tasks").text
    assert task["id"] in listing and "replicate/veo-3.1-fast" in listing
    detail = owner.get(f"/console/tasks/{task['id']}").text
    src = re.search(r'<video controls src="([^"]+)"', detail).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    video = httpx.get(src)
    assert video.status_code == 200 and video.headers["content-type"].startswith("video/")
    assert 'id="task-status">succeeded' in detail
    assert "Cancel the task" not in detail  # finished: nothing to cancel
    other.sign_up("tasks-other@example.com")
    assert other.get(f"/console/tasks/{task['id']}").status_code == 404
    other.get("/console/tasks")
    assert other.post(f"/console/tasks/{task['id']}/cancel", {}).status_code == 404
    assert task["id"] not in other.get("/console/tasks").text
