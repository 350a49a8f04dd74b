"""Failover decisions: the fault matrix, backoff bounds, retry-after parsing, target order."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.failover import (
    Action,
    Backoff,
    Outcome,
    backoff_s,
    classify,
    fits_deadline,
    next_with_larger_context,
    order_targets,
    parse_retry_after,
)
from routing.model import DeploymentSpec, PlannedAttempt

R, N, F = Action.RETRY, Action.NEXT, Action.FAIL


def dep(dep_id: str, window: int | None = None) -> DeploymentSpec:
    return DeploymentSpec(dep_id, "sim", "serverless", "openai", f"m-{dep_id}", window)


def status(code: int, *, code_: str | None = None, after: float | None = None) -> Outcome:
    return Outcome("status", code, code_, after)


CTX = "context_length_exceeded"

# (outcome, action with retries left, action with none left, error_class, open_breaker,
#  counts_as_failure, needs_larger_context)
MATRIX: list[tuple[Outcome, Action, Action, str, bool, bool, bool]] = [
    (Outcome("connect"), R, N, "connect", False, True, False),
    (Outcome("timeout"), R, N, "timeout", False, True, False),
    (Outcome("malformed", 200), R, N, "malformed", False, True, False),
    (Outcome("cut"), R, N, "cut", False, True, False),
    (Outcome("stream_error"), R, N, "stream_error", False, True, False),
    (status(408), R, N, "http_408", False, True, False),
    (status(429), R, N, "http_429", False, True, False),
    (status(429, after=2.0), R, N, "http_429", False, True, False),
    (status(500), R, N, "http_500", False, True, False),
    (status(502), R, N, "http_502", False, True, False),
    (status(503), R, N, "http_503", False, True, False),
    (status(504), R, N, "http_504", False, True, False),
    (status(529), R, N, "http_529", False, True, False),
    (status(599), R, N, "http_599", False, True, False),
    (status(400), F, F, "http_400", False, False, False),
    (status(400, code_="invalid_request_error"), F, F, "http_400", False, False, False),
    (status(400, code_=CTX), N, N, "context_length", False, False, True),
    (Outcome("stream_error", code=CTX), N, N, "context_length", False, False, True),
    (status(401), N, N, "http_401", True, True, False),
    (status(403), N, N, "http_403", True, True, False),
    (status(404), N, N, "http_404", True, True, False),
    (status(413), F, F, "http_413", False, False, False),
    (status(422), F, F, "http_422", False, False, False),
    (status(409), F, F, "http_409", False, False, False),
    (Outcome("status"), R, N, "http_unknown", False, True, False),
    (Outcome("new_kind"), R, N, "unknown", False, True, False),
]

MATRIX_IDS = [f"{o.kind}-{o.status}-{o.code}-{o.retry_after_s}" for o, *_ in MATRIX]


@pytest.mark.parametrize(
    ("outcome", "with_retries", "exhausted", "error_class", "breaker", "counts", "larger"),
    MATRIX,
    ids=MATRIX_IDS,
)
def test_fault_matrix(
    outcome: Outcome,
    with_retries: Action,
    exhausted: Action,
    error_class: str,
    breaker: bool,
    counts: bool,
    larger: bool,
) -> None:
    first = classify(outcome, retries_left_on_target=2)
    assert first.action is with_retries
    assert first.error_class == error_class
    assert first.open_breaker is breaker
    assert first.counts_as_failure is counts
    assert first.needs_larger_context is larger
    assert first.retryable is (with_retries is R)
    assert classify(outcome, retries_left_on_target=0).action is exhausted


@pytest.mark.parametrize("outcome", [row[0] for row in MATRIX], ids=MATRIX_IDS)
def test_nothing_fails_over_after_the_first_byte(outcome: Outcome) -> None:
    streamed = Outcome(outcome.kind, outcome.status, outcome.code, outcome.retry_after_s, True)
    decision = classify(streamed, retries_left_on_target=3)
    before = classify(outcome, retries_left_on_target=3)
    assert decision.action is F
    assert not decision.retryable
    assert not decision.needs_larger_context
    # The ledger still learns the underlying cause and the breaker still hears about it.
    assert decision.error_class == before.error_class
    assert decision.counts_as_failure is before.counts_as_failure
    assert "after the first byte" in decision.reason


def test_reason_names_the_deployment_for_the_header() -> None:
    d = classify(status(503), 0, deployment=dep("small"))
    assert d.reason == "small@sim: HTTP 503"
    assert d.reason.isascii()
    assert classify(Outcome("connect"), 1).reason == "connect error"


def test_ok_is_not_a_failure_to_classify() -> None:
    with pytest.raises(ValueError):
        classify(Outcome("ok", 200), 1)


def test_action_is_a_plain_string() -> None:
    assert json.dumps([Action.NEXT]) == '["next"]'
    assert str(Action.RETRY) == "retry"


# --- backoff -------------------------------------------------------------------------------

rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
retries = st.integers(min_value=1, max_value=200)
millis = st.integers(min_value=0, max_value=120_000)


@given(retries, millis, millis, rands)
def test_backoff_stays_within_zero_and_cap(n: int, base: int, cap: int, rand: float) -> None:
    b = backoff_s(n, base, cap, None, rand)
    assert not b.skip_target
    assert 0.0 <= b.delay_s <= cap / 1000.0
    assert b.delay_s <= base * 2 ** (n - 1) / 1000.0


@given(st.integers(min_value=1, max_value=30), st.integers(1, 5_000), millis, rands)
def test_backoff_never_shrinks_as_retries_grow(n: int, base: int, cap: int, rand: float) -> None:
    # For a fixed draw the delay is monotone in n, so its expectation over rand is too.
    assert (
        backoff_s(n + 1, base, cap, None, rand).delay_s
        >= backoff_s(n, base, cap, None, rand).delay_s
    )


def test_backoff_expectation_doubles_until_the_cap() -> None:
    grid = [i / 1000 for i in range(1000)]

    def mean(n: int) -> float:
        return sum(backoff_s(n, 100, 1_000, None, r).delay_s for r in grid) / len(grid)

    means = [mean(n) for n in range(1, 7)]
    assert means[1] == pytest.approx(2 * means[0])
    assert means[2] == pytest.approx(2 * means[1])
    assert means[0] < means[1] < means[2] < means[3] < means[4]  # 0.1 0.2 0.4 0.8 1.0 (capped)
    assert means[4] == pytest.approx(means[5])
    assert means[5] == pytest.approx(0.4995)


@given(retries, millis, st.integers(1, 120_000), rands, st.floats(0.0, 500.0))
def test_retry_after_is_honoured_or_the_target_is_skipped(
    n: int, base: int, cap: int, rand: float, after: float
) -> None:
    b = backoff_s(n, base, cap, after, rand)
    if after > cap / 1000.0:
        assert b == Backoff(0.0, True)
    else:
        assert not b.skip_target
        assert after <= b.delay_s <= cap / 1000.0


def test_backoff_examples() -> None:
    assert backoff_s(1, 200, 5_000, None, 0.5) == Backoff(0.1, False)
    assert backoff_s(3, 200, 5_000, None, 0.5) == Backoff(0.4, False)
    assert backoff_s(10, 200, 5_000, None, 0.5) == Backoff(2.5, False)
    assert backoff_s(1, 200, 5_000, 3.0, 0.5) == Backoff(3.0, False)
    assert backoff_s(1, 200, 5_000, 0.0, 0.9) == Backoff(0.18, False)
    assert backoff_s(1, 200, 5_000, 5.001, 0.0) == Backoff(0.0, True)
    assert backoff_s(1, 200, 5_000, math.inf, 0.0).skip_target
    assert backoff_s(10**6, 200, 5_000, None, 0.5) == Backoff(2.5, False)


@pytest.mark.parametrize(("n", "rand"), [(0, 0.5), (1, 1.0), (1, -0.1)])
def test_backoff_rejects_bad_inputs(n: int, rand: float) -> None:
    with pytest.raises(ValueError):
        backoff_s(n, 100, 1_000, None, rand)


def test_fits_deadline() -> None:
    assert fits_deadline(now_s=10.0, deadline_s=15.0, delay_s=2.0, min_attempt_s=3.0)
    assert not fits_deadline(now_s=10.0, deadline_s=15.0, delay_s=2.5, min_attempt_s=3.0)
    assert not fits_deadline(now_s=16.0, deadline_s=15.0, delay_s=0.0, min_attempt_s=0.0)


# --- retry-after parsing -------------------------------------------------------------------

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": " 1.5 "}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"RETRY-AFTER-MS": "1200"}, 1.2),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, 30.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:50 -0000"}, 30.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:00:00 GMT"}, 0.0),
        ({"retry-after": "tomorrow"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "-1"}, None),
        ({"x-ratelimit-reset": "5"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_http_dates_without_a_zone_are_gmt_whatever_the_host_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "-0000" parses to a naive datetime, which would otherwise be read in the host's zone.
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        got = parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:13:50 -0000"}, NOW)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert got == pytest.approx(30.0)


@given(st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms", "x"]), st.text()))
def test_parse_retry_after_never_raises_on_garbage(headers: dict[str, str]) -> None:
    got = parse_retry_after(headers, NOW)
    assert got is None or (math.isfinite(got) and got >= 0.0)


# --- target order, larger context, plans -----------------------------------------------------


def attempts(*ids: str) -> list[PlannedAttempt]:
    return [PlannedAttempt(dep(i), "primary" if n == 0 else "fallback") for n, i in enumerate(ids)]


def ids_of(items: list[PlannedAttempt]) -> list[str]:
    return [a.deployment.id for a in items]


def test_order_targets_drops_open_breakers_and_keeps_plan_order() -> None:
    plan = attempts("a", "b", "c", "d")
    got = order_targets(plan, {"a": True, "b": False, "c": True}, {"a": 5.0, "c": 1.0})
    assert ids_of(got) == ["b", "d"]
    assert ids_of(order_targets(plan, {}, {})) == ["a", "b", "c", "d"]
    assert order_targets([], {"a": True}, {}) == []


def test_when_every_breaker_is_open_the_least_recently_failed_is_tried() -> None:
    plan = attempts("a", "b", "c")
    all_open = {"a": True, "b": True, "c": True}
    assert ids_of(order_targets(plan, all_open, {"a": 30.0, "b": 10.0, "c": 20.0})) == ["b"]
    # No recorded failure counts as longest ago; ties keep plan order.
    assert ids_of(order_targets(plan, all_open, {"a": 30.0, "b": 10.0})) == ["c"]
    assert ids_of(order_targets(plan, all_open, {"a": 5.0, "b": 5.0, "c": 5.0})) == ["a"]


def test_next_with_larger_context() -> None:
    rest = [
        PlannedAttempt(dep(i, w), "fallback")
        for i, w in [("x", 8_000), ("y", None), ("z", 128_000)]
    ]
    assert next_with_larger_context(rest, dep("cur", 8_000)) == 2
    assert next_with_larger_context(rest, dep("cur", 4_000)) == 0
    assert next_with_larger_context(rest, dep("cur", 128_000)) is None
    assert next_with_larger_context(rest, dep("cur", None)) == 0
    assert next_with_larger_context(rest[1:2], dep("cur", None)) is None
    assert next_with_larger_context([], dep("cur", 1)) is None
