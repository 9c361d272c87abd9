"""The ledger: exact money, holds settled at most once, totals always derivable."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlite_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from apimodels.billing.ledger import (
    Balance,
    GroupCommit,
    Ledger,
    Settlement,
    reserve_op,
    settle_op,
    transaction,
    unreserve_op,
)
from apimodels.errors import InsufficientCredits, NotFound
from apimodels.store.accounts import create_account
from apimodels.store.db import open_db, utcnow

TTL = timedelta(minutes=10)


def far() -> str:
    """A reservation's expiry, a TTL from now (at each use: a slow suite imports this module
    minutes before its tests run)."""
    return (datetime.now(UTC) + TTL).isoformat()


def settlement(
    request_id: str,
    acct: str,
    cost: int,
    taken: int,
    ok: bool = True,
    hold: int = 1_000,
    key_id: str | None = None,
) -> Settlement:
    billed_as = ("m", "p", "chat", "{}")
    return Settlement(
        request_id=request_id,
        account_id=acct,
        reservation_id=f"p:{acct}",
        hold_micros=hold,
        cost_micros=cost,
        taken_micros=taken,
        succeeded=ok,
        key_id=key_id,
        billed_as=billed_as,
        stream=0,
        created_at=utcnow(),
    )


@pytest.fixture
def db(tmp_path: Path) -> sqlite_utils.Database:
    return open_db(tmp_path / "ledger.db")


def test_hold_capture_release_and_check(db: sqlite_utils.Database) -> None:
    ledger = Ledger(db)
    acct = create_account(db, "l@example.com")["id"]
    ledger.post(acct, 1_000, kind="grant", reason="welcome", actor="test")
    ledger.hold("r1", acct, 600, TTL)
    assert ledger.balance(acct).available_micros == 400
    with pytest.raises(InsufficientCredits):
        ledger.hold("r2", acct, 401, TTL)
    assert ledger.capture("r1", 250) is True
    assert ledger.capture("r1", 250) is False  # settled once
    assert ledger.release("r1") is False
    assert ledger.balance(acct).balance_micros == 750
    ledger.hold("r3", acct, 700, TTL)
    assert ledger.release("r3") is True and ledger.capture("r3", 10) is False
    assert ledger.balance(acct).balance_micros == 750
    assert ledger.check() == []


def test_capture_above_the_hold_is_charged_in_full(db: sqlite_utils.Database) -> None:
    """Documented rule: the actual cost is charged even above the hold; the balance may go
    below zero by at most the overrun."""
    ledger = Ledger(db)
    acct = create_account(db, "o@example.com")["id"]
    ledger.post(acct, 100, kind="grant", reason="r", actor="t")
    ledger.hold("r1", acct, 100, TTL)
    assert ledger.capture("r1", 130)
    assert ledger.balance(acct).balance_micros == -30
    with pytest.raises(InsufficientCredits):
        ledger.hold("r2", acct, 1, TTL)
    assert ledger.check() == []


def test_entries_are_idempotent_by_key(db: sqlite_utils.Database) -> None:
    ledger = Ledger(db)
    acct = create_account(db, "i@example.com")["id"]
    assert ledger.post(
        acct, 500, kind="topup", reason="stripe", actor="webhook", idempotency_key="evt_1"
    )
    assert (
        ledger.post(
            acct, 500, kind="topup", reason="stripe", actor="webhook", idempotency_key="evt_1"
        )
        is None
    )
    assert ledger.balance(acct).balance_micros == 500
    with pytest.raises(NotFound):
        ledger.post("acct_nobody", 1, kind="grant", reason="x", actor="t")
    with pytest.raises(ValueError, match="kind"):
        ledger.post(acct, 1, kind="gift", reason="x", actor="t")


def test_expired_holds_are_released_and_check_flags_them(db: sqlite_utils.Database) -> None:
    ledger = Ledger(db)
    acct = create_account(db, "e@example.com")["id"]
    ledger.post(acct, 1_000, kind="grant", reason="r", actor="t")
    ledger.hold("crashed", acct, 800, timedelta(seconds=60))
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert ledger.check(now=later) == ["hold crashed: expired but still pending"]
    assert ledger.expire(now=later) == 1
    assert ledger.balance(acct).available_micros == 1_000
    assert ledger.capture("crashed", 10) is False  # too late: never charged
    assert ledger.check() == []


def test_check_finds_tampering(db: sqlite_utils.Database) -> None:
    ledger = Ledger(db)
    acct = create_account(db, "t@example.com")["id"]
    ledger.post(acct, 1_000, kind="grant", reason="r", actor="t")
    db.execute("UPDATE accounts SET balance_micros = 5000 WHERE id = ?", [acct])
    assert any("entries sum to 1000" in p for p in ledger.check())


def spent_by_day(db: sqlite_utils.Database, key_id: str) -> dict[str, int]:
    rows = db.execute("SELECT day, spent_micros FROM key_spend WHERE key_id = ?", [key_id])
    return dict(rows.fetchall())


def test_a_keys_running_total_follows_its_usage_rows(db: sqlite_utils.Database) -> None:
    """What a key spent per day (read by its spending caps' leases): a task's hold while it
    runs, then its cost; a call's cost once it ends, never its hold; nothing for a release."""
    ledger = Ledger(db)
    acct = create_account(db, "spender@example.com")["id"]
    ledger.post(acct, 100_000, kind="grant", reason="g", actor="t")
    today = utcnow()[:10]
    ledger.hold("task_a", acct, 3_000, TTL, {"key_id": "key_1"})
    ledger.hold("req_b", acct, 2_000, TTL, {"key_id": "key_1"})
    ledger.hold("task_other", acct, 9_000, TTL, {"key_id": "key_2"})
    ledger.hold("task_keyless", acct, 1_000, TTL)
    assert spent_by_day(db, "key_1") == {today: 3_000}
    assert ledger.capture("task_a", 1_200) and ledger.capture("req_b", 500)
    assert ledger.release("task_other")
    assert spent_by_day(db, "key_1") == {today: 1_700}
    assert spent_by_day(db, "key_2") == {today: 0}
    # Requests settled in a batch add their costs; a failed one adds nothing.
    with transaction(ledger) as c:
        reserve_op(c, f"p:{acct}", acct, "p", 5_000, 5_000, far())
        settle_op(
            c,
            [
                settlement("r1", acct, 400, 400, key_id="key_1"),
                settlement("r2", acct, 0, 0, ok=False, key_id="key_1"),
                settlement("r3", acct, 250, 250, key_id="key_2"),
            ],
            utcnow(),
        )
    assert spent_by_day(db, "key_1") == {today: 2_100}
    assert spent_by_day(db, "key_2") == {today: 250}
    assert ledger.check() == []
    # The running totals are derived data: check recomputes them from the usage rows.
    db.execute("UPDATE key_spend SET spent_micros = 5 WHERE key_id = 'key_1'")
    db.conn.commit()
    assert ledger.check() == [f"key key_1 on {today}: spent 5 but its usage sums to 2100"]


def test_the_running_totals_start_from_the_usage_rows_already_there(tmp_path: Path) -> None:
    """A database from before ``key_spend`` and ``usage_daily`` gets them filled in by their
    migrations, counted as the ledger counts (for a key: a pending task's hold, a settled
    row's cost, per day)."""
    from apimodels.store.migrations import MIGRATIONS

    db = sqlite_utils.Database(tmp_path / "old.db")
    index = [m.__name__ for m in MIGRATIONS].index("m021_key_spend")
    for m in MIGRATIONS[:index]:
        m(db)
    rows = [  # request, key, day, hold state, hold, cost
        ("task_1", "key_1", "2026-11-30", "pending", 7_000, None),
        ("req_1", "key_1", "2026-11-30", "captured", 2_000, 1_500),
        ("req_2", "key_1", "2026-12-01", "captured", 2_000, 300),
        ("req_3", "key_1", "2026-12-01", "pending", 2_000, None),  # a call in flight
        ("task_2", "key_2", "2026-12-01", "captured", 5_000, 4_000),
        ("req_4", None, "2026-12-01", "captured", 2_000, 800),  # no key (the Console's)
    ]
    for request_id, key_id, day, state, hold, cost in rows:
        db["usage"].insert(
            {
                "request_id": request_id,
                "account_id": "acct_1",
                "key_id": key_id,
                "created_at": f"{day}T12:00:00.000000+00:00",
                "hold_state": state,
                "status": "pending" if state == "pending" else "succeeded",
                "hold_micros": hold,
                "cost_micros": cost,
            }
        )
    for m in MIGRATIONS[index:]:  # key_spend, then usage_daily
        m(db)
    assert spent_by_day(db, "key_1") == {"2026-11-30": 8_500, "2026-12-01": 300}
    assert spent_by_day(db, "key_2") == {"2026-12-01": 4_000}
    assert db.execute("SELECT COUNT(*) FROM key_spend").fetchone()[0] == 3
    # The overview's totals: every call, those settled, what they were charged.
    daily = db.execute(
        "SELECT day, account_id, model, provider, calls, settled, failed, cost_micros"
        " FROM usage_daily ORDER BY day"
    ).fetchall()
    assert daily == [
        ("2026-11-30", "acct_1", "", "", 2, 1, 0, 1_500),
        ("2026-12-01", "acct_1", "", "", 4, 3, 0, 5_100),
    ]


def test_check_reports_a_balance_below_its_floor(db: sqlite_utils.Database) -> None:
    """Below zero only by overruns and negative entries, paid back first by later credits."""
    ledger = Ledger(db)
    acct = create_account(db, "floor@example.com")["id"]
    ledger.post(acct, 1_000, kind="grant", reason="r", actor="t")
    ledger.hold("r1", acct, 1_000, TTL)
    ledger.capture("r1", 1_300)  # an overrun of 300: the balance may be -300
    ledger.post(acct, -200, kind="refund", reason="top-up refunded", actor="t")  # -500 now
    assert ledger.balance(acct).balance_micros == -500
    assert ledger.check() == []
    ledger.post(acct, 1_000, kind="topup", reason="r", actor="t")  # pays the 500 back first
    # A charge that was never covered by a hold takes it below zero: an overdraft.
    with transaction(ledger) as c:
        settle_op(c, [settlement("r2", acct, 600, 0, hold=600)], utcnow())
    assert ledger.balance(acct).balance_micros == -100
    [problem] = ledger.check()
    assert f"account {acct}: balance -100" in problem and "below its floor 0" in problem


class LedgerMachine(RuleBasedStateMachine):
    """Random grant / hold / capture / release / reserve / settle / unreserve / expire /
    refund sequences."""

    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.db = open_db(":memory:")
        self.ledger = Ledger(self.db)
        self.acct = create_account(self.db, "p@example.com")["id"]
        self.n = 0
        self.settled: dict[str, int] = {}  # hold -> times settled
        self.model_balance = 0
        self.pending: dict[str, int] = {}
        self.reserved = 0
        self.max_overrun = 0

    @rule(amount=st.integers(1, 10_000))
    def grant(self, amount: int) -> None:
        self.ledger.post(self.acct, amount, kind="grant", reason="g", actor="t")
        self.model_balance += amount

    @rule(target=holds, amount=st.integers(0, 5_000))
    def hold(self, amount: int) -> str:
        self.n += 1
        hold_id = f"task_{self.n}" if self.n % 2 else f"h{self.n}"  # a task's counts as spent
        available = self.model_balance - sum(self.pending.values()) - self.reserved
        try:
            self.ledger.hold(hold_id, self.acct, amount, TTL, {"key_id": "key_p"})
        except InsufficientCredits:
            assert available < amount
            return hold_id
        assert available >= amount
        self.pending[hold_id] = amount
        return hold_id

    @rule(hold_id=holds, cost=st.integers(0, 6_000))
    def capture(self, hold_id: str, cost: int) -> None:
        done = self.ledger.capture(hold_id, cost)
        assert done == (hold_id in self.pending)
        if done:
            held = self.pending.pop(hold_id)
            self.model_balance -= cost
            self.max_overrun = max(self.max_overrun, cost - held)
            self.settled[hold_id] = self.settled.get(hold_id, 0) + 1

    @rule(hold_id=holds)
    def release(self, hold_id: str) -> None:
        done = self.ledger.release(hold_id)
        assert done == (hold_id in self.pending)
        if done:
            self.pending.pop(hold_id)
            self.settled[hold_id] = self.settled.get(hold_id, 0) + 1

    @rule()
    def expire_all(self) -> None:
        had_reservation = self.db.execute("SELECT 1 FROM reservations").fetchone() is not None
        n = self.ledger.expire(now=datetime.now(UTC) + TTL + timedelta(seconds=1))
        assert n == len(self.pending) + had_reservation
        self.reserved = 0
        for h in self.pending:
            self.settled[h] = self.settled.get(h, 0) + 1
        self.pending.clear()

    @rule(need=st.integers(0, 3_000), extra=st.integers(0, 3_000))
    def reserve(self, need: int, extra: int) -> None:
        available = self.model_balance - sum(self.pending.values()) - self.reserved
        try:
            with self.ledger._tx() as c:
                granted = reserve_op(c, f"p:{self.acct}", self.acct, "p", need, need + extra, far())
        except InsufficientCredits:
            assert available < need
            return
        assert granted == need + min(extra, (available - need) // 2)  # half the rest, at most
        self.reserved += granted

    @rule(cost=st.integers(0, 4_000), ok=st.booleans())
    def settle(self, cost: int, ok: bool) -> None:
        """A request admitted against the reservation ends (as billing.Biller does it)."""
        cost = cost if ok else 0
        if cost and self.reserved < 1_000:
            return  # never admitted: its hold (1,000) was not there (a charge would overdraw)
        self.n += 1
        taken = min(cost, self.reserved)
        with self.ledger._tx() as c:
            settle_op(
                c, [settlement(f"r{self.n}", self.acct, cost, taken, ok, key_id="key_p")], far()
            )
        self.model_balance -= cost
        self.reserved -= taken
        self.settled[f"r{self.n}"] = 1

    @rule()
    def settle_again(self) -> None:
        """Settling a request twice fails and changes nothing."""
        if not self.n or f"r{self.n}" not in self.settled:
            return
        with pytest.raises(sqlite3.IntegrityError), self.ledger._tx() as c:
            settle_op(c, [settlement(f"r{self.n}", self.acct, 5, 0)], far())

    @rule()
    def unreserve(self) -> None:
        with self.ledger._tx() as c:
            assert unreserve_op(c, f"p:{self.acct}") == self.reserved
        self.reserved = 0

    @rule(amount=st.integers(1, 3_000))
    def refund(self, amount: int) -> None:
        self.ledger.post(self.acct, -amount, kind="refund", reason="refund", actor="t")
        self.model_balance -= amount

    @invariant()
    def sound(self) -> None:
        b = self.ledger.balance(self.acct)
        assert b.balance_micros == self.model_balance
        assert b.held_micros == sum(self.pending.values()) + self.reserved
        assert all(n == 1 for n in self.settled.values())
        assert self.ledger.check(now=datetime.now(UTC)) == []


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerProperties = LedgerMachine.TestCase


@given(st.lists(st.integers(0, 2_000), min_size=1, max_size=20))
@settings(max_examples=30, deadline=None)
def test_the_floor_is_the_overrun_of_captures(costs: list[int]) -> None:
    """Only captures above their holds and refunds can take a balance below zero."""
    db = open_db(":memory:")
    ledger = Ledger(db)
    acct = create_account(db, "f@example.com")["id"]
    ledger.post(acct, 5_000, kind="grant", reason="g", actor="t")
    overrun = 0
    for i, cost in enumerate(costs):
        try:
            ledger.hold(f"h{i}", acct, 1_000, TTL)
        except InsufficientCredits:
            continue
        ledger.capture(f"h{i}", cost)
        overrun += max(0, cost - 1_000)
    assert ledger.balance(acct).balance_micros >= -overrun


def test_a_failing_write_in_a_batch_fails_alone(db: sqlite_utils.Database) -> None:
    """Review finding: one request's database error must not roll back its neighbours; and
    a request settled twice is charged once."""
    ledger = Ledger(db)
    a = create_account(db, "a@example.com")["id"]
    b = create_account(db, "b@example.com")["id"]
    ledger.post(a, 1_000, kind="grant", reason="g", actor="t")
    ledger.post(b, 1_000, kind="grant", reason="g", actor="t")

    async def batch() -> list[object]:
        group = GroupCommit(ledger)
        assert await group.reserve(f"p:{a}", a, "p", 100, 200, far()) == 200
        return await asyncio.gather(
            group.settle(settlement("ra", a, 40, 40)),
            group.settle(settlement("rb", b, 10**30, 0)),  # too large for SQLite: not recorded
            group.settle(settlement("ra", a, 40, 40)),  # again: not charged twice
            group.reserve(f"p:{b}", b, "p", 5_000, 5_000, far()),  # more than b has: 402
            group.unreserve(f"p:{a}"),
            return_exceptions=True,
        )

    captured, failed, again, refused, returned = asyncio.run(batch())
    assert captured is True and failed is False and again is False
    assert isinstance(refused, InsufficientCredits) and returned == 160
    assert ledger.balance(a) == Balance(960, 0) and ledger.balance(b) == Balance(1_000, 0)
    assert db.execute("SELECT count(*) FROM usage").fetchone()[0] == 1
    assert ledger.check() == []


def test_a_batch_of_requests_settles_in_one_go(db: sqlite_utils.Database) -> None:
    ledger = Ledger(db)
    acct = create_account(db, "m@example.com")["id"]
    ledger.post(acct, 10_000, kind="grant", reason="g", actor="t")

    async def run() -> list[bool]:
        group = GroupCommit(ledger)
        await group.reserve(f"p:{acct}", acct, "p", 5_000, 5_000, far())
        return await asyncio.gather(
            *(
                group.settle(
                    settlement(
                        f"r{i}", acct, *((100 * i, 100 * i, True) if i % 3 else (0, 0, False))
                    )
                )
                for i in range(1, 11)
            )
        )

    assert all(asyncio.run(run()))
    rows = {r["request_id"]: r for r in db.query("SELECT * FROM usage")}
    assert (
        len(rows) == 10 and rows["r3"]["status"] == "failed" and rows["r4"]["status"] == "succeeded"
    )
    charged = sum(100 * i for i in range(1, 11) if i % 3 != 0)
    assert ledger.balance(acct) == Balance(10_000 - charged, 5_000 - charged)
    assert ledger.check() == []


def test_an_expired_reservation_is_returned_and_check_flags_it(db: sqlite_utils.Database) -> None:
    ledger = Ledger(db)
    acct = create_account(db, "x@example.com")["id"]
    ledger.post(acct, 1_000, kind="grant", reason="g", actor="t")
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    with ledger._tx() as c:
        reserve_op(c, f"dead:{acct}", acct, "dead", 300, 300, soon)
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert any("expired but still held" in p for p in ledger.check(now=later))
    assert ledger.expire(now=later) == 1
    assert ledger.balance(acct) == Balance(1_000, 0) and ledger.check(now=later) == []


def test_the_sweep_leaves_running_requests_alone(db: sqlite_utils.Database) -> None:
    ledger = Ledger(db)
    acct = create_account(db, "r@example.com")["id"]
    ledger.post(acct, 1_000, kind="grant", reason="g", actor="t")
    ledger.hold("long-stream", acct, 500, timedelta(seconds=1))
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert ledger.expire(now=later, running={"long-stream"}) == 0
    assert ledger.capture("long-stream", 300)  # still charged when it ends
    assert ledger.balance(acct).balance_micros == 700
