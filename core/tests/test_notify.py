"""Client webhooks' SSRF rules, below the HTTP layer: which addresses are public
(``is_public_address``, with IPv4 inside IPv6 judged by the IPv4), URL checks, the
submission-time lookup and the delivery-time resolver that keeps only public addresses
(what a DNS-rebinding name meets)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from apimodels.errors import InvalidRequest
from apimodels.tasks.notify import Notifier, PublicOnlyResolver, check_url, is_public_address


class Answers:
    """A DNS resolver that answers what the test says (no network)."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[dict]:
        return [
            {"hostname": host, "host": h, "port": port, "family": family, "proto": 0, "flags": 0}
            for h in self.hosts
        ]

    async def close(self) -> None:
        return None


def resolve(*answers: str) -> list[dict]:
    """PublicOnlyResolver over a resolver that answers ``answers`` (made in the loop)."""

    async def run() -> list[dict]:
        resolver = PublicOnlyResolver()
        resolver._inner = Answers(*answers)  # type: ignore[assignment]
        return await resolver.resolve("rebinding.example", 443)

    return asyncio.run(run())


@pytest.mark.parametrize("private", ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "fc00::1"])
def test_a_name_that_resolves_to_a_private_address_is_not_connected_to(private: str) -> None:
    with pytest.raises(OSError, match="no public address"):
        resolve(private)


def test_of_mixed_answers_only_the_public_addresses_are_used() -> None:
    assert [r["host"] for r in resolve("192.168.1.1", "93.184.216.34")] == ["93.184.216.34"]


def test_public_addresses_pass() -> None:
    [found] = resolve("93.184.216.34")
    assert found["host"] == "93.184.216.34"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/h",
        "https://127.0.0.1/h",
        "https://[::ffff:10.0.0.1]/h",
        "https://printer.local/h",
        "https://db.internal/h",
        "https://user:pw@example.com/h",
        "ftp://example.com/h",
        "https:///nohost",
        42,
    ],
)
def test_check_url_refuses(url: Any) -> None:
    with pytest.raises(InvalidRequest):
        check_url(url, allow_private=False)


def test_check_url_allows_public_https_and_private_when_configured() -> None:
    assert check_url("https://hooks.example.com/x", allow_private=False)
    assert check_url("http://127.0.0.1:9/x", allow_private=True)


# --- is_public_address: IPv4 inside IPv6, and the ranges never public ------------------

#: IPv6 forms that carry an internal IPv4 address, or ranges that are never public.
REFUSED = [
    "64:ff9b::7f00:1",  # NAT64 well-known prefix, 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64, 169.254.169.254
    "64:ff9b:1::a9fe:a9fe",  # NAT64 local-use prefix
    "64:ff9b:1::808:808",  # local-use prefix: a site's own translator, refused whole
    "2002:7f00:1::1",  # 6to4, 127.0.0.1
    "2002:a00:1::1",  # 6to4, 10.0.0.1
    "::127.0.0.1",  # IPv4-compatible
    "::a9fe:a9fe",  # IPv4-compatible, 169.254.169.254
    "::ffff:0:7f00:1",  # SIIT (IPv4-translated)
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client is 127.0.0.1
    "fec0::1",  # site-local (deprecated)
    "fc00::1",
    "fe80::1",
    "fe80::1%eth0",
    "::1",
    "::",
    "ff02::1",
    "2001:db8::1",
    "127.0.0.1",
    "10.0.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
]

ALLOWED = [
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "64:ff9b::808:808",  # NAT64 of a public address
    "2002:808:808::1",  # 6to4 of a public address
    "::ffff:8.8.8.8",
    "8.8.8.8",
    "93.184.216.34",
]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are(address: str) -> None:
    assert is_public_address(address)
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [a for a in REFUSED if ":" in a and "%" not in a])
def test_ipv6_literals_are_refused_in_urls(address: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_url(f"https://[{address}]/hook", allow_private=False)
    assert caught.value.param == "webhook"


@pytest.mark.parametrize("address", REFUSED)
def test_the_delivery_resolver_drops_them(address: str) -> None:
    """A name re-pointed (DNS rebinding) at one of them is not connected to."""

    async def run() -> list[Any]:
        resolver = PublicOnlyResolver()
        resolver._inner = Answers(address, "2606:4700::1111")  # type: ignore[assignment]
        return await resolver.resolve("rebinding.example", 443)

    assert [r["host"] for r in asyncio.run(run())] == ["2606:4700::1111"]


@pytest.mark.parametrize("address", ["64:ff9b::7f00:1", "::127.0.0.1", "2002:7f00:1::1"])
def test_delivery_to_a_literal_is_refused_before_connecting(address: str) -> None:
    """aiohttp does not resolve IP literals, so ``deliver`` checks the URL itself."""

    class NoConnections:
        def post(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a connection was attempted")

    async def run() -> str | None:
        notifier = Notifier(allow_private=False, timeout=1, retry_hours=1)
        notifier._session = NoConnections()  # type: ignore[assignment]
        return await notifier.deliver(f"https://[{address}]:9/hook", "whsec_AAAA", "t", b"{}")

    assert "private" in (asyncio.run(run()) or "")
