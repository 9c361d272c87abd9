"""What the Console's tests share: a sandboxed server with the Console on, and a browser-
like HTTP client that keeps cookies and sends each form's CSRF token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from apimodels.server import Server, assemble, listen_at
from apimodels.testing import bound_socket, serve
from support import registry_for

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
PASSWORD = "correct horse battery"


@dataclass
class ConsoleServer:
    url: str
    server: Server

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
    server = assemble(registry, database or tmp / "console.db", sandbox=True, environ={})
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    listen_at(server, url, "127.0.0.1")
    with serve(server.app, sock=sock):
        yield ConsoleServer(url, server)


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
