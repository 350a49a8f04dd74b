"""Lease mode's slice arithmetic (routing/lease.py), without I/O: local admission, settling,
sizing, and syncs that never un-cover a request admitted while they are in flight."""

from __future__ import annotations

import math

from routing import lease, lease_headers
from routing.lease import Grant, Sizing, Slice, Wants
from routing.quota import BUDGET, CONCURRENCY, RPM, TPM, Ask, Limits

ALL = Limits(rpm=600, tpm=100_000, max_concurrency=10, budget_nano=1_000_000_000)
NOW = 1_000_000


def granted(s: Slice, limits: Limits, grant: Grant, wants: Wants | None = None) -> None:
    plan = lease.plan_sync(s, limits, wants or lease.wants(s, limits, s.sizing))
    lease.apply_grant(s, limits, plan, grant)


def full_slice() -> Slice:
    s = Slice("k", ALL, "2026-12")
    granted(s, ALL, Grant(requests=5, tokens=5_000, slots=3, held_nano=50_000_000))
    return s


def test_take_is_all_or_nothing_and_names_the_first_short_limit() -> None:
    s = full_slice()
    assert lease.take(s, ALL, Ask(1_000, 10_000_000), NOW) is None
    assert (s.requests, s.tokens, s.inflight, s.reserved_nano) == (4, 4_000, 1, 10_000_000)
    # Too many tokens: nothing else is taken either.
    assert lease.take(s, ALL, Ask(4_001, 1), NOW) == TPM
    assert (s.requests, s.inflight, s.reserved_nano) == (4, 1, 10_000_000)
    assert lease.take(s, ALL, Ask(1, 40_000_001), NOW) == BUDGET
    lease.take(s, ALL, Ask(1, 1), NOW)
    lease.take(s, ALL, Ask(1, 1), NOW)
    assert s.inflight == 3
    assert lease.take(s, ALL, Ask(1, 1), NOW) == CONCURRENCY
    empty = Slice("k", ALL, "2026-12")
    assert lease.take(empty, ALL, Ask(1, 1), NOW) == RPM


def test_settle_refunds_tokens_leaves_a_debt_and_moves_cost_to_unpushed() -> None:
    s = full_slice()
    ask = Ask(1_000, 10_000_000)
    lease.take(s, ALL, ask, NOW)
    lease.settle(s, ALL, ask, used_tokens=300, cost_nano=2_000_000)
    assert s.tokens == 5_000 - 300
    assert (s.inflight, s.reserved_nano, s.unpushed_nano) == (0, 0, 2_000_000)
    assert s.free_nano == 48_000_000
    big = Ask(4_000, 0)
    lease.take(s, ALL, big, NOW)
    lease.settle(s, ALL, big, used_tokens=10_000, cost_nano=0)
    assert s.tokens == 4_700 - 10_000  # a debt, charged to the bucket at the next sync
    lease.settle(s, ALL, big, used_tokens=10**9, cost_nano=0)
    assert s.tokens == -100_000  # never more than one minute's refill


def test_a_sync_charges_the_debt_and_pushes_the_spend() -> None:
    s = full_slice()
    s.tokens = -700
    s.unpushed_nano = 3_000_000
    plan = lease.plan_sync(s, ALL, Wants(requests=5, tokens=2_000, slots=3, nano=50_000_000))
    assert plan.give_tokens == -700 and plan.want_tokens == 2_000
    assert plan.push_nano == 3_000_000
    # Redis keeps what the slice held minus the spend now pushed.
    assert plan.keep_nano == 47_000_000
    lease.apply_grant(s, ALL, plan, Grant(tokens=2_000, slots=3, held_nano=50_000_000))
    assert s.tokens == 2_000 and s.unpushed_nano == 0 and s.free_nano == 50_000_000


def test_what_a_sync_gives_back_leaves_the_slice_before_the_round_trip() -> None:
    s = full_slice()
    plan = lease.plan_sync(s, ALL, Wants(requests=2, tokens=1_000, slots=1, nano=10_000_000))
    assert (plan.give_requests, plan.give_tokens) == (3, 4_000)
    assert plan.keep_slots == 1 and plan.keep_nano == 10_000_000
    assert (s.requests, s.tokens, s.slots, s.free_nano) == (2, 1_000, 1, 10_000_000)
    # Admitted while the sync is in flight: covered by what Redis keeps.
    assert lease.take(s, ALL, Ask(500, 4_000_000), NOW) is None
    lease.apply_grant(s, ALL, plan, Grant(requests=0, tokens=0, slots=1, held_nano=10_000_000))
    assert s.free_nano == 6_000_000 and s.inflight == 1 and s.slots == 1


def test_spend_settled_during_a_sync_stays_unpushed() -> None:
    s = full_slice()
    ask = Ask(1, 10_000_000)
    lease.take(s, ALL, ask, NOW)
    lease.settle(s, ALL, ask, 1, 4_000_000)
    plan = lease.plan_sync(s, ALL, Wants(requests=5, tokens=5_000, slots=3, nano=46_000_000))
    other = Ask(1, 5_000_000)
    lease.take(s, ALL, other, NOW)
    lease.settle(s, ALL, other, 1, 1_000_000)  # after the sync was sent
    lease.apply_grant(s, ALL, plan, Grant(requests=0, tokens=0, slots=3, held_nano=46_000_000))
    assert s.unpushed_nano == 1_000_000
    assert s.free_nano == 45_000_000


def test_slices_size_to_recent_demand_within_the_share_cap() -> None:
    sizing = Sizing(target_s=1.0, max_share=0.1)
    s = Slice("k", ALL, "2026-12", sizing=sizing)
    quiet = lease.wants(s, ALL, sizing)
    assert quiet.requests == 4 and quiet.slots == 1  # the floor
    s.rate_requests = 30.0
    s.rate_tokens = 5_000.0
    s.rate_nano = 1_000_000.0
    busy = lease.wants(s, ALL, sizing)
    assert busy.requests == 30 and busy.tokens == 5_000 and busy.nano == 1_000_000
    s.rate_requests = 1_000.0
    s.rate_tokens = 10**9
    s.rate_nano = 10**12
    capped = lease.wants(s, ALL, sizing)
    assert capped.requests == 60 and capped.tokens == 10_000 and capped.nano == 100_000_000
    # Requests waiting for the sync always get their share, even beyond the cap.
    lease.add_pending(s, Ask(90_000, 900_000_000))
    waiting = lease.wants(s, ALL, sizing)
    assert waiting.tokens == 100_000 and waiting.nano == 1_000_000_000
    lease.drop_pending(s, Ask(90_000, 900_000_000))
    assert s.pending_tokens == 0


def test_rates_follow_a_rise_at_once_and_decay_over_time_not_syncs() -> None:
    s = Slice("k", ALL, "2026-12")
    lease.update_rates(s, NOW)
    s.used_requests = 10
    lease.update_rates(s, NOW + 1_000)
    assert s.rate_requests == 10.0
    # Quiet: ten syncs in 1 s decay it as one sync after 1 s would (2 s time constant).
    t = NOW + 1_000
    for _ in range(10):
        t += 100
        lease.update_rates(s, t)
    assert abs(s.rate_requests - 10 * math.exp(-0.5)) < 1e-9
    assert s.used_requests == 0
    # A dip in flight does not drop the slots the recent peak needed.
    s.inflight = s.peak_inflight = 40
    lease.update_rates(s, t + 100)
    s.inflight = 10
    lease.update_rates(s, t + 200)
    assert s.peak_smoothed > 35
    wide = Limits(max_concurrency=1_000)
    total = math.ceil(s.peak_smoothed * 1.25) + 1
    assert lease.wants(s, wide, Sizing(max_share=1.0)).slots == total - s.inflight


def test_a_sync_gives_back_only_beyond_twice_what_is_wanted() -> None:
    s = full_slice()
    plan = lease.plan_sync(s, ALL, Wants(requests=3, tokens=3_000, slots=2, nano=30_000_000))
    assert (plan.give_requests, plan.give_tokens, plan.keep_slots, plan.keep_nano) == (
        0,
        0,
        3,
        50_000_000,
    )


def test_low_water_is_half_of_what_the_last_sync_aimed_for() -> None:
    s = full_slice()
    s.wanted = Wants(requests=6, tokens=0, slots=0, nano=0)
    only_rpm = Limits(rpm=600)
    s.requests = 3
    assert not lease.low(s, only_rpm)
    s.requests = 2
    assert lease.low(s, only_rpm)


def test_a_starved_grant_is_what_makes_a_short_slice_a_refusal() -> None:
    s = full_slice()
    plan = lease.plan_sync(s, ALL, Wants(requests=10, tokens=5_000, slots=3, nano=50_000_000))
    lease.apply_grant(s, ALL, plan, Grant(requests=5, tokens=0, slots=3, held_nano=50_000_000))
    assert not s.starved
    plan = lease.plan_sync(s, ALL, Wants(requests=20, tokens=5_000, slots=3, nano=50_000_000))
    lease.apply_grant(s, ALL, plan, Grant(requests=1, tokens=0, slots=3, held_nano=50_000_000))
    assert s.starved and s.syncs_done == s.syncs_started == 3


def test_refusals_carry_todays_shapes() -> None:
    s = Slice("k", ALL, "2026-12", rpm_level=0, tpm_level=500, budget_left_nano=7)
    rpm = lease_headers.refused_verdict(s, ALL, Ask(1, 0), RPM)
    assert rpm.refused_by == RPM and rpm.retry_after_ms == 100 and rpm.remaining_requests == 0
    tpm = lease_headers.refused_verdict(s, ALL, Ask(1_500, 0), TPM)
    assert tpm.retry_after_ms == 600 and tpm.remaining_tokens == 500
    budget = lease_headers.refused_verdict(s, ALL, Ask(1, 10), BUDGET)
    assert budget.refused_by == BUDGET and budget.budget_left_nano == 7
    assert lease_headers.refused_verdict(s, ALL, Ask(1, 0), CONCURRENCY).retry_after_ms == 1000


def test_outstanding_is_what_a_dead_replica_could_leave_unaccounted() -> None:
    s = full_slice()
    s.tokens = -5
    assert lease.outstanding(s) == (5, 0, 3, 50_000_000)
    lease.forget_redis_part(s)  # a new month: nothing held in Redis under the slice's name
    assert s.member_nano == 0 and s.held_nano == 0
