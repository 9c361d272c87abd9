"""Money under concurrency: an account never spends credits it does not have.

Outside testing found that 40 simultaneous speech calls against credits for exactly 5 were
sometimes served 6 or 7 times. The cause: ``reservation.amount += await ledger.reserve(...)``
read the in-memory reservation before the await and wrote it back after, undoing what the
calls that settled meanwhile had taken from it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from support import Gateway, Simulator, gateway_of_its_own

SPEECH = {"model": "openai/tts-1", "input": "a" * 1000, "voice": "alloy"}
CALL_MICROS = 15_000  # 1,000 characters at $0.015 per 1k: the hold is the charge


@pytest.fixture(scope="module")
def reserving_gateway(
    simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway that keeps its reservations between calls, as ``make run`` does."""

    def keep_reservations(text: str) -> str:
        return re.sub(r"(?m)^reserve_idle_seconds = \S+", "reserve_idle_seconds = 1", text)

    with gateway_of_its_own(
        simulator, tmp_path_factory.mktemp("overdraft"), keep_reservations
    ) as gateway:
        yield gateway


async def _burst(url: str, key: str, n: int) -> list[int]:
    """``n`` calls a millisecond apart, so that calls end while others wait for credits."""
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as client:

        async def one(i: int) -> int:
            await asyncio.sleep(i / 1000)
            return (await client.post("/v1/audio/speech", json=SPEECH)).status_code

        return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.parametrize("round_", range(4))
def test_forty_calls_against_credits_for_five(
    reserving_gateway: Gateway, simulator: Simulator, round_: int
) -> None:
    """12 accounts at once, each with credits for 5 calls, each firing 40 (before the fix
    some accounts were served 6 or 7 in most rounds after the first)."""
    gateway = reserving_gateway
    simulator.knobs(latency=0.005)
    accounts = [
        gateway.new_account(f"burst{round_}.{i}@example.com", 5 * CALL_MICROS) for i in range(12)
    ]

    async def all_bursts() -> list[list[int]]:
        return await asyncio.gather(*(_burst(gateway.url, key, 40) for _, key in accounts))

    results = asyncio.run(all_bursts())
    served = [codes.count(200) for codes in results]
    assert served == [5] * 12
    for (account_id, _), codes in zip(accounts, results, strict=True):
        assert sorted(set(codes)) == [200, 402], codes
        assert gateway.ledger.balance(account_id).balance_micros == 0
    assert gateway.ledger.check() == []
