"""Per-deployment circuit breaker as a pure state machine.

Every function takes the current state and `now` and returns a new state; nothing here reads a
clock or keeps anything between calls, so the same machine runs in-process, under a replica that
shares trips through Redis (gateway/core/breakers.py) and under hypothesis with a fake clock. `now`
may be any monotonic seconds value as long as one state only ever sees one clock.

closed ──(N consecutive failures, or error rate ≥ threshold over ≥ min_requests in the window)──►
open ──(cooldown elapsed: exactly one caller is let through)──► half_open
half_open ──(probe succeeds)──► closed, cooldown back to the base value
half_open ──(probe fails)──► open, cooldown × multiplier (capped)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal

BreakerStatus = Literal["closed", "open", "half_open"]
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_requests: int = 20
    window_s: float = 30.0
    cooldown_s: float = 5.0
    max_cooldown_s: float = 300.0
    cooldown_multiplier: float = 2.0
    # A probe whose outcome never arrives (the caller was cancelled, the process died) must not
    # keep the breaker half-open forever; after this long another probe is allowed. Shared mode
    # also uses it as the TTL of the cross-replica probe lock.
    probe_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be at least 1")
        if not 0.0 < self.error_rate <= 1.0:
            raise ValueError("error_rate must be in (0, 1]")
        if self.min_requests < 1:
            raise ValueError("min_requests must be at least 1")
        if self.window_s <= 0 or self.cooldown_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("window_s, cooldown_s and probe_timeout_s must be positive")
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError("max_cooldown_s must be at least cooldown_s")
        if self.cooldown_multiplier < 1.0:
            raise ValueError("cooldown_multiplier must be at least 1")


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: BreakerStatus = CLOSED
    consecutive_failures: int = 0
    # Error rate uses a sliding-window counter: the current fixed window plus the previous one
    # weighted by how much of it still overlaps the sliding window. A plain tumbling window
    # would forget every failure at each boundary and let a half-broken deployment dodge the
    # rate trip by straddling it; a per-request log would make the state unbounded.
    window_start: float = 0.0
    window_requests: int = 0
    window_failures: int = 0
    prev_requests: int = 0
    prev_failures: int = 0
    opened_at: float | None = None
    # The cooldown of the current (or, once closed, the last) trip; 0 until the first trip.
    cooldown_s: float = 0.0
    trips: int = 0
    probe_in_flight: bool = False
    probe_expires_at: float | None = None
    last_failure_at: float | None = None


INITIAL = BreakerState()


@dataclass(frozen=True, slots=True)
class BreakerView:
    """One breaker as status pages and metrics show it."""

    state: BreakerStatus
    trips: int
    cooldown_s: float
    cooldown_remaining_s: float
    consecutive_failures: int
    last_failure_at: float | None


def view(state: BreakerState, now: float, clock_offset: float = 0.0) -> BreakerView:
    """`clock_offset` moves timestamps to another clock, e.g. epoch minus monotonic."""
    last = state.last_failure_at
    return BreakerView(
        state=state.state,
        trips=state.trips,
        cooldown_s=state.cooldown_s,
        cooldown_remaining_s=cooldown_remaining(state, now),
        consecutive_failures=state.consecutive_failures,
        last_failure_at=None if last is None else last + clock_offset,
    )


def reopens_at(state: BreakerState) -> float | None:
    """When an open breaker becomes eligible for its probe; None unless open or half-open."""
    if state.state == CLOSED or state.opened_at is None:
        return None
    return state.opened_at + state.cooldown_s


def cooldown_remaining(state: BreakerState, now: float) -> float:
    until = reopens_at(state)
    return 0.0 if until is None else max(0.0, until - now)


def is_open(state: BreakerState, now: float) -> bool:
    """True when a caller asking now would be turned away.

    An open breaker whose cooldown has elapsed reads as not open, so routing still offers it and
    `allow` can let the probe through.
    """
    if state.state == CLOSED:
        return False
    if state.state == HALF_OPEN:
        return _probe_pending(state, now)
    return cooldown_remaining(state, now) > 0.0


def allow(state: BreakerState, now: float, policy: BreakerPolicy) -> tuple[bool, BreakerState]:
    """May a request go to this deployment now? Returns the answer and the state to keep.

    The state object is returned unchanged whenever nothing changed, so callers can skip the
    write-back on the hot path with an identity check.
    """
    if state.state == CLOSED:
        return True, state
    if state.state == OPEN and cooldown_remaining(state, now) > 0.0:
        return False, state
    if state.state == HALF_OPEN and _probe_pending(state, now):
        return False, state
    return True, replace(
        state,
        state=HALF_OPEN,
        probe_in_flight=True,
        probe_expires_at=now + policy.probe_timeout_s,
    )


def record(state: BreakerState, success: bool, now: float, policy: BreakerPolicy) -> BreakerState:
    """Fold one attempt outcome into the state.

    During the cooldown, outcomes are from attempts that started before the trip (or were
    forced through because every target was open): a late success must not undo a trip on its
    own, so only the failure time is kept, which still feeds the least-recently-failed ordering.
    Once the cooldown is over (half-open, or open with nobody having asked `allow`) the outcome
    is taken as the probe's: a caller cannot tell a probe from a straggler, and a straggler
    landing a whole cooldown after the trip is rare. Without that, an attempt sent past an
    elapsed cooldown without asking `allow` could never close, nor re-trip, the breaker.
    """
    if state.state == OPEN and cooldown_remaining(state, now) > 0.0:
        return state if success else replace(state, last_failure_at=now)
    if state.state != CLOSED:
        if success:
            return _closed_after_probe(state)
        return _trip(state, now, _grown_cooldown(state, policy))
    return _record_closed(state, success, now, policy)


def force_open(state: BreakerState, now: float, policy: BreakerPolicy) -> BreakerState:
    """Open at once: the upstream said the deployment is misconfigured (401/403/404).

    A cooling breaker keeps its cooldown clock so a burst of the same error from in-flight
    attempts does not push recovery further out; past the cooldown this is a failed probe and
    grows the cooldown like any other.
    """
    if state.state == OPEN and cooldown_remaining(state, now) > 0.0:
        return replace(state, last_failure_at=now)
    if state.state != CLOSED:
        return _trip(state, now, _grown_cooldown(state, policy))
    return _trip(state, now, policy.cooldown_s)


def adopt_open(
    state: BreakerState, now: float, opened_at: float, cooldown_s: float, trips: int
) -> BreakerState:
    """Apply a trip another replica made; `opened_at` is already in this state's clock.

    When both replicas tripped, the later-ending cooldown wins so neither shortens the other's.
    """
    trips = max(trips, state.trips)
    if state.state == OPEN:
        until = reopens_at(state)
        if until is not None and until >= opened_at + cooldown_s:
            return replace(state, trips=trips)
    last = opened_at if state.last_failure_at is None else max(state.last_failure_at, opened_at)
    return BreakerState(
        state=OPEN,
        window_start=now,
        opened_at=opened_at,
        cooldown_s=cooldown_s,
        trips=trips,
        last_failure_at=last,
    )


def adopt_close(state: BreakerState) -> BreakerState:
    """Apply another replica's successful probe."""
    if state.state == CLOSED:
        return state
    return _closed_after_probe(state)


def _probe_pending(state: BreakerState, now: float) -> bool:
    return (
        state.probe_in_flight
        and state.probe_expires_at is not None
        and now < state.probe_expires_at
    )


def _grown_cooldown(state: BreakerState, policy: BreakerPolicy) -> float:
    base = state.cooldown_s if state.cooldown_s > 0 else policy.cooldown_s
    return min(policy.max_cooldown_s, base * policy.cooldown_multiplier)


def _trip(state: BreakerState, now: float, cooldown_s: float) -> BreakerState:
    return BreakerState(
        state=OPEN,
        window_start=now,
        opened_at=now,
        cooldown_s=cooldown_s,
        trips=state.trips + 1,
        last_failure_at=now,
    )


def _closed_after_probe(state: BreakerState) -> BreakerState:
    # Counters start afresh: failures from before the trip say nothing about the recovered
    # deployment. The cooldown of the next trip starts from the base value again.
    return BreakerState(trips=state.trips, last_failure_at=state.last_failure_at)


def _record_closed(
    state: BreakerState, success: bool, now: float, policy: BreakerPolicy
) -> BreakerState:
    start, cur_req, cur_fail, prev_req, prev_fail = _rolled(state, now, policy)
    cur_req += 1
    if success:
        consecutive = 0
        last_failure = state.last_failure_at
    else:
        cur_fail += 1
        consecutive = state.consecutive_failures + 1
        last_failure = now
    # The constructor rather than dataclasses.replace: this runs for every successful
    # attempt, and replace() introspects the fields each time (several times slower).
    updated = BreakerState(
        state.state,
        consecutive,
        start,
        cur_req,
        cur_fail,
        prev_req,
        prev_fail,
        state.opened_at,
        state.cooldown_s,
        state.trips,
        state.probe_in_flight,
        state.probe_expires_at,
        last_failure,
    )
    if success:
        return updated
    if consecutive >= policy.consecutive_failures or _rate_exceeded(updated, now, policy):
        return _trip(updated, now, policy.cooldown_s)
    return updated


def _rolled(
    state: BreakerState, now: float, policy: BreakerPolicy
) -> tuple[float, int, int, int, int]:
    elapsed = now - state.window_start
    if elapsed < policy.window_s:
        return (
            state.window_start,
            state.window_requests,
            state.window_failures,
            state.prev_requests,
            state.prev_failures,
        )
    if elapsed < 2 * policy.window_s:
        # Windows stay aligned to the first one so the weighting below stays exact.
        start = state.window_start + policy.window_s
        return start, 0, 0, state.window_requests, state.window_failures
    return now, 0, 0, 0, 0


def _rate_exceeded(state: BreakerState, now: float, policy: BreakerPolicy) -> bool:
    overlap = max(0.0, 1.0 - (now - state.window_start) / policy.window_s)
    requests = state.window_requests + state.prev_requests * overlap
    if requests < policy.min_requests:
        return False
    failures = state.window_failures + state.prev_failures * overlap
    return failures >= policy.error_rate * requests
