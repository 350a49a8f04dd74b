"""Live routing state: the sliding minute windows, learned limits, moving averages, model
families, and OpenAI's rate-limit reset durations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.live_routing import LiveRouting, _duration_s
from routing.live import (
    BYTES_PER_TOKEN,
    EWMA_ALPHA,
    DeploymentLoad,
    MinuteWindow,
    RouteStats,
    family_of,
)
from routing.model import DeploymentSpec, RouteSpec, Timeouts

T0 = 1_700_000_000.0  # a realistic epoch time, on a minute boundary

# -- MinuteWindow -----------------------------------------------------------------------------


def test_empty_window_is_zero() -> None:
    assert MinuteWindow().total(T0) == 0


def test_window_sums_the_last_sixty_seconds() -> None:
    w = MinuteWindow()
    w.add(T0 + 0.2)
    w.add(T0 + 0.9)
    w.add(T0 + 30, 5)
    assert w.total(T0 + 30) == 7
    assert w.total(T0 + 59.999) == 7
    # The bucket of second T0 expires when second T0 + 60 begins.
    assert w.total(T0 + 60) == 5
    assert w.total(T0 + 89.999) == 5
    assert w.total(T0 + 90) == 0
    assert w.total(T0 + 10_000) == 0


def test_window_reuses_a_slot_a_minute_later_without_double_counting() -> None:
    w = MinuteWindow()
    w.add(T0, 3)
    w.add(T0 + 60, 2)  # same slot (second % 60), a minute later: the old 3 are gone
    assert w.total(T0 + 60) == 2
    w.add(T0 + 120.5, 4)
    assert w.total(T0 + 120.5) == 4
    w.add(T0 + 121, 1)
    assert w.total(T0 + 121) == 5
    assert w.total(T0 + 180) == 1
    assert w.total(T0 + 181) == 0


def test_window_total_is_stable_when_read_repeatedly() -> None:
    w = MinuteWindow()
    for i in range(120):
        w.add(T0 + i, i)
    for _ in range(3):
        assert w.total(T0 + 119) == sum(range(60, 120))
    assert w.total(T0 + 150) == sum(range(91, 120))
    w.add(T0 + 150, 7)
    assert w.total(T0 + 150) == sum(range(91, 120)) + 7


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=40, allow_nan=False),  # time step
            st.integers(min_value=0, max_value=1_000),  # amount
            st.booleans(),  # read the total after this step
        ),
        max_size=200,
    )
)
def test_window_matches_a_brute_force_count(steps: list[tuple[float, int, bool]]) -> None:
    w = MinuteWindow()
    events: list[tuple[int, int]] = []
    now = T0
    for dt, amount, read in steps:
        now += dt
        w.add(now, amount)
        events.append((int(now), amount))
        if read:
            second = int(now)
            assert w.total(now) == sum(a for s, a in events if second - s < 60)
    second = int(now) + 59
    assert w.total(now + 59) == sum(a for s, a in events if second - s < 60)
    assert w.total(now + 60) == 0


# -- DeploymentLoad ---------------------------------------------------------------------------


def test_started_and_ended_track_in_flight_and_the_minute() -> None:
    load = DeploymentLoad()
    load.started(T0, 1_000)
    load.started(T0 + 1, 500)
    assert load.in_flight == 2
    assert load.requests.total(T0 + 1) == 2
    assert load.tokens.total(T0 + 1) == 1_500
    load.ended()
    assert load.in_flight == 1
    # Ending does not uncount the minute: the provider counted the request.
    assert load.requests.total(T0 + 1) == 2
    load.ended()
    load.ended()  # more ends than starts never goes negative
    assert load.in_flight == 0
    assert load.requests.total(T0 + 60) == 1
    assert load.tokens.total(T0 + 60) == 500
    assert load.remote_in_flight == 0  # only set from the other replicas


def test_observe_limits_learns_a_limit_from_a_zero_remaining() -> None:
    load = DeploymentLoad()
    load.observe_limits(T0, 10, 5_000, 6.0)
    assert (load.remaining_requests, load.remaining_tokens) == (10, 5_000)
    assert load.limited_until == 0.0  # room left: no limit, whatever the reset says
    load.observe_limits(T0, 0, 5_000, 6.0)
    assert load.limited_until == T0 + 6.0
    assert load.remaining_requests == 0
    load.observe_limits(T0 + 1, 3, 0, 2.0)  # tokens ran out: the later of the two stands
    assert load.limited_until == T0 + 6.0
    assert load.remaining_tokens == 0
    load.observe_limits(T0 + 1, 0, 0, 20.0)
    assert load.limited_until == T0 + 21.0


def test_observe_limits_without_a_reset_learns_no_limit() -> None:
    load = DeploymentLoad()
    load.observe_limits(T0, 0, 0, None)
    assert load.limited_until == 0.0
    assert (load.remaining_requests, load.remaining_tokens) == (0, 0)
    load.observe_limits(T0, None, None, 5.0)
    assert load.limited_until == 0.0
    assert (load.remaining_requests, load.remaining_tokens) == (None, None)


@pytest.mark.parametrize(
    ("retry_after", "wait"), [(None, 1.0), (0.0, 1.0), (-3.0, 1.0), (0.25, 0.25), (7.0, 7.0)]
)
def test_rate_limited_waits_for_retry_after_or_a_second(
    retry_after: float | None, wait: float
) -> None:
    load = DeploymentLoad()
    load.rate_limited(T0, retry_after)
    assert load.limited_until == T0 + wait


def test_rate_limited_never_shortens_a_known_limit() -> None:
    load = DeploymentLoad(limited_until=T0 + 30)
    load.rate_limited(T0, 2.0)
    assert load.limited_until == T0 + 30
    load.rate_limited(T0 + 29, 5.0)
    assert load.limited_until == T0 + 34


def test_observe_ttft_is_an_ewma() -> None:
    load = DeploymentLoad()
    load.observe_ttft(100.0)
    assert load.ewma_ttft_ms == 100.0  # the first sample is taken as is
    load.observe_ttft(200.0)
    assert load.ewma_ttft_ms == pytest.approx(100.0 + EWMA_ALPHA * 100.0)
    for _ in range(200):
        load.observe_ttft(50.0)
    assert load.ewma_ttft_ms == pytest.approx(50.0, abs=0.01)


def test_observe_prompt_calibrates_bytes_per_token() -> None:
    load = DeploymentLoad()
    load.observe_prompt(63, 10)  # too short to tell
    load.observe_prompt(4_000, 0)  # no count
    load.observe_prompt(4_000, -5)
    assert load.bytes_per_token is None
    load.observe_prompt(64, 32)
    assert load.bytes_per_token == 2.0
    load.observe_prompt(4_000, 1_000)
    assert load.bytes_per_token == pytest.approx(2.0 + EWMA_ALPHA * (4.0 - 2.0))


def test_route_stats_output_ewma() -> None:
    stats = RouteStats()
    stats.observe_output(0)
    stats.observe_output(-1)
    assert stats.ewma_output_tokens is None
    stats.observe_output(300)
    assert stats.ewma_output_tokens == 300
    stats.observe_output(100)
    assert stats.ewma_output_tokens == pytest.approx(280.0)
    stats.observe_output(0)  # a failed or empty answer says nothing
    assert stats.ewma_output_tokens == pytest.approx(280.0)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-mini", "openai"),
        ("GPT-4.1", "openai"),
        ("o1-preview", "openai"),
        ("o3-mini", "openai"),
        ("o4-mini", "openai"),
        ("chatgpt-4o-latest", "openai"),
        ("text-embedding-3-small", "openai"),
        ("claude-3-5-sonnet-20241022", "claude"),
        ("anthropic.claude-3-haiku-20240307-v1:0", "claude"),
        ("gemini-1.5-pro", "gemini"),
        ("vertex_ai/gemini-2.0-flash", "gemini"),
        ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "llama"),
        ("deepseek-ai/DeepSeek-V3", "default"),
        ("mistral-large", "default"),
        ("", "default"),
    ],
)
def test_family_of(model: str, family: str) -> None:
    assert family_of(model) == family
    assert family in BYTES_PER_TOKEN


# -- the reset durations of x-ratelimit-reset-* -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3_723.5),
        ("0.5s", 0.5),
        ("2m", 120.0),
        ("1h", 3_600.0),
        ("1m500ms", 60.5),
        ("17", 17.0),  # a bare number is seconds
        ("2.5", 2.5),
        ("0s", 0.0),
    ],
)
def test_duration_formats(value: str, seconds: float) -> None:
    assert _duration_s(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "abc", "s", "ms", "5x", "-1s", "1 s", "1d"])
def test_duration_rejects_what_it_cannot_read(value: str | None) -> None:
    assert _duration_s(value) is None


@pytest.mark.parametrize("value", ["1..2s", "1.2.3", "\u00b2s"])
def test_duration_never_raises_on_a_malformed_number(value: str) -> None:
    assert _duration_s(value) is None


def test_live_routing_learns_limits_from_headers() -> None:
    now = [T0]
    dep = DeploymentSpec("a", "p", "serverless", "openai", "gpt-a")
    rt = RouteSpec("r", "cost", ("a",), Timeouts(1_000, 1_000, 1_000))
    routing = LiveRouting({"a": dep}, {"r": rt}, None, lambda: {}, lambda: now[0])
    routing.observe_limits(
        "a",
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-remaining-tokens": "90000",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-reset-tokens": "1s",
        },
    )
    load = routing.loads["a"]
    assert (load.remaining_requests, load.remaining_tokens) == (0, 90_000)
    assert load.limited_until == T0 + 360.0
    now[0] = T0 + 1
    routing.observe_limits(
        "a",
        {
            "x-ratelimit-remaining-requests": "5",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "400s",
        },
    )
    assert load.limited_until == T0 + 401.0
    routing.observe_limits("a", {"x-ratelimit-remaining-requests": "junk"})
    assert load.remaining_requests is None
    routing.observe_limits("unknown", {"x-ratelimit-remaining-requests": "0"})  # ignored
    assert routing.view("r").rates == {"a": None}  # no price book: every price unknown


def test_calibration_is_clamped_to_real_vocabularies() -> None:
    load = DeploymentLoad()
    load.observe_prompt(200, 1_000)  # a provider counting something we did not send
    assert load.bytes_per_token == 1.0
    fresh = DeploymentLoad()
    fresh.observe_prompt(80_000, 1_000)
    assert fresh.bytes_per_token == 8.0
