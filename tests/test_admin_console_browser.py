"""The admin pages in a real browser (Playwright driving Debian's Chromium, launched as in
test_console_browser): an operator signs in through the form, finds an account, grants it
credits (the holder's official OpenAI SDK can call), suspends it (the SDK then gets 403 with
the reason, and the holder's mail arrives in the sandbox sink), refunds its top-up through
the simulated Stripe, and sees it all in the audit log. A screenshot of each admin page is
saved (into ``$CONSOLE_SCREENSHOTS`` when set: docs/admin.md shows a few)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlite_utils

from apimodels.admin import Actor
from apimodels.admin.operators import create_admin
from apimodels.store.accounts import create_account, create_key
from apimodels.store.db import database_path
from console_support import (
    CHROMIUM,
    PASSWORD,
    Browser,
    ConsoleServer,
    chromium_page,
    console_server,
    screenshots,
    snap,
)
from support import Simulator

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
OPERATOR, HOLDER = "operator@example.com", "holder@example.com"


@pytest.fixture(scope="module")
def cs(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    extra = "\n[console]\nnotice_interval_seconds = 0.1\n"
    with console_server(tmp_path_factory.mktemp("adminbrowser"), simulator.url, extra) as server:
        yield server


@pytest.fixture
def page(cs: ConsoleServer) -> Iterator[Any]:
    with chromium_page(cs.url) as page:
        yield page


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return screenshots(tmp_path)


def _chat(cs: ConsoleServer, key: str) -> None:
    with openai.OpenAI(base_url=f"{cs.url}/v1", api_key=key, max_retries=0) as client:
        client.chat.completions.create(
            model="openai/gpt-6-luna", messages=[{"role": "user", "content": "Hello"}]
        )


def test_an_operator_grants_suspends_and_refunds_in_the_browser(  # type: ignore[no-untyped-def]
    cs: ConsoleServer, page, shots: Path
) -> None:
    from playwright.sync_api import expect

    db = sqlite_utils.Database(database_path(cs.server.db))
    # The operator: a Console account with a verified address, made an operator by the CLI's
    # service function.
    b = Browser(cs.url)
    assert b.sign_up(OPERATOR).status_code == 303
    assert b.get(cs.link(OPERATOR, "verify").removeprefix(cs.url)).status_code == 200
    b.close()
    create_admin(db, Actor("cli:tests"), OPERATOR)
    # The holder: an account with a key, and a paid $20 top-up (the simulated Stripe).
    account_id = create_account(db, HOLDER)["id"]
    _, key = create_key(db, account_id, "sdk")
    order = httpx.post(
        f"{cs.url}/v1/topups",
        json={"amount_usd": "20"},
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    ).json()
    assert httpx.post(order["checkout_url"], data={"action": "pay"}, timeout=20).status_code == 303

    # Sign in through the form: the nav offers the admin pages.
    page.goto("/console/admin")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next=/console/admin$"))
    page.get_by_label("Email").fill(OPERATOR)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/admin$"))
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    # Find the account, grant it credits.
    page.get_by_role("link", name="Accounts").click()
    page.get_by_label("Email or account id").fill("holder@")
    page.get_by_role("button", name="Search").click()
    snap(page, shots / "admin-accounts.png")
    page.get_by_role("link", name=account_id).click()
    expect(page.locator("#balance")).to_have_text("$20.00")
    page.get_by_label("Amount (USD)").fill("5")
    page.locator("#credit-reason").fill("welcome credits")
    page.get_by_role("button", name="Post credits").click()
    expect(page.get_by_text("Credits granted.")).to_be_visible()
    expect(page.locator("#balance")).to_have_text("$25.00")
    _chat(cs, key)  # the holder's SDK calls while the account is active

    # Suspend: the box must be ticked (the browser will not send the form without it).
    page.locator("#suspend-reason").fill("unpaid invoice 42")
    page.get_by_role("button", name="Suspend the account").click()
    expect(page.locator("#status")).to_have_text("active")
    page.get_by_label("I confirm: this cannot be undone").first.check()
    page.get_by_role("button", name="Suspend the account").click()
    expect(page.get_by_text("Account suspended.")).to_be_visible()
    expect(page.locator("#status")).to_have_text("suspended")
    snap(page, shots / "admin-account.png", full_page=True)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _chat(cs, key)
    assert refused.value.status_code == 403
    assert "unpaid invoice 42" in refused.value.message
    deadline = time.monotonic() + 10
    while not cs.mail(HOLDER, "suspended") and time.monotonic() < deadline:
        time.sleep(0.1)
    (mail,) = cs.mail(HOLDER, "suspended")
    assert "unpaid invoice 42" in mail["body"]

    # Refund $7.50 of the top-up through Stripe: the balance falls by as much, once.
    page.get_by_role("link", name="Orders").first.click()
    page.get_by_label("Email or account id").fill(HOLDER)
    page.get_by_role("button", name="Filter").click()
    page.get_by_label(f"Amount to refund of {order['id']} (USD; empty: all that is left)").fill(
        "7.50"
    )
    page.get_by_label(f"Reason for refunding {order['id']}").fill("customer asked")
    page.get_by_label(f"Confirm refunding {order['id']}").check()
    snap(page, shots / "admin-orders.png")
    page.get_by_role("button", name=f"Refund {order['id']}").click()
    expect(page.get_by_text("Order refunded.")).to_be_visible()
    expect(page.locator("table.orders tr", has_text=order["id"])).to_contain_text("$7.50")
    balance = db.execute("SELECT balance_micros FROM accounts WHERE id = ?", [account_id])
    spent = db.execute(
        "SELECT COALESCE(SUM(cost_micros), 0) FROM usage WHERE account_id = ?", [account_id]
    ).fetchone()[0]
    assert balance.fetchone()[0] == 25_000_000 - 7_500_000 - spent

    # The overview counts the call; the audit log has each action, by this operator.
    page.get_by_role("link", name="Overview").click()
    expect(page.locator("svg.chart rect")).to_have_count(1)
    expect(page.locator("#top-models")).to_contain_text("openai/gpt-6-luna")
    page.get_by_role("button", name="Check the books now").click()
    expect(page.locator("#last-check")).to_contain_text("no problem")
    snap(page, shots / "admin-overview.png", full_page=True)
    page.get_by_role("link", name="Audit log").click()
    rows = page.locator("#audit tbody tr")
    expect(rows.filter(has_text="accounts.suspend")).to_contain_text("unpaid invoice 42")
    expect(rows.filter(has_text="orders.refund")).to_contain_text(f"console:{OPERATOR}")
    expect(rows.filter(has_text="credits.grant")).to_contain_text("welcome credits")
    snap(page, shots / "admin-audit.png")
    db.close()
