"""Money: exact decimal prices, one rounding per request."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apimodels.billing.money import format_usd, from_micros, to_micros
from apimodels.billing.pricing import price_usage, usage_ceiling, usage_problem
from apimodels.billing.usage import Usage
from apimodels.catalog import ModelConfig, Pricing
from apimodels.errors import InvalidRequest


def test_rounding_is_half_up_to_the_micro_dollar() -> None:
    assert to_micros(Decimal("0.0000005")) == 1
    assert to_micros(Decimal("0.00000049")) == 0
    assert to_micros(Decimal("1.2345675")) == 1_234_568
    assert from_micros(135) == Decimal("0.000135")
    assert format_usd(2_500_000) == "2.500000"


def test_tokens_with_cached_input() -> None:
    p = Pricing(input_per_1m="0.15", cached_input_per_1m="0.075", output_per_1m="0.60")
    usage = Usage(input_tokens=1000, cached_input_tokens=400, output_tokens=500)
    # 600 * 0.15/1M + 400 * 0.075/1M + 500 * 0.60/1M
    assert price_usage(p, usage) == Decimal("0.00009") + Decimal("0.00003") + Decimal("0.0003")


def test_cached_tokens_default_to_the_input_price() -> None:
    p = Pricing(input_per_1m="2", output_per_1m="8")
    assert price_usage(p, Usage(input_tokens=10, cached_input_tokens=10)) == Decimal("0.00002")


def test_cache_reads_and_writes_are_parts_of_the_input_each_at_its_price() -> None:
    # Anthropic's 5-minute cache writes cost 1.25x the input price, reads 0.1x.
    p = Pricing(
        input_per_1m="3", cached_input_per_1m="0.30", cache_write_per_1m="3.75", output_per_1m="15"
    )
    usage = Usage(input_tokens=10_000, cached_input_tokens=6000, cache_write_tokens=3000)
    # 1000 * 3/1M + 6000 * 0.30/1M + 3000 * 3.75/1M
    assert price_usage(p, usage) == Decimal("0.003") + Decimal("0.0018") + Decimal("0.01125")
    # Without a cache-write price, writes cost what input does.
    plain = Pricing(input_per_1m="3", output_per_1m="15")
    assert price_usage(plain, Usage(input_tokens=100, cache_write_tokens=100)) == Decimal("0.0003")


def test_cache_writes_may_reach_the_context_window_when_priced() -> None:
    model = ModelConfig(
        provider="acme",
        upstream="m",
        modality="chat",
        context_tokens=8000,
        pricing=Pricing(input_per_1m="1", cache_write_per_1m="1.25", output_per_1m="2"),
    )
    estimate = Usage(input_tokens=50, output_tokens=100, cache_write_tokens=50)
    ceiling = usage_ceiling(model, estimate)
    assert ceiling["cache_write_tokens"] == 8000
    cached = Usage(input_tokens=7000, cache_write_tokens=6000, output_tokens=100)
    assert usage_problem(cached, ceiling) is None


def test_image_tables_characters_seconds_and_markup() -> None:
    table = Pricing(per_image={"hd/1024x1024": "0.08", "standard/1024x1024": "0.04"}, markup="0.25")
    assert price_usage(table, Usage(images=2, variant="hd/1024x1024")) == Decimal("0.2")
    with pytest.raises(InvalidRequest, match="no price for 'hd/9x9'"):
        price_usage(table, Usage(images=1, variant="hd/9x9"))
    assert price_usage(Pricing(per_1k_chars="0.015"), Usage(characters=2000)) == Decimal("0.03")
    assert price_usage(Pricing(per_minute="0.006"), Usage(seconds=Decimal(90))) == Decimal("0.009")
    assert price_usage(Pricing(per_second="0.0001"), Usage(seconds=Decimal(3))) == Decimal("0.0003")


def test_no_floats_reach_money() -> None:
    p = Pricing(input_per_1m="0.1", output_per_1m="0.2")
    cost = price_usage(p, Usage(input_tokens=3, output_tokens=3))
    assert isinstance(cost, Decimal)
    assert cost == Decimal("0.0000009")


def _model(**extra: object) -> ModelConfig:
    return ModelConfig(
        provider="acme",
        upstream="m",
        modality="chat",
        pricing=Pricing(input_per_1m="1", cached_input_per_1m="0.5", output_per_1m="2"),
        **extra,
    )


def test_the_ceiling_is_the_estimate_with_input_up_to_the_context_window() -> None:
    estimate = Usage(input_tokens=50, output_tokens=100, images=3)
    assert usage_ceiling(_model(context_tokens=8000), estimate) == {
        "input_tokens": 8000,
        "output_tokens": 100,
    }  # images are not priced for this model: whatever is said of them costs nothing
    assert usage_ceiling(_model(), estimate)["input_tokens"] == 50  # no window: the estimate
    speech = ModelConfig(
        provider="acme",
        upstream="s",
        modality="transcription",
        pricing=Pricing(per_minute="0.006"),
    )
    assert usage_ceiling(speech, Usage(seconds=Decimal("2.5"))) == {"seconds": Decimal("3.5")}


def test_speech_priced_per_token_charges_its_text_and_audio_and_bounds_the_audio() -> None:
    tts = ModelConfig(
        provider="acme",
        upstream="tts",
        modality="speech",
        context_tokens=2000,
        pricing=Pricing(input_per_1m="0.60", audio_output_per_1m="12.00"),
    )
    usage = Usage(input_tokens=14, audio_output_tokens=101)
    # 14 * 0.60/1M + 101 * 12/1M
    assert price_usage(tts.pricing, usage) == Decimal("0.0000084") + Decimal("0.001212")
    ceiling = usage_ceiling(tts, Usage(input_tokens=30, audio_output_tokens=630))
    assert ceiling == {"input_tokens": 2000, "audio_output_tokens": 630}  # audio: the estimate
    assert "audio_output_tokens 631 is more" in (
        usage_problem(Usage(audio_output_tokens=631), ceiling) or ""
    )
    with pytest.raises(ValueError, match="speech model needs"):
        ModelConfig(provider="acme", upstream="t", modality="speech", pricing=Pricing())


@pytest.mark.parametrize(
    ("usage", "problem"),
    [
        (Usage(input_tokens=-1_000_000_000, output_tokens=5), "input_tokens is -1000000000"),
        (Usage(input_tokens=10, cached_input_tokens=50), "more cached or cache-written"),
        (
            Usage(input_tokens=10, cached_input_tokens=6, cache_write_tokens=6),
            "more cached or cache-written",
        ),
        (Usage(input_tokens=10, output_tokens=10**15), "output_tokens 1000000000000000 is more"),
        (Usage(input_tokens=8001), "input_tokens 8001 is more"),
        (Usage(seconds=Decimal("NaN")), "seconds is Decimal('NaN')"),
        (Usage(run_seconds=Decimal(-1)), "run_seconds is Decimal('-1')"),
        (Usage(images=-1), "images is -1"),
        (Usage(input_tokens=True), "input_tokens is True"),  # type: ignore[arg-type]
        (Usage(input_tokens=8000, cached_input_tokens=8000, output_tokens=100), None),
        (Usage(), None),
    ],
)
def test_impossible_usage_is_named(usage: Usage, problem: str | None) -> None:
    ceiling = usage_ceiling(_model(context_tokens=8000), Usage(input_tokens=50, output_tokens=100))
    found = usage_problem(usage, ceiling)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found
