"""What the Console's tests share: a sandboxed server with the Console on, a browser-like
HTTP client that keeps cookies and sends each form's CSRF token, and a page in Debian's
Chromium driven by Playwright (never a browser Playwright downloads)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import sqlite_utils

from apimodels.billing.ledger import Ledger
from apimodels.server import Server, assemble, listen_at
from apimodels.store.db import open_db
from apimodels.testing import bound_socket, serve
from support import registry_for

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
PASSWORD = "correct horse battery"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (.ci/run installs it)
#: Headless, nothing that reaches for the network on its own (this machine has none), and
#: its shared memory in /tmp (a container's /dev/shm can be too small for a capture).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


@contextmanager
def chromium_page(url: str, *, clipboard: bool = False) -> Iterator[Any]:
    """A Playwright page in Debian's Chromium, its relative URLs on ``url``."""
    from playwright.sync_api import sync_playwright  # only the browser tests need it

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=url, viewport={"width": 1200, "height": 900})
        if clipboard:
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
        yield context.new_page()
        context.close()
        browser.close()


def snap(page: Any, path: Path, *, full_page: bool = False) -> None:
    """Save a screenshot of ``page``. Headless Chromium now and then refuses one capture
    ("Unable to capture screenshot", mostly the first after a cold start on a loaded machine)
    and takes the same picture when asked again, so that one refusal is retried."""
    from playwright.sync_api import Error

    for attempt in range(3):
        try:
            page.screenshot(path=path, full_page=full_page)
            return
        except Error as error:
            if "Unable to capture screenshot" not in str(error) or attempt == 2:
                raise
            page.wait_for_timeout(250)


def screenshots(tmp: Path) -> Path:
    """Where the browser tests save their screenshots: $CONSOLE_SCREENSHOTS, else ``tmp``."""
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class ConsoleServer:
    """The running server, and the test's own connection to its database: the server's
    connection belongs to the server's thread (SQLite's transactions are per connection,
    so a test writing through it could end a transaction the server has open)."""

    url: str
    server: Server
    database: str | Path

    @cached_property
    def db(self) -> sqlite_utils.Database:
        return open_db(self.database)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.db)

    def mail(self, to: str, kind: str) -> list[dict[str, Any]]:
        """The mail the sandbox sink received for ``to`` of ``kind``, oldest first."""
        sink = self.server.console.sink
        return [m for m in sink.messages() if m["to"] == to and m["kind"] == kind]

    def link(self, to: str, kind: str) -> str:
        body = self.mail(to, kind)[-1]["body"]
        return re.search(r"http://\S+", body).group(0)  # type: ignore[union-attr]


@contextmanager
def console_server(
    tmp: Path, simulator_url: str, extra: str = "", database: str | Path | None = None
) -> Iterator[ConsoleServer]:
    """A sandbox server (simulated providers, Stripe and mail) with the Console on, on
    ``database`` (a PostgreSQL URL) or a SQLite file in ``tmp``."""
    registry = registry_for(simulator_url, tmp, extra)
    database = database or tmp / "console.db"
    server = assemble(registry, database, sandbox=True, environ={})
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    listen_at(server, url, "127.0.0.1")
    with serve(server.app, sock=sock):
        cs = ConsoleServer(url, server, database)
        yield cs
        if "db" in cs.__dict__:
            cs.db.conn.close()


class Browser:
    """An HTTP client that acts as a browser on the Console: cookies kept, forms posted
    with the token of the page they came from."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=20, follow_redirects=False)
        self.token = ""

    def get(self, path: str) -> httpx.Response:
        r = self.http.get(path)
        if m := TOKEN.search(r.text):
            self.token = m.group(1)
        return r

    def post(self, path: str, data: dict[str, str], *, token: bool = True) -> httpx.Response:
        body = {**data, "csrf_token": self.token} if token else data
        r = self.http.post(path, data=body)
        if m := TOKEN.search(r.text):
            self.token = m.group(1)
        return r

    def sign_up(self, email: str, password: str = PASSWORD) -> httpx.Response:
        self.get("/console/sign-up")
        return self.post("/console/sign-up", {"email": email, "password": password})

    def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        self.get("/console/sign-in")
        return self.post("/console/sign-in", {"email": email, "password": password})

    @property
    def session(self) -> str | None:
        return self.http.cookies.get("am_session")

    def close(self) -> None:
        self.http.close()
