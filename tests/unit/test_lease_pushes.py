"""Lease mode without I/O (routing/lease.py): the cumulative totals that make spend pushes
idempotent, a sync lost without an answer, and headers that never show more than the limit.
The Redis side of idempotent pushes is tests/integration/test_limits_lease_pushes.py."""

from __future__ import annotations

from routing import lease, lease_headers
from routing.lease import Grant, Slice, Wants
from routing.quota import MINUTE_MS, RPM, TPM, Ask, Limits

ALL = Limits(rpm=600, tpm=100_000, max_concurrency=10, budget_nano=1_000_000_000)
NOW = 1_000_000
WANTS = Wants(requests=5, tokens=5_000, slots=3, nano=50_000_000)
GRANT = Grant(requests=5, tokens=5_000, slots=3, held_nano=50_000_000)


def spend(s: Slice, cost_nano: int) -> None:
    ask = Ask(1, 1_000_000)
    assert lease.take(s, ALL, ask, NOW) is None
    lease.settle(s, ALL, ask, 1, cost_nano)


def synced_slice() -> Slice:
    s = Slice("k", ALL, "2026-12")
    lease.apply_grant(s, ALL, lease.plan_sync(s, ALL, WANTS), GRANT)
    return s


def test_a_sync_sends_the_months_cumulative_push_and_counts_it_once_confirmed() -> None:
    s = synced_slice()
    spend(s, 3_000)
    first = lease.plan_sync(s, ALL, WANTS)
    assert (first.push_nano, first.push_total_nano, first.month) == (3_000, 3_000, "2026-12")
    lease.apply_grant(s, ALL, first, GRANT)
    assert (s.unpushed_nano, s.pushed_nano) == (0, 3_000)
    spend(s, 2_000)
    second = lease.plan_sync(s, ALL, WANTS)
    assert (second.push_nano, second.push_total_nano) == (2_000, 5_000)


def test_a_lost_sync_is_re_sent_inside_the_next_total_not_beside_it() -> None:
    s = synced_slice()
    spend(s, 3_000)
    lost = lease.plan_sync(s, ALL, WANTS)
    lease.sync_lost(s, lost)
    # Unconfirmed: still unpushed and still covered by the slice's budget entry.
    assert (s.unpushed_nano, s.pushed_nano) == (3_000, 0)
    spend(s, 2_000)
    retry = lease.plan_sync(s, ALL, WANTS)
    # The same 3,000 again plus the new 2,000: a total Redis applies only once (it has at
    # most 3,000 of it already, recorded under this slice's holder).
    assert (retry.push_nano, retry.push_total_nano) == (5_000, 5_000)
    lease.apply_grant(s, ALL, retry, GRANT)
    assert (s.unpushed_nano, s.pushed_nano) == (0, 5_000)


def test_a_lost_sync_makes_the_next_one_remove_every_slot_entry_it_may_have_added() -> None:
    s = synced_slice()
    assert s.member_slots == 3
    plan = lease.plan_sync(s, ALL, Wants(requests=5, tokens=5_000, slots=6, nano=50_000_000))
    assert (plan.keep_slots, plan.want_slots) == (3, 3)
    lease.sync_lost(s, plan)
    assert s.member_slots == 6 and s.slots == 3  # Redis may hold 6 entries; 3 are sure
    lease.apply_grant(s, ALL, lease.plan_sync(s, ALL, WANTS), GRANT)
    assert s.member_slots == 3


def test_a_new_month_pushes_from_zero_and_a_late_answer_for_the_old_one_is_not_counted() -> None:
    s = synced_slice()
    spend(s, 3_000)
    lease.apply_grant(s, ALL, lease.plan_sync(s, ALL, WANTS), GRANT)
    spend(s, 1_000)
    december = lease.plan_sync(s, ALL, WANTS)
    s.month = "2027-01"
    lease.forget_redis_part(s)
    assert s.pushed_nano == 0
    lease.apply_grant(s, ALL, december, GRANT)  # December's answer arrives in January
    assert (s.unpushed_nano, s.pushed_nano) == (0, 0)
    spend(s, 2_000)
    january = lease.plan_sync(s, ALL, WANTS)
    assert (january.push_nano, january.push_total_nano, january.month) == (
        2_000,
        2_000,
        "2027-01",
    )


def test_admitted_headers_never_show_more_than_the_limit() -> None:
    # The bucket refilled while this slice held its part: Redis's level plus the slice's
    # requests is above the limit (seen: remaining 100000964 of 100000000).
    s = Slice("k", ALL, "2026-12", requests=40, tokens=9_000, rpm_level=590, tpm_level=99_000)
    v = lease_headers.admitted_verdict(s, ALL)
    assert (v.remaining_requests, v.reset_requests_ms) == (600, 0)
    assert (v.remaining_tokens, v.reset_tokens_ms) == (100_000, 0)
    # Below the limit: the sum, and a reset of the time the missing part takes to refill.
    s = Slice("k", ALL, "2026-12", requests=10, tokens=1_000, rpm_level=290, tpm_level=49_000)
    v = lease_headers.admitted_verdict(s, ALL)
    assert (v.remaining_requests, v.reset_requests_ms) == (300, MINUTE_MS // 2)
    assert (v.remaining_tokens, v.reset_tokens_ms) == (50_000, MINUTE_MS // 2)
    # A debt below zero shows 0 left.
    s = Slice("k", ALL, "2026-12", tokens=-2_000, tpm_level=1_000)
    assert lease_headers.admitted_verdict(s, ALL).remaining_tokens == 0


def test_refusal_headers_never_show_more_than_the_limit() -> None:
    s = Slice("k", ALL, "2026-12", requests=0, tokens=10, rpm_level=700, tpm_level=100_500)
    rpm = lease_headers.refused_verdict(s, ALL, Ask(1, 0), RPM)
    assert (rpm.remaining_requests, rpm.reset_requests_ms) == (0, 0)
    tpm = lease_headers.refused_verdict(s, ALL, Ask(200_000, 0), TPM)
    assert (tpm.remaining_tokens, tpm.reset_tokens_ms) == (100_000, 0)
