"""Client webhooks' SSRF rules, below the HTTP layer: URL checks and the delivery-time
resolver that keeps only public addresses (what a DNS-rebinding name meets)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from apimodels.errors import InvalidRequest
from apimodels.tasks.notify import PublicOnlyResolver, check_url


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
