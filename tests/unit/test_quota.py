"""Per-key limit arithmetic (routing/quota.py): buckets, leases, budgets, reservations."""

from __future__ import annotations

from decimal import Decimal

from routing import quota
from routing.cost import TokenPrice
from routing.quota import Ask, Bucket, KeyState, Limits


def test_bucket_starts_full_and_refills_per_minute() -> None:
    full = quota.refill(None, 60, 1_000)
    assert full.level == 60
    drained = Bucket(0.0, 1_000)
    # 60/min = one per second: half a second refills half a request.
    assert quota.refill(drained, 60, 1_500).level == 0.5
    assert quota.refill(drained, 60, 10**9).level == 60  # capped at capacity
    # A clock that steps back never drains the bucket.
    assert quota.refill(Bucket(5.0, 2_000), 60, 1_000).level == 5.0


def test_wait_and_reset() -> None:
    bucket = Bucket(0.25, 0)
    assert quota.wait_ms(bucket, 60, 1) == 750
    assert quota.wait_ms(Bucket(3.0, 0), 60, 1) == 0
    # More than the capacity waits for a full bucket, not forever.
    assert quota.wait_ms(Bucket(0.0, 0), 100, 1_000) == 60_000
    assert quota.reset_ms(Bucket(50.0, 0), 100) == 30_000


def test_rpm_admits_the_burst_then_refuses_with_a_wait() -> None:
    state, limits = KeyState(), Limits(rpm=3)
    verdicts = [quota.admit(state, limits, Ask(1, 0), f"l{i}", 1000, 0) for i in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[0].remaining_requests == 2
    assert verdicts[2].remaining_requests == 0
    refused = verdicts[3]
    assert refused.refused_by == quota.RPM
    assert refused.retry_after_ms == 20_000  # 3/min: one request every 20 s
    # 20 s later exactly one more fits.
    assert quota.admit(state, limits, Ask(1, 0), "l5", 1000, 20_000).allowed
    assert not quota.admit(state, limits, Ask(1, 0), "l6", 1000, 20_000).allowed


def test_tpm_reserves_estimates_and_settles_to_actual_usage() -> None:
    state, limits = KeyState(), Limits(tpm=1_000)
    ask = Ask(600, 0)
    assert quota.admit(state, limits, ask, "a", 1000, 0).allowed
    # 400 left: a second 600-token request must wait.
    second = quota.admit(state, limits, ask, "b", 1000, 0)
    assert not second.allowed and second.refused_by == quota.TPM
    assert second.remaining_tokens == 400
    assert second.retry_after_ms == 12_000  # 200 tokens at 1000/min
    # The first one used only 100 tokens: 500 come back.
    quota.settle(state, limits, ask, "a", 100, 0, 0)
    assert state.tokens is not None and state.tokens.level == 900
    assert quota.admit(state, limits, ask, "b", 1000, 0).allowed


def test_settling_more_than_reserved_drives_the_bucket_negative() -> None:
    state, limits = KeyState(), Limits(tpm=1_000)
    ask = Ask(100, 0)
    assert quota.admit(state, limits, ask, "a", 1000, 0).allowed
    quota.settle(state, limits, ask, "a", 1_500, 0, 0)
    assert (
        state.tokens is not None and state.tokens.level == -500
    )  # 1000 - 100 reserved - 1400 more used
    assert not quota.admit(state, limits, Ask(1, 0), "b", 1000, 0).allowed


def test_oversized_request_waits_for_a_full_bucket() -> None:
    state, limits = KeyState(), Limits(tpm=1_000)
    assert quota.admit(state, limits, Ask(5_000, 0), "a", 1000, 0).allowed
    assert not quota.admit(state, limits, Ask(5_000, 0), "b", 1000, 59_000).allowed
    # 4,000 in debt + 1,000 to be full: five minutes.
    assert quota.admit(state, limits, Ask(5_000, 0), "b", 1000, 300_000).allowed


def test_concurrency_leases_free_on_settle_or_expiry() -> None:
    state, limits = KeyState(), Limits(max_concurrency=2)
    assert quota.admit(state, limits, Ask(1, 0), "a", 1_000, 0).allowed
    assert quota.admit(state, limits, Ask(1, 0), "b", 1_000, 0).allowed
    third = quota.admit(state, limits, Ask(1, 0), "c", 1_000, 0)
    assert not third.allowed and third.refused_by == quota.CONCURRENCY
    quota.settle(state, limits, Ask(1, 0), "a", 1, 0, 10)
    assert quota.admit(state, limits, Ask(1, 0), "c", 1_000, 10).allowed
    # A crashed request's lease ("b", expiring at 1000) frees itself.
    assert not quota.admit(state, limits, Ask(1, 0), "d", 1_000, 999).allowed
    assert quota.admit(state, limits, Ask(1, 0), "d", 1_000, 1_001).allowed


def test_budget_reserves_worst_case_and_settles_actual_cost() -> None:
    budget = quota.to_nano(Decimal("1.00"))
    state, limits = KeyState(), Limits(budget_nano=budget)
    ask = Ask(10, quota.to_nano(Decimal("0.40")))
    assert quota.admit(state, limits, ask, "a", 1000, 0).allowed
    verdict = quota.admit(state, limits, ask, "b", 1000, 0)
    assert verdict.allowed and verdict.budget_left_nano == quota.to_nano(Decimal("0.20"))
    refused = quota.admit(state, limits, ask, "c", 1000, 0)
    assert not refused.allowed and refused.refused_by == quota.BUDGET
    # a cost $0.10: 0.40 reserved by b, 0.10 spent, 0.50 left → c fits now.
    quota.settle(state, limits, ask, "a", 10, quota.to_nano(Decimal("0.10")), 0)
    assert state.spent_nano == quota.to_nano(Decimal("0.10"))
    assert state.reserved_nano == quota.to_nano(Decimal("0.40"))
    assert quota.admit(state, limits, ask, "c", 1000, 0).allowed


def test_admission_is_all_or_nothing() -> None:
    state = KeyState()
    limits = Limits(rpm=10, tpm=100, budget_nano=1_000)
    # Refused by the budget: neither the request nor its tokens are taken.
    assert not quota.admit(state, limits, Ask(50, 2_000), "a", 1000, 0).allowed
    ok = quota.admit(state, limits, Ask(50, 500), "b", 1000, 0)
    assert ok.allowed
    assert ok.remaining_requests == 9 and ok.remaining_tokens == 50


def test_checks_narrow_what_is_enforced() -> None:
    state, limits = KeyState(), Limits(rpm=1, budget_nano=10)
    only_budget = frozenset({quota.BUDGET})
    for lease in "abc":
        assert quota.admit(state, limits, Ask(1, 1), lease, 1000, 0, only_budget).allowed
    assert state.requests is None  # rpm was not this limiter's to count


def test_worst_case_cost_takes_the_dearest_priced_deployment() -> None:
    cheap = TokenPrice.of(input=Decimal("0.1"), output=Decimal("0.2"), version="a")
    dear = TokenPrice.of(
        input=Decimal("3"), output=Decimal("15"), cache_write=Decimal("3.75"), version="b"
    )
    nano = quota.worst_case_nano(1_000, 500, [cheap, dear, None], [False, False, False])
    # 1,000 × $3.75 (cache write beats input) + 500 × $15, per million tokens.
    assert nano == quota.to_nano(Decimal("0.01125"))
    # Dedicated GPUs and unknown prices reserve nothing.
    assert quota.worst_case_nano(1_000, 500, [dear, None], [True, False]) == 0


def test_nano_conversions_and_reset_header_format() -> None:
    assert quota.to_nano(Decimal("0.000000001")) == 1
    assert quota.to_nano(None) == 0
    assert quota.from_nano(1_500_000_000) == Decimal("1.5")
    assert quota.duration_header(20) == "20ms"
    assert quota.duration_header(1_000) == "1s"
    assert quota.duration_header(6_500) == "6.5s"
    assert quota.duration_header(360_000) == "6m0s"


def test_integer_reserve_rates_give_exactly_the_decimal_worst_case() -> None:
    """The hot path's integer form equals the Decimal form for every mix of tokens and prices
    with up to 6 decimals; a price with more falls back to Decimal (rates are None)."""
    import random

    rng = random.Random(7)
    for _ in range(2_000):
        prices: list[TokenPrice | None] = []
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.15:
                prices.append(None)
                continue
            cents = [Decimal(rng.randint(0, 40_000_000)) / Decimal(10 ** rng.randint(0, 6))]
            cents += [Decimal(rng.randint(0, 90_000_000)) / Decimal(10 ** rng.randint(0, 6))]
            write = Decimal(rng.randint(0, 50_000_000)) / Decimal(10 ** rng.randint(0, 6))
            prices.append(
                TokenPrice.of(input=cents[0], output=cents[1], cache_write=write, version="v")
            )
        dedicated = [rng.random() < 0.2 for _ in prices]
        rates = quota.reserve_rates(prices, dedicated)
        assert rates is not None
        for _ in range(5):
            tokens_in, tokens_out = rng.randint(0, 2_000_000), rng.randint(0, 200_000)
            assert quota.worst_case_nano_from_rates(
                tokens_in, tokens_out, rates
            ) == quota.worst_case_nano(tokens_in, tokens_out, prices, dedicated)
    finer = TokenPrice.of(input=Decimal("0.0000001"), output=Decimal("1"), version="v")
    assert quota.reserve_rates([finer], [False]) is None
    assert quota.reserve_rates([finer], [True]) == ()  # dedicated: never priced
