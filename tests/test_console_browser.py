"""The Console in a real browser: Playwright for Python driving Debian's Chromium (never a
downloaded browser: ``.ci/run`` installs the ``chromium`` package). One holder's whole life,
through the pages only: sign up with the keyboard alone, verify by the mailed link, sign in,
top up through the simulated Stripe Checkout (the balance rises once), make a key and use it
with the official OpenAI SDK, see the call and its cost, revoke the key (the SDK gets 401),
reset the password by mail, close the account. A screenshot of each page is saved (into
``$CONSOLE_SCREENSHOTS`` when set: docs/console.md shows a few)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from console_support import (
    CHROMIUM,
    ConsoleServer,
    chromium_page,
    console_server,
    screenshots,
    snap,
)
from support import Simulator

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
EMAIL = "browser@example.com"
FIRST, SECOND = "first browser password", "second browser password"


@pytest.fixture(scope="module")
def cs(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    with console_server(tmp_path_factory.mktemp("browser"), simulator.url) as server:
        yield server


@pytest.fixture
def page(cs: ConsoleServer) -> Iterator[Any]:
    with chromium_page(cs.url, clipboard=True) as page:
        yield page


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return screenshots(tmp_path)


def _labelled(page) -> list[str]:  # type: ignore[no-untyped-def]
    """The visible inputs, selects and buttons of the page that have no accessible name."""
    return page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
            .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label'))
            .map(e => e.outerHTML)"""
    )


def _call(cs: ConsoleServer, key: str) -> str:
    with openai.OpenAI(base_url=f"{cs.url}/v1", api_key=key, max_retries=0) as client:
        reply = client.chat.completions.with_raw_response.create(
            model="openai/gpt-6-luna", messages=[{"role": "user", "content": "Hello"}]
        )
    httpx.get(f"{cs.url}/health")  # its charge committed
    return reply.headers["x-request-id"]


def _mail_link(page, kind: str) -> str:  # type: ignore[no-untyped-def]
    """Open the sandbox mail page and the newest link of ``kind`` in it."""
    page.goto("/console/dev/mail")
    article = page.locator("article.mail", has_text=f"· {kind}").first
    return article.locator("a").first.get_attribute("href")


def test_a_holders_whole_life_in_the_browser(cs: ConsoleServer, page, shots: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    # Sign up with the keyboard only: Tab to each field, type, Enter.
    page.goto("/console/sign-up")
    assert _labelled(page) == []
    snap(page, shots / "sign-up.png")
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "email":
            break
    page.keyboard.type(EMAIL)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(FIRST)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/dashboard$"))
    expect(page.get_by_text("not verified yet")).to_be_visible()

    # Verify by the mailed link, shown on the sandbox's mail page.
    link = _mail_link(page, "verify")
    snap(page, shots / "sandbox-mail.png")
    page.goto(link)
    expect(page.get_by_role("heading", name="Email verified")).to_be_visible()

    # Sign out, then in again through the form.
    page.goto("/console/dashboard")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
    assert _labelled(page) == []
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(FIRST)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/dashboard$"))

    # Top up $20 through the simulated Stripe Checkout; the balance rises once.
    page.goto("/console/credits")
    assert _labelled(page) == []
    page.get_by_label("Amount (USD)").fill("20")
    page.get_by_role("button", name="Top up").click()
    expect(page.get_by_text("Simulated Stripe Checkout").first).to_be_visible()
    snap(page, shots / "checkout.png")
    page.get_by_role("button", name="Pay", exact=True).click()
    expect(page.get_by_text("This session is complete")).to_be_visible()
    page.get_by_role("link", name="Back to the merchant").click()  # to the Console's receipt
    expect(page).to_have_url(re.compile(r"/console/credits/[\w-]+$"))
    expect(page.get_by_role("heading", name=re.compile("^Receipt "))).to_be_visible()
    page.goto("/console/credits")
    expect(page.locator("#balance")).to_have_text("$20.00")
    page.reload()
    expect(page.locator("#balance")).to_have_text("$20.00")
    expect(page.locator("#paid-3m")).to_have_text("$20.00")
    snap(page, shots / "credits.png")
    account_id = cs.db.execute("SELECT id FROM accounts WHERE email = ?", [EMAIL]).fetchone()[0]
    topups = cs.db.execute(
        "SELECT COUNT(*) FROM ledger_entries WHERE account_id = ? AND kind = 'topup'", [account_id]
    ).fetchone()[0]
    assert topups == 1

    # A key, shown once with a copy button, used by the official OpenAI SDK.
    page.goto("/console/keys")
    page.get_by_label("Name").fill("sdk")
    page.get_by_role("button", name="Create a key").click()
    key = page.locator("#new-key").input_value()
    assert re.fullmatch(r"amk_[0-9A-Za-z]{54}", key)
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key
    assert _labelled(page) == []
    snap(page, shots / "keys.png")
    request_id = _call(cs, key)
    cost = cs.db.execute(
        "SELECT cost_micros FROM usage WHERE request_id = ?", [request_id]
    ).fetchone()[0]
    shown = f"${cost // 1_000_000}.{cost % 1_000_000:06d}".rstrip("0")

    # The call, with its cost, on the dashboard and the usage pages.
    page.goto("/console/dashboard")
    row = page.locator("tr", has_text=request_id)
    expect(row.locator(".cost")).to_have_text(shown)
    expect(page.locator("svg.chart rect")).to_have_count(1)
    snap(page, shots / "dashboard.png", full_page=True)
    page.goto("/console/usage")
    assert _labelled(page) == []
    page.get_by_label("Model").select_option("openai/gpt-6-luna")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("link", name=request_id).click()
    expect(page.locator("#cost")).to_have_text(shown)
    snap(page, shots / "usage-detail.png", full_page=True)
    page.goto("/console/models")
    snap(page, shots / "models.png")

    # Revoke: the SDK gets 401 at once.
    page.goto("/console/keys")
    page.get_by_role("button", name="Revoke sdk").click()
    expect(page.get_by_text("Key revoked")).to_be_visible()
    with pytest.raises(openai.AuthenticationError):
        _call(cs, key)

    # Reset the password by mail.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("link", name="Forgot the password?").click()
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_role("button", name="Mail me a link").click()
    page.goto(_mail_link(page, "reset"))
    page.get_by_label("New password").fill(SECOND)
    page.get_by_role("button", name="Save and sign in").click()
    expect(page).to_have_url(re.compile(r"/console/dashboard$"))

    # Close the account.
    page.goto("/console/account")
    assert _labelled(page) == []
    snap(page, shots / "account.png", full_page=True)
    page.get_by_label("Type your email address to confirm").fill(EMAIL)
    page.locator("#close-password").fill(SECOND)
    page.get_by_role("button", name="Close the account").click()
    expect(page.get_by_role("heading", name="Account closed")).to_be_visible()
    page.goto("/console/dashboard")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
