"""What the fault tests share: a gateway served on 127.0.0.1 in front of a :class:`FakeUpstream`,
and the money read back from its database."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from faults.upstream import FakeUpstream

from apimodels.providers import dispatch
from apimodels.schemas import ENDPOINTS
from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.testing import serve
from support import SIM_KEY, TASKS_SETTINGS, Gateway, registry_for

CHAT: dict[str, Any] = {
    "model": "openai/gpt-4o-mini",
    # 5 bytes + 8 framing tokens: the estimate covers the fake's 12 prompt tokens
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 10,
}
EMBED: dict[str, Any] = {"model": "openai/text-embedding-3-large", "input": "words to embed. " * 32}
SPEECH: dict[str, Any] = {"model": "openai/tts-1", "input": "Say this, please.", "voice": "alloy"}


def set_key(text: str, table: str, key: str, value: str) -> str:
    """``key = value`` (TOML) in ``[table]`` of a registry's text, replaced or added."""
    header = f"[{table}]\n"
    start = text.index(header) + len(header)
    end = text.find("\n[", start)
    end = len(text) if end < 0 else end + 1
    section, n = re.subn(
        rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text[start:end], count=1
    )
    if not n:
        section = f"{key} = {value}\n{section}"
    return text[:start] + section + text[end:]


@contextmanager
def gateway_for(
    upstream: FakeUpstream,
    tmp: Path,
    *,
    credits_micros: int = 10_000_000,
    openai: dict[str, str] | None = None,
    gateway: dict[str, str] | None = None,
) -> Iterator[Gateway]:
    """A gateway (tasks on) whose OpenAI provider is ``upstream``, with one account holding
    ``credits_micros``; ``openai`` and ``gateway`` set keys of those registry tables."""
    registry = registry_for(upstream.url, tmp, tasks=TASKS_SETTINGS)
    text = registry.read_text()
    for key, value in (openai or {}).items():
        text = set_key(text, "providers.openai", key, value)
    for key, value in (gateway or {}).items():
        text = set_key(text, "gateway", key, value)
    registry.write_text(text)
    server = assemble(registry, tmp / "gateway.db", environ={"OPENAI_API_KEY": SIM_KEY})
    account = create_account(server.db, "faults@example.com")["id"]
    _, key = create_key(server.db, account, "faults")
    if credits_micros:
        server.ledger.post(account, credits_micros, kind="grant", reason="faults", actor="tests")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account)


def micros(usd: str | float) -> int:
    """A USD amount as the API writes it ("0.000123") in micro-USD, exactly."""
    value = Decimal(str(usd)) * 1_000_000  # a JSON number reads as its shortest float
    assert value == value.to_integral_value(), usd
    return int(value)


def settled(gw: Gateway, account_id: str, timeout: float = 5) -> tuple[int, int]:
    """(balance, held) once nothing is held for the account any more (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        b = gw.ledger.balance(account_id)
        if b.held_micros == 0 or time.monotonic() > deadline:
            return b.balance_micros, b.held_micros
        time.sleep(0.02)


def rows(gw: Gateway, account_id: str) -> list[dict[str, Any]]:
    return list(
        gw.db.query("SELECT * FROM usage WHERE account_id = ? ORDER BY created_at", [account_id])
    )


def row(gw: Gateway, request_id: str) -> dict[str, Any]:
    return dict(gw.db["usage"].get(request_id))


def estimate(gw: Gateway, path: str, body: dict[str, Any]) -> tuple[Any, int]:
    """The usage estimate and the hold of ``body`` sent to ``path`` (``/v1/...``)."""
    schema, _ = ENDPOINTS[path.removeprefix("/v1/")]
    route = gw.server.gateway.routes[body["model"]]
    return dispatch.estimate(route, schema.model_validate(body))
