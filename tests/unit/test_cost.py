"""Cost arithmetic: each token billed once at its own rate, exact decimals, forgiving usage."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from routing.cost import TokenPrice, Usage, attempt_cost, usage_from_openai

PRICE = TokenPrice.of(
    input=Decimal("1.25"),
    output=Decimal("2.00"),
    cached_input=Decimal("0.50"),
    cache_write=Decimal("1.50"),
    version="test",
)


def test_cached_tokens_are_priced_once_at_the_cached_rate() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 1500,
            "completion_tokens": 200,
            "total_tokens": 1700,
            "prompt_tokens_details": {"cached_tokens": 500},
        }
    )
    assert usage == Usage(input_uncached=1000, cached_read=500, cache_write=0, output=200)
    # 1000 × 1.25 + 500 × 0.50 + 200 × 2.00 = 1250 + 250 + 400 micro-dollars
    assert attempt_cost(usage, PRICE, dedicated=False) == Decimal("0.0019000000")


def test_cache_writes_come_out_of_prompt_tokens_and_use_their_own_rate() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 300},
        }
    )
    assert (usage.input_uncached, usage.cached_read, usage.cache_write) == (500, 200, 300)
    # 500 × 1.25 + 200 × 0.50 + 300 × 1.50 = 625 + 100 + 450
    assert attempt_cost(usage, PRICE, dedicated=False) == Decimal("0.0011750000")


def test_reasoning_is_inside_output_and_not_billed_again() -> None:
    with_reasoning = usage_from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 300,
            "completion_tokens_details": {"reasoning_tokens": 250},
        }
    )
    assert with_reasoning.output == 300 and with_reasoning.reasoning == 250
    without = Usage(input_uncached=10, output=300)
    assert attempt_cost(with_reasoning, PRICE, False) == attempt_cost(without, PRICE, False)
    assert attempt_cost(with_reasoning, PRICE, False) == Decimal("0.0006125000")


def test_reasoning_above_completion_is_capped_to_keep_it_inside_output() -> None:
    usage = usage_from_openai(
        {"completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 50}}
    )
    assert usage.output == 5 and usage.reasoning == 5


def test_unknown_price_is_none_never_zero() -> None:
    assert attempt_cost(Usage(input_uncached=100, output=100), None, dedicated=False) is None


def test_dedicated_costs_zero_per_attempt_even_without_a_price() -> None:
    cost = attempt_cost(Usage(input_uncached=10**6, output=10**6), None, dedicated=True)
    assert cost == Decimal(0) and cost is not None
    assert attempt_cost(Usage(input_uncached=10**6), PRICE, dedicated=True) == Decimal(0)


def test_result_is_quantized_to_ten_places() -> None:
    cheap = TokenPrice.of(input=Decimal("0.15"), output=Decimal("0.6"), version="t")
    cost = attempt_cost(Usage(input_uncached=7), cheap, dedicated=False)
    assert cost == Decimal("0.00000105")
    assert cost is not None and cost.as_tuple().exponent == -10
    tiny = TokenPrice.of(input=Decimal("0.00001"), output=Decimal(0), version="t")
    assert attempt_cost(Usage(input_uncached=1), tiny, dedicated=False) == Decimal(0)
    # Half-even at the 11th place: 0.00000000005 → 0.0000000000, 0.00000000015 → 0.0000000002
    half = TokenPrice.of(input=Decimal("0.00005"), output=Decimal("0.00015"), version="t")
    assert attempt_cost(Usage(input_uncached=1), half, False) == Decimal("0E-10")
    assert attempt_cost(Usage(output=1), half, False) == Decimal("2E-10")


def test_missing_cache_rates_default_to_the_input_rate() -> None:
    price = TokenPrice.of(input=Decimal(3), output=Decimal(15), version="t")
    assert price.cached_input == Decimal(3) and price.cache_write == Decimal(3)
    usage = Usage(input_uncached=100, cached_read=100, cache_write=100)
    assert attempt_cost(usage, price, False) == Decimal("0.0009000000")


def test_embeddings_usage_is_all_input() -> None:
    assert usage_from_openai({"prompt_tokens": 8, "total_tokens": 8}) == Usage(input_uncached=8)
    assert usage_from_openai({"total_tokens": 12}) == Usage(input_uncached=12)


def test_responses_api_field_names_are_understood() -> None:
    usage = usage_from_openai(
        {
            "input_tokens": 100,
            "input_tokens_details": {"cached_tokens": 40},
            "output_tokens": 30,
            "output_tokens_details": {"reasoning_tokens": 10},
        }
    )
    assert usage == Usage(input_uncached=60, cached_read=40, output=30, reasoning=10)


def test_inconsistent_cache_counts_never_make_input_negative() -> None:
    usage = usage_from_openai({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}})
    assert usage.input_uncached == 0 and usage.cached_read == 50


def test_garbage_usage_counts_as_zero() -> None:
    for junk in (None, [], "usage", 42, {"prompt_tokens": None}, {"prompt_tokens_details": "x"}):
        assert usage_from_openai(junk) == Usage()
    usage = usage_from_openai(
        {
            "prompt_tokens": "abc",
            "completion_tokens": -5,
            "prompt_tokens_details": {"cached_tokens": True},
            "completion_tokens_details": [1, 2],
        }
    )
    assert usage == Usage()
    assert usage_from_openai({"prompt_tokens": float("nan"), "completion_tokens": 1e300}) == Usage()
    assert usage_from_openai({"prompt_tokens": 12.5, "completion_tokens": 10**13}) == Usage()


def test_integral_floats_and_digit_strings_are_accepted() -> None:
    usage = usage_from_openai({"prompt_tokens": 12.0, "completion_tokens": " 7 "})
    assert usage == Usage(input_uncached=12, output=7)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
usage_keys = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens",
        "output_tokens",
    ]
)
detail = st.dictionaries(st.sampled_from(["cached_tokens", "cache_write_tokens"]), json_values)


@given(st.dictionaries(usage_keys, json_values | detail))
def test_any_usage_parses_to_a_consistent_split(raw: dict[str, Any]) -> None:
    usage = usage_from_openai(raw)
    assert min(usage.input_uncached, usage.cached_read, usage.cache_write, usage.output) >= 0
    assert 0 <= usage.reasoning <= usage.output
    cost = attempt_cost(usage, PRICE, dedicated=False)
    assert cost is not None and cost >= 0
