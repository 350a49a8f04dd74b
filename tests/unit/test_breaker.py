"""The pure breaker machine, and the in-process registry on a fake clock (no Redis)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.core.breakers import Breakers
from routing.breaker import (
    CLOSED,
    HALF_OPEN,
    INITIAL,
    OPEN,
    BreakerPolicy,
    BreakerState,
    adopt_close,
    adopt_open,
    allow,
    cooldown_remaining,
    force_open,
    is_open,
    record,
)

POLICY = BreakerPolicy(
    consecutive_failures=3,
    error_rate=0.5,
    min_requests=10,
    window_s=10.0,
    cooldown_s=5.0,
    max_cooldown_s=30.0,
    cooldown_multiplier=2.0,
    probe_timeout_s=20.0,
)


def fail(state: BreakerState, times: int, now: float) -> BreakerState:
    for _ in range(times):
        state = record(state, False, now, POLICY)
    return state


def tripped(now: float = 0.0) -> BreakerState:
    return fail(INITIAL, POLICY.consecutive_failures, now)


def test_consecutive_failures_trip_and_a_success_resets_the_count() -> None:
    state = fail(INITIAL, 2, 0.0)
    state = record(state, True, 0.1, POLICY)
    state = fail(state, 2, 0.2)
    assert state.state == CLOSED and state.consecutive_failures == 2
    state = record(state, False, 0.3, POLICY)
    assert state.state == OPEN
    assert state.trips == 1 and state.cooldown_s == POLICY.cooldown_s
    assert state.opened_at == 0.3 and state.last_failure_at == 0.3


def test_error_rate_trips_only_with_enough_requests_in_the_window() -> None:
    state = INITIAL
    now = 0.0
    # Alternating outcomes never reach 3 consecutive failures but are a 50 % error rate.
    for i in range(9):
        state = record(state, i % 2 == 1, now, POLICY)
        now += 0.1
    assert state.state == CLOSED, "9 requests is under min_requests"
    state = record(state, False, now, POLICY)
    assert state.state == OPEN and state.trips == 1


def test_error_rate_below_threshold_stays_closed() -> None:
    state = INITIAL
    for i in range(40):
        state = record(state, i % 3 != 0, i * 0.1, POLICY)  # one failure in three
    assert state.state == CLOSED


def test_failures_spread_over_a_window_boundary_still_count() -> None:
    # Half the calls fail, 8 late in one window and 3 early in the next: a tumbling window
    # would see neither reach min_requests; the sliding estimate still holds 95 % of the first.
    state = INITIAL
    for i in range(8):
        state = record(state, i % 2 == 1, 9.0 + i * 0.1, POLICY)
    for success in (False, True):
        state = record(state, success, 10.5, POLICY)
    assert state.state == CLOSED
    state = record(state, False, 10.5, POLICY)
    assert state.state == OPEN and state.trips == 1


def test_old_windows_are_forgotten() -> None:
    state = INITIAL
    for i in range(9):
        state = record(state, i % 2 == 1, 0.0, POLICY)
    state = record(state, False, 25.0, POLICY)  # two windows later
    assert state.state == CLOSED
    assert state.window_requests == 1 and state.prev_requests == 0


def test_open_denies_until_cooldown_then_lets_exactly_one_probe() -> None:
    state = tripped(0.0)
    ok, same = allow(state, 4.9, POLICY)
    assert not ok and same is state and is_open(state, 4.9)
    assert cooldown_remaining(state, 4.0) == pytest.approx(1.0)
    assert not is_open(state, 5.0), "an elapsed cooldown reads as open for the probe"
    ok, probing = allow(state, 5.0, POLICY)
    assert ok and probing.state == HALF_OPEN and probing.probe_in_flight
    for t in (5.0, 6.0, 24.9):
        ok, _ = allow(probing, t, POLICY)
        assert not ok
    assert is_open(probing, 6.0)


def test_a_probe_that_never_reports_is_replaced_after_the_probe_timeout() -> None:
    _, probing = allow(tripped(0.0), 5.0, POLICY)
    ok, again = allow(probing, 5.0 + POLICY.probe_timeout_s, POLICY)
    assert ok and again.state == HALF_OPEN
    assert again.probe_expires_at == 5.0 + 2 * POLICY.probe_timeout_s


def test_probe_success_closes_and_resets_the_cooldown() -> None:
    _, probing = allow(tripped(0.0), 5.0, POLICY)
    closed = record(probing, True, 6.0, POLICY)
    assert closed.state == CLOSED and closed.consecutive_failures == 0
    assert closed.trips == 1 and closed.window_requests == 0
    assert allow(closed, 6.0, POLICY) == (True, closed)
    reopened = fail(closed, 3, 7.0)
    assert reopened.cooldown_s == POLICY.cooldown_s


def test_probe_failure_reopens_with_a_growing_capped_cooldown() -> None:
    state = tripped(0.0)
    now = 0.0
    cooldowns = []
    for _ in range(5):
        now += state.cooldown_s
        ok, state = allow(state, now, POLICY)
        assert ok
        state = record(state, False, now, POLICY)
        cooldowns.append(state.cooldown_s)
    assert cooldowns == [10.0, 20.0, 30.0, 30.0, 30.0]
    assert state.trips == 6 and state.state == OPEN


def test_outcomes_while_open_are_stragglers() -> None:
    state = tripped(0.0)
    assert record(state, True, 1.0, POLICY) is state
    later = record(state, False, 2.0, POLICY)
    assert later.state == OPEN and later.opened_at == 0.0 and later.last_failure_at == 2.0


def test_an_outcome_past_the_cooldown_without_allow_counts_as_the_probe() -> None:
    # A caller that sends traffic once the breaker reads as not open, without asking `allow`,
    # must still be able to close it, or re-trip it with a longer cooldown.
    state = tripped(0.0)
    assert record(state, True, 5.0, POLICY).state == CLOSED
    reopened = record(state, False, 5.0, POLICY)
    assert reopened.state == OPEN and reopened.opened_at == 5.0 and reopened.cooldown_s == 10.0


def test_force_open_trips_at_once_and_does_not_extend_an_open_breaker() -> None:
    state = force_open(INITIAL, 1.0, POLICY)
    assert state.state == OPEN and state.trips == 1 and state.opened_at == 1.0
    again = force_open(state, 3.0, POLICY)
    assert again.opened_at == 1.0 and again.trips == 1 and again.last_failure_at == 3.0
    _, probing = allow(again, 6.0, POLICY)
    reopened = force_open(probing, 6.5, POLICY)
    assert reopened.state == OPEN and reopened.cooldown_s == 10.0 and reopened.trips == 2


def test_adopting_a_remote_trip_keeps_the_later_end() -> None:
    remote = adopt_open(INITIAL, 10.0, opened_at=9.0, cooldown_s=5.0, trips=3)
    assert remote.state == OPEN and remote.trips == 3 and cooldown_remaining(remote, 10.0) == 4.0
    local = tripped(10.0)  # ends at 15, the remote one at 14
    kept = adopt_open(local, 10.0, opened_at=9.0, cooldown_s=5.0, trips=3)
    assert kept.opened_at == 10.0 and kept.trips == 3
    assert adopt_close(kept).state == CLOSED and adopt_close(INITIAL) is INITIAL


def test_policy_rejects_impossible_values() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(error_rate=0.0)
    with pytest.raises(ValueError):
        BreakerPolicy(cooldown_s=10.0, max_cooldown_s=5.0)
    with pytest.raises(ValueError):
        BreakerPolicy(consecutive_failures=0)


class BreakerMachine(RuleBasedStateMachine):
    """Random interleavings of time, admissions and outcomes against the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.state = INITIAL
        self.now = 0.0
        self.lease_until: float | None = None  # the probe this model knows to be in flight

    @rule(dt=st.floats(min_value=0.0, max_value=40.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def ask(self) -> None:
        before = self.state
        ok, self.state = allow(before, self.now, POLICY)
        if before.state == CLOSED:
            assert ok and self.state is before
        elif ok:
            assert self.lease_until is None or self.now >= self.lease_until, "two probes at once"
            assert cooldown_remaining(before, self.now) == 0.0
            assert self.state.state == HALF_OPEN
            self.lease_until = self.now + POLICY.probe_timeout_s
        else:
            assert self.state is before

    @rule(success=st.booleans())
    def outcome(self, success: bool) -> None:
        was_probe = self.state.state != CLOSED and cooldown_remaining(self.state, self.now) == 0
        self.state = record(self.state, success, self.now, POLICY)
        if was_probe and success:
            assert self.state.state == CLOSED and self.state.consecutive_failures == 0
        elif was_probe:
            assert self.state.state == OPEN and self.state.opened_at == self.now
        self._forget_finished_probe()

    @rule()
    def misconfigured(self) -> None:
        before = self.state
        self.state = force_open(before, self.now, POLICY)
        assert self.state.state == OPEN
        if before.state == OPEN and cooldown_remaining(before, self.now) > 0:
            assert self.state.opened_at == before.opened_at, "recovery pushed out"
        self._forget_finished_probe()

    def _forget_finished_probe(self) -> None:
        if self.state.state != HALF_OPEN:
            self.lease_until = None

    @invariant()
    def cooldown_is_bounded(self) -> None:
        assert 0.0 <= self.state.cooldown_s <= POLICY.max_cooldown_s
        assert cooldown_remaining(self.state, self.now) <= POLICY.max_cooldown_s + 1e-9

    @invariant()
    def shape_is_consistent(self) -> None:
        s = self.state
        assert s.probe_in_flight == (s.state == HALF_OPEN)
        assert (s.opened_at is None) == (s.state == CLOSED)
        assert s.consecutive_failures < POLICY.consecutive_failures


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_in_process_registry_trips_probes_and_closes() -> None:
    clock = FakeClock()
    breakers = Breakers(POLICY, None, clock=clock, wall_clock=lambda: clock.now + 1e9)
    assert breakers.allow("a@p") and breakers.open_map().get("a@p") is None
    breakers.record("b@p", True)
    for _ in range(3):
        breakers.record("a@p", False)
    assert not breakers.allow("a@p") and breakers.allow("b@p")
    assert dict(breakers.open_map()) == {"a@p": True, "b@p": False}
    assert dict(breakers.last_failure_map()) == {"a@p": 1000.0}
    view = breakers.snapshot()["a@p"]
    assert view.state == OPEN and view.trips == 1
    assert view.cooldown_remaining_s == 5.0 and view.last_failure_at == 1000.0 + 1e9
    assert not breakers.shared_ok

    clock.now += 5.0
    assert breakers.open_map()["a@p"] is False
    assert breakers.allow("a@p"), "the probe"
    assert not breakers.allow("a@p"), "only one probe"
    breakers.record("a@p", True)
    assert breakers.allow("a@p") and breakers.snapshot()["a@p"].state == CLOSED


def test_in_process_force_open() -> None:
    clock = FakeClock()
    breakers = Breakers(POLICY, None, clock=clock)
    breakers.force_open("x@p")
    assert not breakers.allow("x@p")
    assert breakers.snapshot()["x@p"].trips == 1
