"""Top-ups without a server: the [topups] configuration, exchange-rate sources and the
USD <-> CNY conversions, and the order state machine against a real SQLite ledger."""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from apimodels.billing.ledger import Ledger, transaction
from apimodels.errors import ConfigError
from apimodels.store.accounts import create_account
from apimodels.store.db import open_db
from apimodels.topups.config import RateConfig, TopupsConfig
from apimodels.topups.orders import (
    credit_op,
    new_order,
    order_op,
    reconcile,
    refund_total_op,
    set_opened,
    transition_op,
)
from apimodels.topups.rates import (
    FixedRate,
    Rate,
    StaleRate,
    fresh_rate,
    load_source,
    minor_to_usd_micros,
    usd_micros_to_minor,
    usd_to_cny_fen,
)
from apimodels.topups.simulator import nested_form

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


# --- configuration ----------------------------------------------------------------------


def test_config_defaults_are_off_and_bounded() -> None:
    config = TopupsConfig()
    assert not config.enabled and (config.min_usd, config.max_usd) == (5, 10_000)
    assert config.stripe_api_base == "https://api.stripe.com"


@pytest.mark.parametrize(
    "table",
    [
        {"min_usd": "10", "max_usd": "5"},
        {"min_usd": 5.5},  # a float is not an amount
        {"methods": ["card", "paypal"]},
        {"enabled": True},  # alipay without a rate
        {"rate": {"source": "fixed", "cny_per_usd": "7.1"}},  # no as_of
        {"rate": {"source": "fixed", "cny_per_usd": "0", "as_of": "2026-11-25T00:00:00Z"}},
        {"rate": {"source": "fixed", "cny_per_usd": "7.1", "as_of": "2026-11-25T00:00:00"}},
        {"stripe_secret_key": "sk_live_in_the_file"},  # secrets come from the environment
    ],
)
def test_bad_config_is_refused(table: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TopupsConfig.model_validate(table)


def test_card_only_needs_no_rate() -> None:
    assert TopupsConfig.model_validate({"enabled": True, "methods": ["card"]}).rate is None


# --- rate sources ---------------------------------------------------------------------------


def _fixed(as_of: datetime, rate: str = "7.1234") -> FixedRate:
    return FixedRate(Rate(Decimal(rate), "fixed", as_of))


def test_fresh_rate_refuses_old_future_and_broken_rates() -> None:
    day = timedelta(hours=24)
    assert fresh_rate(_fixed(NOW - timedelta(hours=23)), day, NOW).cny_per_usd == Decimal("7.1234")
    for source in (_fixed(NOW - timedelta(hours=25)), _fixed(NOW + timedelta(hours=1))):
        with pytest.raises(StaleRate) as info:
            fresh_rate(source, day, NOW)
        assert info.value.status == 503 and info.value.code == "exchange_rate_unavailable"

    class Broken:
        def current(self) -> Rate:
            raise OSError("the rate service is down")

    with pytest.raises(StaleRate):
        fresh_rate(Broken(), day, NOW)


def test_a_pluggable_rate_source_is_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("bank_rates")
    made: list[RateConfig] = []

    def factory(config: RateConfig) -> FixedRate:
        made.append(config)
        return _fixed(NOW, config.model_extra["fallback"])  # type: ignore[index]

    module.factory = factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bank_rates", module)
    config = RateConfig.model_validate({"source": "bank_rates:factory", "fallback": "7.2"})
    source = load_source(config)
    assert source.current().cny_per_usd == Decimal("7.2") and made == [config]
    with pytest.raises(ConfigError, match="no_such_module"):
        load_source(RateConfig(source="no_such_module:factory"))


# --- conversions ----------------------------------------------------------------------------


def test_usd_to_cny_rounds_half_up_to_the_fen() -> None:
    assert usd_to_cny_fen(Decimal("10.01"), Decimal("7.1234")) == 7131  # 71.305234
    assert usd_to_cny_fen(Decimal("5"), Decimal("7.123")) == 3562  # 35.615 -> 35.62
    assert usd_to_cny_fen(Decimal("10000"), Decimal("7.1234")) == 7_123_400


usd_amounts = st.decimals(min_value=Decimal(5), max_value=Decimal(10_000), places=2)
rates = st.decimals(min_value=Decimal("6.5"), max_value=Decimal("7.5"), places=4)


@given(usd=usd_amounts, rate=rates, cut=st.floats(min_value=0, max_value=1))
def test_conversions_round_trip_both_ways(usd: Decimal, rate: Decimal, cut: float) -> None:
    micros = int(usd * 1_000_000)
    fen = usd_to_cny_fen(usd, rate)
    # A whole order converts back to exactly what it bought, both ways.
    assert minor_to_usd_micros(fen, fen, micros) == micros
    assert usd_micros_to_minor(micros, fen, micros) == fen
    # Refunds in parts remove exactly the whole when they add up to the whole charge.
    part = int(fen * cut)
    first = minor_to_usd_micros(part, fen, micros)
    rest = minor_to_usd_micros(fen, fen, micros) - first
    assert 0 <= first <= micros and first + rest == micros
    # USD -> fen -> USD moves by at most half a fen's worth of credits.
    back = minor_to_usd_micros(usd_micros_to_minor(first, fen, micros), fen, micros)
    assert abs(back - first) <= micros / fen / 2 + 1


# --- the order state machine --------------------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(open_db(tmp_path / "t.db"))


def _paid(ledger: Ledger, usd: str, method: str = "card") -> dict[str, Any]:
    account = create_account(ledger.db, f"{method}{usd}@example.com")
    rate = Rate(Decimal("7.1234"), "fixed", NOW) if method == "alipay" else None
    order = new_order(ledger.db, account["id"], method, Decimal(usd), rate)
    set_opened(ledger.db, order["id"], "cs_" + order["id"], "http://x/pay")
    with transaction(ledger) as c:
        assert credit_op(c, order_op(c, id=order["id"]), "pi_" + order["id"], "evt_1")  # type: ignore[arg-type]
    return order


def test_an_order_is_credited_once_and_only_when_payable(ledger: Ledger) -> None:
    order = _paid(ledger, "25")
    with transaction(ledger) as c:
        current = order_op(c, id=order["id"])
        assert current is not None and current["status"] == "paid"
        assert not credit_op(c, current, None, "evt_2")  # a second success changes nothing
        assert not transition_op(c, order["id"], ("open", "processing"), "failed")
    assert ledger.balance(order["account_id"]).balance_micros == 25_000_000
    assert ledger.check() == [] and reconcile(ledger.db) == []


def test_refund_totals_are_cumulative_and_idempotent(ledger: Ledger) -> None:
    order = _paid(ledger, "10.01", "alipay")  # 7131 fen
    with transaction(ledger) as c:
        o = order_op(c, id=order["id"])
        assert o is not None
        args = {"reason": "r", "actor": "t"}
        assert refund_total_op(c, o, 1000, key="k1", **args) == 1_403_730
        assert refund_total_op(c, o, 1000, key="k2", **args) == 0  # the same total again
        assert refund_total_op(c, o, 500, key="k3", **args) == 0  # an older, smaller total
        assert refund_total_op(c, o, 99_999, key="k4", **args) == 10_010_000 - 1_403_730
    assert ledger.balance(order["account_id"]).balance_micros == 0
    assert reconcile(ledger.db) == [] and ledger.check() == []


def test_reconcile_names_each_kind_of_mismatch(ledger: Ledger) -> None:
    paid = _paid(ledger, "5")
    account = paid["account_id"]
    lost = new_order(ledger.db, account, "card", Decimal(8), None)
    ledger.db.execute("UPDATE topup_orders SET status = 'paid' WHERE id = ?", [lost["id"]])
    ledger.db.execute("UPDATE topup_orders SET status = 'failed' WHERE id = ?", [paid["id"]])
    ledger.post(account, 1, kind="topup", reason="x", actor="t", idempotency_key="topup:ord_gone")
    problems = reconcile(ledger.db)
    assert len(problems) == 3, problems
    assert any(lost["id"] in p and "top-up credits are: none" in p for p in problems)
    assert any(paid["id"] in p and "is failed" in p for p in problems)
    assert "topup:ord_gone names no known order" in problems[-1]


def test_nested_form_reads_stripe_style_parameters() -> None:
    pairs = [
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][quantity]", "1"),
        ("payment_method_types[0]", "alipay"),
        ("metadata[order_id]", "ord_1"),
    ]
    assert nested_form(pairs) == {
        "line_items": [{"price_data": {"currency": "usd"}, "quantity": "1"}],
        "payment_method_types": ["alipay"],
        "metadata": {"order_id": "ord_1"},
    }


def _topups_table(toml_text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(toml_text)["topups"]


def test_the_documented_examples_are_valid_config() -> None:
    root = Path(__file__).parents[2]
    registry = (root / "registry.toml").read_text()
    example = registry[registry.index("# [topups]") :]
    example = example[: example.index("\n# ---")]  # up to the next section
    uncommented = "\n".join(line.removeprefix("# ") for line in example.splitlines())
    assert TopupsConfig.model_validate(_topups_table(uncommented)).enabled
    docs = (root / "docs" / "self-hosting.md").read_text()
    block = docs[docs.index("```toml\n[topups]") + len("```toml\n") :]
    config = TopupsConfig.model_validate(_topups_table(block[: block.index("```")]))
    assert config.rate is not None and config.rate.cny_per_usd == Decimal("7.1234")
