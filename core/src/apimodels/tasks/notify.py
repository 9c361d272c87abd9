"""Client webhooks: the task object POSTed to the client's URL when a task ends, signed.

Signing follows the Standard Webhooks scheme (the one Replicate uses, so one verifier does
both): headers ``webhook-id`` (the task id), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"``, keyed by
the account's secret (``whsec_`` + base64; ``apimodels accounts webhook-secret`` shows and
rotates it). Deliveries are retried with exponential backoff until a 2xx or
``tasks.webhook_retry_hours``.

SSRF: a webhook URL must be https, and its host must resolve only to public addresses
(no private, loopback, link-local, site-local, multicast or reserved ones; IPv4 embedded in
IPv6 is judged by the IPv4 inside: ``is_public_address``). The check runs when the task is
submitted and again at every delivery, inside the connection's own DNS resolution, so a name
that later re-points to an internal address is refused too. ``tasks.allow_private_webhooks``
lifts both rules (tests, the sandbox, a trusted LAN).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import sqlite_utils
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .. import signing
from ..errors import InvalidRequest, NotFound


def account_webhook_secret(
    db: sqlite_utils.Database, account_id: str, *, rotate: bool = False
) -> str:
    """The account's signing secret, created on first use; ``rotate`` replaces it."""
    row = db.execute("SELECT webhook_secret FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if row is None:
        raise NotFound(f"no account {account_id!r}")
    if row[0] and not rotate:
        return str(row[0])
    secret = signing.new_secret()
    with db.conn:
        db.execute("UPDATE accounts SET webhook_secret = ? WHERE id = ?", (secret, account_id))
    return secret


#: IPv6 ranges whose last 32 bits are an IPv4 address a relay or the kernel delivers to:
#: IPv4-compatible (``::a.b.c.d``, deprecated, also ``::`` and ``::1``), IPv4-mapped, SIIT
#: (``::ffff:0:a.b.c.d``) and the well-known NAT64 prefix. ``ipaddress`` calls most of
#: them global, so they are unwrapped before the check.
_EMBEDS_IPV4 = tuple(
    ipaddress.IPv6Network(n) for n in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
#: Refused whole: Teredo (2001::/32: whoever relays it decides where it goes), the local-use
#: NAT64 prefix (a site's own translator, embedding anywhere) and deprecated site-local.
_NEVER = tuple(ipaddress.IPv6Network(n) for n in ("2001::/32", "64:ff9b:1::/48", "fec0::/10"))


def is_public_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a webhook may connect to ``address``: globally routable unicast, with IPv4
    embedded in IPv6 (NAT64, 6to4, mapped, compatible) judged by the IPv4 inside."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _NEVER):
            return False
        if ip.sixtofour is not None:
            ip = ip.sixtofour
        elif any(ip in net for net in _EMBEDS_IPV4):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


def check_url(url: Any, *, allow_private: bool) -> str:
    """A webhook URL fit to keep, or a 400 saying what is wrong with it (no DNS here)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise InvalidRequest("'webhook' must be a URL of at most 2048 characters", param="webhook")
    parts = urlsplit(url)
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        raise InvalidRequest("'webhook' must be an https:// URL", param="webhook")
    if parts.username or parts.password:
        raise InvalidRequest("'webhook' must not carry credentials", param="webhook")
    if not allow_private:
        host = parts.hostname
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise _private(host)
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return url
        if not is_public_address(literal):
            raise _private(host)
    return url


def _private(host: str) -> InvalidRequest:
    return InvalidRequest(
        f"'webhook' points at a private, loopback or link-local address ({host}); "
        "webhooks go to public https URLs only",
        param="webhook",
        code="webhook_not_allowed",
    )


async def check_resolves_public(url: str) -> None:
    """Resolve the webhook's host now and refuse it if any address is not public."""
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequest(
            f"'webhook' host {host} does not resolve", param="webhook", code="webhook_not_allowed"
        ) from None
    if not infos or not all(is_public_address(str(info[4][0])) for info in infos):
        raise _private(host)


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's DNS resolution, keeping only public addresses (none left: no connection)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if is_public_address(r["host"])]
        if not public:
            raise OSError(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


class Notifier:
    """Delivers task webhooks over one connection pool."""

    def __init__(
        self, *, allow_private: bool, timeout: float, retry_hours: float, first_retry: float = 5.0
    ) -> None:
        self.allow_private = allow_private
        self.first_retry = first_retry
        self.timeout = timeout
        self.retry_seconds = retry_hours * 3600
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = None if self.allow_private else PublicOnlyResolver()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=64),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def deliver(self, url: str, secret: str, msg_id: str, body: bytes) -> str | None:
        """POST one delivery; None on a 2xx, else why it failed (short, no secrets)."""
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "apimodels-webhooks/1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.sign(secret, msg_id, timestamp, body),
        }
        try:
            check_url(url, allow_private=self.allow_private)
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except InvalidRequest as exc:
            return exc.message
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return type(exc).__name__

    def retry_in(self, attempts: int) -> float:
        """Seconds before the next attempt: 5 s, 10 s, 20 s ... (by default), at most an hour."""
        return float(min(self.first_retry * 2**attempts, 3600))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
