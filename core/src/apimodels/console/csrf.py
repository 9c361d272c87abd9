"""CSRF protection on every form: a token bound to the browser's session, checked on every
unsafe request, plus the browser's own ``Sec-Fetch-Site`` / ``Origin`` word where it gives
one (a cross-site POST is refused before its token is even read).

The token is an HMAC, under a server secret, of the session cookie (or, before sign-in, of
a random per-browser cookie): nothing to store, and it changes with the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

PRE_SESSION_COOKIE = "am_browser"  # before sign-in: what the sign-in/up forms' tokens bind to
FIELD = "csrf_token"


class CSRF:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def token(self, binding: str) -> str:
        return hmac.new(self.secret, b"csrf:" + binding.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def new_binding() -> str:
        return secrets.token_urlsafe(24)

    def valid(self, request: Request, binding: str | None, sent: str | None) -> bool:
        if not cross_site_allowed(request):
            return False
        if not binding or not sent:
            return False
        return hmac.compare_digest(self.token(binding), sent)


def cross_site_allowed(request: Request) -> bool:
    """False when the browser says the request comes from another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None  # no header: an old browser or a script; the token decides
    return urlsplit(origin).netloc == request.headers.get("host", "")
