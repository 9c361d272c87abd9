"""The Biller: requests admitted in memory against a process's reservation, each settled
once; review findings about its upkeep, several processes and a busy database."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlite_utils

from apimodels.billing import limits
from apimodels.billing.biller import Bill, Biller
from apimodels.billing.ledger import GroupCommit, Ledger
from apimodels.billing.limits import Limiter
from apimodels.errors import InsufficientCredits, RateLimited
from apimodels.http.app import settle_stream
from apimodels.providers.dispatch import StreamResult
from apimodels.providers.types import Usage
from apimodels.store.accounts import KeyLimits, Principal, create_account
from apimodels.store.db import database_path, open_db

TTL = timedelta(minutes=10)
ROUTE: Any = SimpleNamespace(
    model=SimpleNamespace(id="acme/m"), billed_as=("acme/m", "acme", "chat", "{}")
)


@pytest.fixture
def db(tmp_path: Path) -> sqlite_utils.Database:
    return open_db(tmp_path / "billing.db")


def funded(db: sqlite_utils.Database, micros: int) -> tuple[Ledger, Principal]:
    ledger = Ledger(db)
    account = create_account(db, "b@example.com")["id"]
    ledger.post(account, micros, kind="grant", reason="test", actor="tests")
    return ledger, Principal(account, "key_1", "active", None, None, 0.0)


def biller(ledger: Ledger, idle_seconds: float = 0, delay: float = 0.0) -> Biller:
    writes = GroupCommit(ledger, delay)
    return Biller(writes, TTL, Limiter(writes), idle_seconds=idle_seconds)


async def call(b: Biller, principal: Principal, request_id: str, hold: int) -> Bill:
    bill = await b.open(request_id, principal, ROUTE, hold, stream=False)
    assert isinstance(bill, Bill)
    return bill


def test_upkeep_between_a_grow_and_its_request_keeps_one_reservation(
    db: sqlite_utils.Database,
) -> None:
    """Review finding: the upkeep returned (and forgot) a reservation that a request had
    just grown and not yet used; that request then grew a copy, and two in-memory copies of
    one ledger row admitted more than the balance."""
    ledger, principal = funded(db, 2_500)

    async def run() -> None:
        b = biller(ledger)
        grow = b._reserve

        async def grow_then_upkeep(*args: Any) -> None:
            await grow(*args)
            await b.maintain()  # the once-a-second upkeep lands before the request resumes

        b._reserve = grow_then_upkeep  # type: ignore[method-assign]
        first = await call(b, principal, "r1", 2_000)
        assert b._reservations[principal.account_id] is first.reservation
        with pytest.raises(InsufficientCredits):
            await call(b, principal, "r2", 1_000)  # 500 left: not admitted
        assert await first.succeed(Usage(), 2_000)  # type: ignore[misc]
        await b.aclose()

    asyncio.run(run())
    assert ledger.balance(principal.account_id).balance_micros == 500
    assert ledger.balance(principal.account_id).held_micros == 0
    assert ledger.check() == []


def test_a_busy_process_leaves_room_for_another(db: sqlite_utils.Database) -> None:
    """Review finding: a process reserved up to twice its in-flight holds out of all that
    was available, so another process's call got a 402 the balance could cover."""
    ledger, principal = funded(db, 10_000)
    other = Ledger(open_db(database_path(db)))  # a second server process on the same file

    async def run() -> None:
        a, b = biller(ledger, idle_seconds=60), biller(other, idle_seconds=60)
        running = await call(a, principal, "a1", 4_000)
        served = await call(b, principal, "b1", 3_000)  # 6,000 left after a's 4,000
        assert await served.succeed(Usage(), 3_000)  # type: ignore[misc]
        assert await running.succeed(Usage(), 4_000)  # type: ignore[misc]
        await a.aclose()
        await b.aclose()

    asyncio.run(run())
    assert ledger.balance(principal.account_id).balance_micros == 3_000
    assert ledger.balance(principal.account_id).held_micros == 0
    assert ledger.check() == []


def test_a_locked_database_fails_a_batch_once_not_once_per_write(
    db: sqlite_utils.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a batch that met a locked database was retried write by write, one
    busy timeout each, with the event loop blocked all along."""
    ledger, principal = funded(db, 10_000)
    db.conn.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(database_path(db), isolation_level=None)

    retried: list[object] = []

    def alone(self: GroupCommit, op: object, now: str) -> tuple[object, BaseException]:
        retried.append(op)
        return None, RuntimeError("retried alone")

    async def run() -> list[bool]:
        b = biller(ledger, idle_seconds=60)
        bills = [await call(b, principal, f"r{i}", 1_000) for i in range(3)]
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        monkeypatch.setattr(GroupCommit, "_alone", alone)
        outcomes = await asyncio.gather(*(bill.succeed(Usage(), 100) for bill in bills))  # type: ignore[misc]
        blocker.execute("ROLLBACK")
        monkeypatch.undo()
        later = await call(b, principal, "r9", 1_000)  # the connection is usable again
        assert await later.succeed(Usage(), 100)  # type: ignore[misc]
        await b.aclose()
        return outcomes

    assert asyncio.run(run()) == [False, False, False]  # answered, not charged: logged
    assert retried == []  # one busy timeout for the batch, not one per write
    assert not db.conn.in_transaction
    assert db.execute("SELECT request_id FROM usage").fetchall() == [("r9",)]
    assert ledger.balance(principal.account_id).balance_micros == 9_900
    assert ledger.check() == []


def test_a_stream_that_cannot_be_priced_after_its_client_left_is_free(
    db: sqlite_utils.Database,
) -> None:
    """A bill left open would pin its reservation for the life of the process: when the
    estimate of what was delivered cannot be priced, the call is free instead."""
    ledger, principal = funded(db, 10_000)
    unpriceable: Any = SimpleNamespace(model=ROUTE.model, provider=SimpleNamespace())  # no hooks

    async def run() -> bool | None:
        b = biller(ledger)
        bill = await call(b, principal, "s1", 2_000)
        gone = StreamResult(chunks=3, client_gone=True)
        recorded = await settle_stream(bill, unpriceable, Usage(input_tokens=5), gone)  # type: ignore[misc]
        assert bill.reservation.in_flight == 0
        await b.aclose()
        return recorded

    assert asyncio.run(run()) is True
    [row] = db.execute("SELECT status, cost_micros, error_code FROM usage").fetchall()
    assert row == ("failed", 0, "internal_error")
    assert ledger.balance(principal.account_id).balance_micros == 10_000
    assert ledger.balance(principal.account_id).held_micros == 0
    assert ledger.check() == []


def test_an_answered_calls_charge_waits_for_company_but_not_for_a_read(
    db: sqlite_utils.Database,
) -> None:
    """``gateway.commit_delay_ms``: an answered call's charge is committed with those that
    follow it within the delay; ``commit()`` (what a read of billing data calls first) and a
    shutdown commit it at once."""
    ledger, principal = funded(db, 10_000)

    def recorded() -> int:
        return db.execute("SELECT COUNT(*) FROM usage").fetchone()[0]

    async def run() -> None:
        b = biller(ledger, idle_seconds=1.0, delay=60.0)
        first = await call(b, principal, "d1", 1_000)
        charged = first.succeed(Usage(), 300)
        await asyncio.sleep(0.01)
        assert recorded() == 0 and not charged.done()  # waiting for company
        b.ledger.commit()
        assert recorded() == 1 and charged.result() is True
        second = await call(b, principal, "d2", 1_000)
        second.succeed(Usage(), 200)
        failed = await call(b, principal, "d3", 1_000)
        assert await failed.fail(None) is True  # someone waits on a failure: at once
        assert recorded() == 3  # and what was queued before it went with it
        third = await call(b, principal, "d4", 1_000)
        third.succeed(Usage(), 100)
        await b.aclose()  # a clean shutdown commits what is queued
        assert recorded() == 4

    asyncio.run(run())
    assert ledger.balance(principal.account_id).balance_micros == 10_000 - 600
    assert ledger.balance(principal.account_id).held_micros == 0
    assert ledger.check() == []


def test_a_capped_keys_charge_is_committed_before_its_next_call(
    db: sqlite_utils.Database,
) -> None:
    """Review finding: a key's spending counts once its charge is committed; a charge left
    waiting for company kept the whole hold counted, and the key's next call got a false
    429. A capped key's charges are committed at once."""
    ledger, funded_principal = funded(db, 100_000)
    principal = Principal(
        funded_principal.account_id,
        "key_1",
        "active",
        None,
        None,
        0.0,
        KeyLimits(None, None, 1_000),
    )

    async def run() -> None:
        b = biller(ledger, idle_seconds=60, delay=60.0)
        first = await call(b, principal, "c1", 600)
        first.succeed(Usage(), 50)
        await asyncio.sleep(0)  # the client's next call: 50 spent of 1,000, 600 more fits
        second = await call(b, principal, "c2", 600)
        second.succeed(Usage(), 50)
        await b.aclose()

    asyncio.run(run())
    assert ledger.balance(principal.account_id).balance_micros == 100_000 - 100
    assert ledger.check() == []


def test_writes_queued_under_a_loop_that_stopped_are_flushed_by_the_next(
    db: sqlite_utils.Database,
) -> None:
    """Review finding: a flush due on an event loop that stopped never runs; a write queued
    on the next loop must not wait for it forever."""
    ledger, principal = funded(db, 10_000)
    b = biller(ledger, idle_seconds=60, delay=0.05)

    async def first() -> None:
        bill = await call(b, principal, "l1", 1_000)  # grows the reservation
        bill.succeed(Usage(), 100)  # and the loop stops before this flush is due

    async def second() -> None:
        bill = await call(b, principal, "l2", 1_000)  # fits: nothing else is written
        assert await asyncio.wait_for(bill.succeed(Usage(), 100), 5) is True
        await b.aclose()

    asyncio.run(first())
    asyncio.run(second())
    assert db.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 2
    assert ledger.check() == []


def test_a_batch_interrupted_by_a_base_exception_leaves_no_waiter_hanging(
    db: sqlite_utils.Database,
) -> None:
    class Interrupted(BaseException):
        pass

    def interrupted(c: sqlite3.Connection) -> None:
        raise Interrupted

    def written(c: sqlite3.Connection) -> str:
        return "written"

    async def scenario() -> None:
        group = GroupCommit(Ledger(db))
        first = group.write(interrupted)
        second = group.write(written)
        # The loop reports the interruption of its callback; the batch's futures end.
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(second, 2)
        assert first.cancelled()
        assert await group.write(written) == "written"  # the queue goes on

    asyncio.run(scenario())


def test_a_call_settled_while_the_reservation_grows_is_not_given_back(
    db: sqlite_utils.Database,
) -> None:
    """Outside testing: 40 concurrent calls against credits for 5 served 6 or 7. Growing
    wrote back the amount it had read before awaiting the ledger, undoing what a call that
    settled meanwhile took from the reservation."""
    ledger, principal = funded(db, 5 * 1_000)

    async def run() -> list[str]:
        b = biller(ledger, idle_seconds=60)
        first = await call(b, principal, "r1", 1_000)  # grows to 2,000
        second = await call(b, principal, "r2", 1_000)
        reserve = b.ledger.reserve

        def reserve_while_one_settles(*args: Any) -> asyncio.Future[int]:
            granted = reserve(*args)
            first.succeed(Usage(), 1_000)  # lands while the growth is in flight
            return granted

        b.ledger.reserve = reserve_while_one_settles  # type: ignore[method-assign]
        outcomes = []
        for n in range(3, 10):
            try:
                await call(b, principal, f"r{n}", 1_000)
                outcomes.append("admitted")
            except InsufficientCredits:
                outcomes.append("402")
            b.ledger.reserve = reserve  # type: ignore[method-assign]
        await second.succeed(Usage(), 1_000)  # type: ignore[misc]
        await b.aclose()
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes.count("admitted") == 3  # 5 calls in all, for credits for 5
    assert ledger.balance(principal.account_id).held_micros >= 0
    assert ledger.check() == []


def test_processes_share_a_keys_spending_cap_through_leases(
    db: sqlite_utils.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes (two billers on one database) serving one key capped at 1,000: the
    room one leases, the other cannot; a lease returned, or left by a crashed process and
    expired, frees its room; a lowered cap applies to the next call."""
    monkeypatch.setattr(limits, "REFUSAL_SECONDS", 0.0)  # every refusal asks the database
    ledger, funded_principal = funded(db, 100_000)
    capped = replace(funded_principal, limits=KeyLimits(None, None, 1_000))

    async def run() -> None:
        a, b = biller(ledger, idle_seconds=60), biller(ledger, idle_seconds=60)
        first = await call(a, capped, "a1", 600)  # a leases 600 + 1,000 / 8
        with pytest.raises(RateLimited) as refused:
            await call(b, capped, "b1", 600)  # 275 left beside a's lease
        assert refused.value.code == "key_total_cap"
        await first.succeed(Usage(), 100)
        await a.aclose()  # returns its lease
        second = await call(b, capped, "b2", 600)  # 900 left
        await second.succeed(Usage(), 100)
        db.execute(  # a process that died holding 700: expired, so not counted
            "INSERT INTO spend_leases VALUES ('key_1', 'proc_dead', 700, '2000-01-01T00:00:00')"
        )
        third = await call(b, capped, "b3", 600)  # renews: 200 spent, 800 left
        await third.succeed(Usage(), 100)
        lowered = replace(capped, limits=KeyLimits(None, None, 400))
        with pytest.raises(RateLimited):  # 300 spent: its lease is renewed, and refused
            await call(b, lowered, "b4", 200)
        await b.aclose()

    asyncio.run(run())
    assert db.execute("SELECT SUM(cost_micros) FROM usage").fetchone()[0] == 300
    assert db.execute("SELECT holder FROM spend_leases").fetchall() == [("proc_dead",)]
    assert ledger.check() == []


def test_a_live_process_keeps_its_lease_under_a_long_call_and_returns_it_when_idle(
    db: sqlite_utils.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: a lease expired under a call still running (its hold in no usage row
    yet), and another process leased the same room: the key was charged past its cap. The
    upkeep keeps a live process's leases; an idle key's lease goes back at once."""
    monkeypatch.setattr(limits, "LEASE_SECONDS", 0.4)  # stands for 60 s
    monkeypatch.setattr(limits, "REFUSAL_SECONDS", 0.0)
    ledger, funded_principal = funded(db, 100_000)
    capped = replace(funded_principal, limits=KeyLimits(None, None, 1_000))

    async def run() -> None:
        a, b = biller(ledger, idle_seconds=60), biller(ledger, idle_seconds=60)

        async def upkeep() -> None:
            while True:
                await a.limiter.maintain(idle_seconds=60)
                await asyncio.sleep(0.05)

        keeping = asyncio.ensure_future(upkeep())
        long_call = await call(a, capped, "a1", 900)
        await asyncio.sleep(1.0)  # 2.5 lease lives; no other call on A meanwhile
        with pytest.raises(RateLimited):
            await call(b, capped, "b1", 900)
        keeping.cancel()
        await long_call.succeed(Usage(), 900)
        await asyncio.sleep(0.15)
        await a.limiter.maintain(idle_seconds=0)  # A is idle: its lease goes back
        with pytest.raises(RateLimited):  # 100 left, counted once
            await call(b, capped, "b2", 200)
        second = await call(b, capped, "b3", 100)
        await second.succeed(Usage(), 100)
        await a.aclose()
        await b.aclose()

    asyncio.run(run())
    assert db.execute("SELECT SUM(cost_micros) FROM usage").fetchone()[0] == 1_000
    assert ledger.check() == []


def test_an_idle_keys_lease_goes_back_to_the_other_processes(
    db: sqlite_utils.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "LEASE_SECONDS", 0.4)
    monkeypatch.setattr(limits, "REFUSAL_SECONDS", 0.0)
    ledger, funded_principal = funded(db, 100_000)
    capped = replace(funded_principal, limits=KeyLimits(None, None, 1_000))

    async def run() -> None:
        a, b = biller(ledger, idle_seconds=60), biller(ledger, idle_seconds=60)
        first = await call(a, capped, "a1", 500)  # A leases 500 + 125
        await first.succeed(Usage(), 100)
        with pytest.raises(RateLimited):  # 900 left, of which A's lease holds 525
            await call(b, capped, "b1", 600)
        await asyncio.sleep(0.15)
        await a.limiter.maintain(idle_seconds=0.1)  # A's key is idle: its lease goes back
        second = await call(b, capped, "b2", 600)
        await second.succeed(Usage(), 600)
        # A leases again, from what is left beside B's lease (600 + 900 / 8, less its
        # charge once committed): 1,000 - 700 spent - 112.
        with pytest.raises(RateLimited):
            await call(a, capped, "a2", 200)
        third = await call(a, capped, "a3", 188)
        await third.succeed(Usage(), 150)
        await a.aclose()
        await b.aclose()

    asyncio.run(run())
    assert db.execute("SELECT SUM(cost_micros) FROM usage").fetchone()[0] == 850
    assert db.execute("SELECT COUNT(*) FROM spend_leases").fetchone()[0] == 0
