"""Limits that cannot get stuck (issue 21): reservations expire like leases, oversized asks
are refused instead of driving a bucket into absurd debt, and the reconciler corrects only
drift that persists."""

from __future__ import annotations

from routing import quota
from routing.quota import Ask, KeyState, Limits


def test_a_reservation_nobody_settles_expires_and_frees_the_budget() -> None:
    state, limits = KeyState(), Limits(budget_nano=1_000)
    for lease in ("a", "b"):
        assert quota.admit(state, limits, Ask(1, 500), lease, 10_000, 0).allowed
    assert not quota.admit(state, limits, Ask(1, 500), "c", 10_000, 9_999).allowed
    # Their process died: at their deadline both reservations are dropped.
    fresh = quota.admit(state, limits, Ask(1, 1_000), "c", 10_000, 10_000)
    assert fresh.allowed and fresh.budget_left_nano == 0
    assert state.reserved_nano == 1_000 and set(state.reservations) == {"c"}


def test_settling_after_expiry_gives_nothing_back_twice() -> None:
    state, limits = KeyState(), Limits(budget_nano=1_000)
    assert quota.admit(state, limits, Ask(1, 600), "slow", 1_000, 0).allowed
    assert quota.admit(state, limits, Ask(1, 900), "next", 1_000, 1_000).allowed  # slow expired
    quota.settle(state, limits, Ask(1, 600), "slow", 1, 50, 1_500)
    # The late settlement counts its spend but does not free "next"'s reservation.
    assert state.reserved_nano == 900 and state.spent_nano == 50


def test_an_ask_larger_than_the_whole_tpm_limit_never_fits() -> None:
    # The client asked for it (max_tokens × n): refused outright.
    assert quota.fit_tpm(Ask(5_000, 0), 1_000) is None
    # Only the default output reservation (no max_tokens) is trimmed to fit.
    trimmed = quota.fit_tpm(Ask(5_000, 0, default_tokens=4_500, hold_ms=7), 1_000)
    assert trimmed == Ask(1_000, 0, default_tokens=500, hold_ms=7)
    assert quota.fit_tpm(Ask(5_000, 0, default_tokens=4_000), 1_000) == Ask(1_000, 0, 0)
    assert quota.fit_tpm(Ask(5_000, 0, default_tokens=3_000), 1_000) is None
    small = Ask(10, 0)
    assert quota.fit_tpm(small, 1_000) is small


def test_no_bucket_owes_more_than_one_refill() -> None:
    state, limits = KeyState(), Limits(tpm=1_000)
    ask = Ask(100, 0)
    assert quota.admit(state, limits, ask, "a", 1_000, 0).allowed
    # A usage report of 10^23 tokens (or an ask that slipped past fit_tpm) ...
    quota.settle(state, limits, ask, "a", 10**23, 0, 0)
    assert state.tokens is not None and state.tokens.level == -1_000
    assert quota.admit(state, limits, Ask(10**20, 0), "b", 1_000, 120_000).allowed
    assert state.tokens.level == -1_000
    # ... costs the key at most two minutes: debt repaid, then a full bucket.
    refused = quota.admit(state, limits, ask, "c", 1_000, 120_001)
    assert not refused.allowed and 0 < refused.retry_after_ms <= 2 * quota.MINUTE_MS
    assert quota.admit(state, limits, ask, "c", 1_000, 240_000).allowed
