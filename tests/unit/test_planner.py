"""The balancing planner: eligibility filters, strategy ordering, prompt-cache affinity,
expected-cost arithmetic, fallbacks, and prices that change on their effective date."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.core.live_routing import LiveRouting
from gateway.ledger.pricing import LitellmPriceMap, PriceBook, parse_prices
from routing.live import DeploymentLoad, RouteStats
from routing.model import (
    DeploymentSpec,
    Requirements,
    RetryPolicy,
    RouteSpec,
    Timeouts,
)
from routing.planner import (
    DEFAULT_OUTPUT_TOKENS,
    MIN_CACHEABLE_TOKENS,
    Candidate,
    Decision,
    LiveView,
    Rates,
    decide,
    expected_cost,
    input_tokens,
)
from routing.shape import PER_IMAGE, PER_MESSAGE, RequestShape

NOW = 1_000_000.0
TIMEOUTS = Timeouts(connect_ms=1_000, ttft_ms=5_000, total_ms=30_000)


def dep(
    dep_id: str,
    kind: str = "serverless",
    model: str | None = None,
    **kw: object,
) -> DeploymentSpec:
    # "gpt-" models are the openai family: 4 bytes per token, which keeps arithmetic simple.
    return DeploymentSpec(
        dep_id,
        "prov",
        kind,
        "openai",
        model or f"gpt-{dep_id}",
        **kw,  # type: ignore[arg-type]
    )


def deps(*specs: DeploymentSpec) -> dict[str, DeploymentSpec]:
    return {d.id: d for d in specs}


def route(
    strategy: str,
    *targets: str,
    fallbacks: Sequence[str] = (),
    weights: Sequence[float] = (),
    sticky: str | None = None,
    require: Requirements | None = None,
    affinity: bool = True,
) -> RouteSpec:
    return RouteSpec(
        name="r",
        strategy=strategy,
        targets=tuple(targets),
        timeouts=TIMEOUTS,
        fallbacks=tuple(fallbacks),
        weights=tuple(weights),
        sticky=sticky,
        require=require,
        affinity=affinity,
    )


def shape(
    text_bytes: int = 4_000,
    messages: int = 1,
    images: int = 0,
    max_out: int | None = None,
    needs: Sequence[str] = (),
    prefix_key: str | None = None,
    prefix_bytes: int = 0,
    sticky_key: str | None = None,
    request_id: str = "req-1",
) -> RequestShape:
    return RequestShape(
        request_id=request_id,
        text_bytes=text_bytes,
        messages=messages,
        images=images,
        max_output_tokens=max_out,
        needs=frozenset(needs),
        prefix_key=prefix_key,
        prefix_bytes=prefix_bytes,
        sticky_key=sticky_key,
    )


def live(
    *,
    loads: Mapping[str, DeploymentLoad] | None = None,
    rates: Mapping[str, Rates | None] | None = None,
    breaker_open: Mapping[str, bool] | None = None,
    affinity: Mapping[str, tuple[str, ...]] | None = None,
    route_stats: RouteStats | None = None,
    now: float = NOW,
) -> LiveView:
    return LiveView(
        now=now,
        loads=loads or {},
        rates=rates or {},
        breaker_open=breaker_open or {},
        affinity=affinity or {},
        route_stats=route_stats,
    )


def order(decision: Decision) -> list[str]:
    return [a.deployment.id for a in decision.plan.attempts]


def candidate(decision: Decision, dep_id: str) -> Candidate:
    return next(c for c in decision.candidates if c.deployment.id == dep_id)


def skipped(decision: Decision) -> dict[str, tuple[str | None, bool]]:
    return {c.deployment.id: (c.skipped, c.hard) for c in decision.candidates}


def busy(in_flight: int = 0, remote: int = 0, **kw: object) -> DeploymentLoad:
    load = DeploymentLoad(**kw)  # type: ignore[arg-type]
    load.in_flight, load.remote_in_flight = in_flight, remote
    return load


def ttft(ms: float | None) -> DeploymentLoad:
    return DeploymentLoad(ewma_ttft_ms=ms)


CHEAP: Rates = (1.0, 1.0, 2.0)
MID: Rates = (2.0, 2.0, 4.0)
DEAR: Rates = (5.0, 5.0, 10.0)


# -- hard skips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "require", "reason"),
    [
        (dep("x", region="us"), Requirements(regions=frozenset({"eu"})), "region us not in ['eu']"),
        (
            dep("x"),
            Requirements(regions=frozenset({"us", "eu"})),
            "region unknown not in ['eu', 'us']",
        ),
        (dep("x"), Requirements(zero_retention=True), "no zero-retention agreement"),
        (
            dep("x", kind="closed_api"),
            Requirements(kinds=frozenset({"serverless", "dedicated"})),
            "kind closed_api not allowed",
        ),
    ],
)
def test_route_requirements_are_hard_skips(
    spec: DeploymentSpec, require: Requirements, reason: str
) -> None:
    ok = dep("ok", region="eu", zero_retention=True)
    for strategy in ("cost", "weighted", "latency"):
        d = decide(
            route(strategy, "x", "ok", require=require),
            deps(spec, ok),
            shape(),
            live(rates={"x": CHEAP, "ok": DEAR}),
        )
        assert order(d) == ["ok"]
        assert skipped(d)["x"] == (reason, True)
        # Left out of the plan, but explained: after the planned ones.
        assert [c.deployment.id for c in d.candidates] == ["ok", "x"]


def test_requirements_met_are_not_skips() -> None:
    spec = dep("x", kind="serverless", region="eu", zero_retention=True)
    require = Requirements(
        regions=frozenset({"eu"}), zero_retention=True, kinds=frozenset({"serverless"})
    )
    d = decide(route("cost", "x", require=require), deps(spec), shape(), live())
    assert order(d) == ["x"]
    assert skipped(d)["x"] == (None, False)


@pytest.mark.parametrize(
    ("capabilities", "needs", "reason"),
    [
        (frozenset({"tools"}), ("vision",), "no vision support"),
        (frozenset(), ("tools",), "no tools support"),
        (frozenset({"tools"}), ("json_schema",), "no json_schema support"),
        (frozenset({"vision"}), ("audio",), "no audio support"),
        # Several missing: the first in sorted order, the same in every process.
        (frozenset(), ("vision", "tools", "audio"), "no audio support"),
        (frozenset({"audio"}), ("vision", "tools", "audio"), "no tools support"),
    ],
)
def test_missing_capability_is_a_hard_skip(
    capabilities: frozenset[str], needs: tuple[str, ...], reason: str
) -> None:
    narrow = dep("narrow", capabilities=capabilities)
    wide = dep("wide")  # undeclared: assumed capable of everything
    d = decide(
        route("cost", "narrow", "wide"),
        deps(narrow, wide),
        shape(needs=needs),
        live(rates={"narrow": CHEAP, "wide": DEAR}),
    )
    assert order(d) == ["wide"]
    assert skipped(d)["narrow"] == (reason, True)


def test_declared_capabilities_that_cover_the_request_are_fine() -> None:
    spec = dep("x", capabilities=frozenset({"tools", "vision", "json_schema", "audio"}))
    d = decide(
        route("cost", "x"),
        deps(spec),
        shape(needs=("tools", "vision", "json_schema", "audio")),
        live(),
    )
    assert order(d) == ["x"]


def test_context_window_counts_input_and_requested_output() -> None:
    # 2,000 bytes at 4 bytes/token + 3 framing = 503 input tokens; 500 output asked for.
    need = 2_000 // 4 + PER_MESSAGE + 500
    assert need == 1_003
    small = dep("small", context_window=1_002)
    exact = dep("exact", context_window=1_003)
    d = decide(
        route("cost", "small", "exact"),
        deps(small, exact),
        shape(text_bytes=2_000, max_out=500),
        live(rates={"small": CHEAP, "exact": DEAR}),
    )
    assert order(d) == ["exact"]  # need == window fits
    assert skipped(d)["small"] == ("context window 1002 < 1003 tokens", True)


def test_context_window_ignores_the_estimated_output_when_none_was_asked_for() -> None:
    # 503 input tokens; the 256 default output estimate is for cost, not for the window.
    spec = dep("x", context_window=503)
    d = decide(route("cost", "x"), deps(spec), shape(text_bytes=2_000), live())
    assert order(d) == ["x"]
    assert candidate(d, "x").output_tokens == DEFAULT_OUTPUT_TOKENS


def test_context_window_uses_calibrated_bytes_per_token_and_images() -> None:
    spec = dep("x", context_window=2_000)
    load = DeploymentLoad(bytes_per_token=2.0)
    # 2,000 bytes / 2.0 = 1,000 tokens + 3 + one image (765) = 1,768; +300 output > 2,000.
    d = decide(
        route("cost", "x", "y"),
        deps(spec, dep("y")),
        shape(text_bytes=2_000, images=1, max_out=300),
        live(loads={"x": load}),
    )
    assert skipped(d)["x"] == ("context window 2000 < 2068 tokens", True)


def test_hard_skip_wins_over_soft_skip() -> None:
    spec = dep("x", region="us")
    d = decide(
        route("cost", "x", "y", require=Requirements(regions=frozenset({"eu"}))),
        deps(spec, dep("y", region="eu")),
        shape(),
        live(breaker_open={"x": True}),
    )
    assert skipped(d)["x"] == ("region us not in ['eu']", True)
    assert order(d) == ["y"]


def test_everything_hard_skipped_is_an_empty_plan() -> None:
    d = decide(
        route("cost", "x", "y"),
        deps(dep("x", context_window=10), dep("y", context_window=10)),
        shape(),
        live(),
    )
    assert d.plan.attempts == ()
    assert d.reason == d.plan.reason == "none eligible"
    assert [c.deployment.id for c in d.candidates] == ["x", "y"]
    assert all(c.hard for c in d.candidates)


# -- soft skips ---------------------------------------------------------------------------


def test_breaker_open_is_a_soft_skip() -> None:
    d = decide(
        route("cost", "cheap", "dear"),
        deps(dep("cheap"), dep("dear")),
        shape(),
        live(rates={"cheap": CHEAP, "dear": DEAR}, breaker_open={"cheap": True, "dear": False}),
    )
    assert order(d) == ["dear", "cheap"]
    assert skipped(d)["cheap"] == ("circuit breaker open", False)
    assert skipped(d)["dear"] == (None, False)


def test_rate_limited_until_a_learned_time() -> None:
    limited = DeploymentLoad(limited_until=NOW + 2.5)
    d = decide(
        route("cost", "cheap", "dear"),
        deps(dep("cheap"), dep("dear")),
        shape(),
        live(loads={"cheap": limited}, rates={"cheap": CHEAP, "dear": DEAR}),
    )
    assert order(d) == ["dear", "cheap"]
    assert skipped(d)["cheap"] == ("rate limited for 2.5 s", False)
    # Once the time has come it is eligible again.
    d = decide(
        route("cost", "cheap", "dear"),
        deps(dep("cheap"), dep("dear")),
        shape(),
        live(loads={"cheap": limited}, rates={"cheap": CHEAP, "dear": DEAR}, now=NOW + 2.5),
    )
    assert order(d) == ["cheap", "dear"]


def test_requests_per_minute() -> None:
    load = DeploymentLoad()
    load.started(NOW - 30, 0)
    d = decide(
        route("cost", "cheap", "dear"),
        deps(dep("cheap", rpm=2), dep("dear")),
        shape(),
        live(loads={"cheap": load}, rates={"cheap": CHEAP, "dear": DEAR}),
    )
    assert order(d) == ["cheap", "dear"]  # 1 of 2 used
    load.started(NOW - 1, 0)
    d = decide(
        route("cost", "cheap", "dear"),
        deps(dep("cheap", rpm=2), dep("dear")),
        shape(),
        live(loads={"cheap": load}, rates={"cheap": CHEAP, "dear": DEAR}),
    )
    assert order(d) == ["dear", "cheap"]
    assert skipped(d)["cheap"] == ("at its 2 requests/min limit", False)
    # The first request leaves the window 60 s after it started: room again.
    d = decide(
        route("cost", "cheap", "dear"),
        deps(dep("cheap", rpm=2), dep("dear")),
        shape(),
        live(loads={"cheap": load}, rates={"cheap": CHEAP, "dear": DEAR}, now=NOW + 30),
    )
    assert order(d) == ["cheap", "dear"]


def test_tokens_per_minute_counts_this_request_too() -> None:
    # This request: 4,000 bytes → 1,003 input tokens + 200 max output = 1,203.
    load = DeploymentLoad()
    load.started(NOW - 10, 3_797)

    def plan(tpm: int) -> Decision:
        return decide(
            route("cost", "cheap", "dear"),
            deps(dep("cheap", tpm=tpm), dep("dear")),
            shape(max_out=200),
            live(loads={"cheap": load}, rates={"cheap": CHEAP, "dear": DEAR}),
        )

    assert order(plan(5_000)) == ["cheap", "dear"]  # 3,797 + 1,203 == 5,000 fits
    d = plan(4_999)
    assert order(d) == ["dear", "cheap"]
    assert skipped(d)["cheap"] == ("at its 4999 tokens/min limit", False)


def test_at_capacity_counts_other_replicas_in_flight() -> None:
    spec = dep("x", max_concurrency=4)
    for local, remote, full in [(3, 0, False), (4, 0, True), (1, 3, True), (0, 3, False)]:
        d = decide(
            route("cost", "x", "y"),
            deps(spec, dep("y")),
            shape(),
            live(loads={"x": busy(local, remote)}, rates={"x": CHEAP, "y": DEAR}),
        )
        if full:
            assert order(d) == ["y", "x"]
            assert skipped(d)["x"] == (f"at capacity ({local + remote}/4 in flight)", False)
        else:
            assert order(d) == ["x", "y"]


def test_soft_skips_go_after_the_eligible_cheapest_first() -> None:
    specs = deps(dep("a"), dep("b"), dep("c"), dep("d"), dep("e"))
    d = decide(
        route("cost", "a", "b", "c", "d", "e"),
        specs,
        shape(),
        live(
            rates={"a": CHEAP, "b": DEAR, "c": MID, "d": (9.0, 9.0, 9.0), "e": CHEAP},
            breaker_open={"a": True, "c": True},
        ),
    )
    # eligible by cost (e, b, d), then the skipped ones by cost (a, c)
    assert order(d) == ["e", "b", "d", "a", "c"]
    assert [a.role for a in d.plan.attempts] == ["primary", *["fallback"] * 4]


def test_all_soft_skipped_still_tries_the_busy_ones() -> None:
    for strategy in ("cost", "weighted", "latency"):
        d = decide(
            route(strategy, "a", "b"),
            deps(dep("a"), dep("b")),
            shape(),
            live(rates={"a": DEAR, "b": CHEAP}, breaker_open={"a": True, "b": True}),
        )
        assert order(d) == ["b", "a"]
        assert d.reason == "no eligible deployment: trying the busy ones"
        assert d.plan.attempts[0].role == "primary"


# -- cost ---------------------------------------------------------------------------------


def test_cost_orders_cheapest_first() -> None:
    d = decide(
        route("cost", "dear", "mid", "cheap"),
        deps(dep("dear"), dep("mid"), dep("cheap")),
        shape(),
        live(rates={"dear": DEAR, "mid": MID, "cheap": CHEAP}),
    )
    assert order(d) == ["cheap", "mid", "dear"]
    assert d.reason == "cheapest eligible"
    costs = [c.expected_cost_usd for c in d.candidates]
    assert costs == sorted(costs)


def test_unknown_price_goes_last() -> None:
    d = decide(
        route("cost", "unpriced", "none", "dear"),
        deps(dep("unpriced"), dep("none"), dep("dear")),
        shape(),
        live(rates={"none": None, "dear": DEAR}),
    )
    assert order(d) == ["dear", "unpriced", "none"]
    assert math.isinf(candidate(d, "unpriced").expected_cost_usd)
    d = decide(
        route("cost", "unpriced", "none"),
        deps(dep("unpriced"), dep("none")),
        shape(),
        live(rates={"none": None}),
    )
    assert order(d) == ["unpriced", "none"]  # configured order among the unknown
    assert d.reason == "no price known for any eligible deployment"


def test_cost_ties_dedicated_first_then_configured_order() -> None:
    free: Rates = (0.0, 0.0, 0.0)
    d = decide(
        route("cost", "s1", "s2", "gpu"),
        deps(dep("s1"), dep("s2"), dep("gpu", kind="dedicated")),
        shape(),
        live(rates={"s1": free, "s2": free}),
    )
    assert order(d) == ["gpu", "s1", "s2"]
    assert d.reason == "dedicated capacity free"
    d = decide(
        route("cost", "s2", "s1"),
        deps(dep("s1"), dep("s2")),
        shape(),
        live(rates={"s1": MID, "s2": MID}),
    )
    assert order(d) == ["s2", "s1"]


def test_dedicated_is_free_while_it_has_room_then_overflows() -> None:
    gpu = dep("gpu", kind="dedicated", max_concurrency=4)
    specs = deps(dep("dear"), gpu, dep("cheap"))
    rates = {"dear": DEAR, "cheap": CHEAP, "gpu": DEAR}  # a token price is ignored
    d = decide(
        route("cost", "dear", "gpu", "cheap"),
        specs,
        shape(),
        live(loads={"gpu": busy(1, 2)}, rates=rates),
    )
    assert order(d) == ["gpu", "cheap", "dear"]
    assert d.reason == "dedicated capacity free"
    gpu_c = candidate(d, "gpu")
    assert gpu_c.expected_cost_usd == 0.0
    assert gpu_c.note == "dedicated, 3/4 in flight"
    # Full (counting the other replicas): next cheapest first, the GPU as a last resort.
    d = decide(
        route("cost", "dear", "gpu", "cheap"),
        specs,
        shape(),
        live(loads={"gpu": busy(2, 2)}, rates=rates),
    )
    assert order(d) == ["cheap", "dear", "gpu"]
    assert d.reason == "cheapest eligible"
    assert skipped(d)["gpu"] == ("at capacity (4/4 in flight)", False)
    assert candidate(d, "gpu").note == "dedicated, 4/4 in flight"


def test_dedicated_without_a_concurrency_limit_is_always_free() -> None:
    d = decide(
        route("cost", "cheap", "gpu"),
        deps(dep("cheap"), dep("gpu", kind="dedicated")),
        shape(),
        live(loads={"gpu": busy(500)}, rates={"cheap": CHEAP}),
    )
    assert order(d) == ["gpu", "cheap"]
    assert candidate(d, "gpu").note == ""


def test_expected_cost_by_hand() -> None:
    # gpt family: 4 bytes/token. 8,000 bytes / 4 + 2 messages × 3 = 2,006 input tokens.
    a = dep("a")
    d = decide(
        route("cost", "a"),
        deps(a),
        shape(text_bytes=8_000, messages=2, max_out=100),
        live(rates={"a": (2.0, 1.0, 8.0)}),
    )
    c = candidate(d, "a")
    assert (c.input_tokens, c.cached_tokens, c.output_tokens) == (2_006, 0, 100)
    assert c.expected_cost_usd == pytest.approx((2_006 * 2.0 + 100 * 8.0) / 1e6)
    assert c.expected_cost_usd == pytest.approx(0.004812)
    assert c.cost_without_cache_usd == c.expected_cost_usd


def test_expected_cost_claude_family_with_an_image_and_default_output() -> None:
    # claude: 3.6 bytes/token. 3,600 bytes → 1,000 + 3 framing + 765 image = 1,768.
    spec = dep("c", model="claude-3-5-sonnet")
    d = decide(
        route("cost", "c"),
        deps(spec),
        shape(text_bytes=3_600, images=1),
        live(rates={"c": (3.0, 0.3, 15.0)}),
    )
    c = candidate(d, "c")
    assert c.input_tokens == 1_000 + PER_MESSAGE + PER_IMAGE == 1_768
    assert c.output_tokens == DEFAULT_OUTPUT_TOKENS == 256
    assert c.expected_cost_usd == pytest.approx((1_768 * 3.0 + 256 * 15.0) / 1e6)
    assert c.expected_cost_usd == pytest.approx(0.009144)


def test_expected_cost_with_calibration_and_route_history() -> None:
    # Calibrated 2 bytes/token: 1,001 bytes → ceil(500.5) = 501 + 3. Output: EWMA 99.6 → 100.
    spec = dep("m", model="some-model")
    d = decide(
        route("cost", "m"),
        deps(spec),
        shape(text_bytes=1_001),
        live(
            loads={"m": DeploymentLoad(bytes_per_token=2.0)},
            rates={"m": (1.0, 1.0, 3.0)},
            route_stats=RouteStats(ewma_output_tokens=99.6),
        ),
    )
    c = candidate(d, "m")
    assert (c.input_tokens, c.output_tokens) == (504, 100)
    assert c.expected_cost_usd == pytest.approx((504 + 300) / 1e6)


def test_output_estimate_precedence() -> None:
    stats = RouteStats(ewma_output_tokens=321.4)
    a = deps(dep("a"))

    def output(s: RequestShape, stats: RouteStats | None) -> int:
        return decide(route("cost", "a"), a, s, live(route_stats=stats)).candidates[0].output_tokens

    assert output(shape(max_out=50), stats) == 50  # the request's max tokens
    assert output(shape(), stats) == 321  # else the route's recent mean
    assert output(shape(), RouteStats()) == DEFAULT_OUTPUT_TOKENS  # no history yet
    assert output(shape(), None) == DEFAULT_OUTPUT_TOKENS


def test_expected_cost_and_input_tokens_helpers() -> None:
    assert expected_cost(None, 100, 0, 10, free=True) == 0.0
    assert math.isinf(expected_cost(None, 100, 0, 10, free=False))
    assert expected_cost((1.0, 0.5, 2.0), 1_000, 2_000, 500, free=False) == pytest.approx(
        (1_000 + 1_000 + 1_000) / 1e6
    )
    s = shape(text_bytes=401, messages=4, images=2)
    assert input_tokens(s, dep("a"), DeploymentLoad()) == 101 + 12 + 2 * PER_IMAGE
    assert input_tokens(s, dep("l", model="Llama-3.3-70B"), DeploymentLoad()) == (
        math.ceil(401 / 3.8) + 12 + 2 * PER_IMAGE
    )


# -- prompt-cache affinity, cost strategy -----------------------------------------------------

# A holds the prefix and discounts cached input tenfold; B is cheaper at list price.
CACHING: Rates = (3.0, 0.3, 10.0)
FLAT: Rates = (2.0, 2.0, 10.0)
KEY = "p:deadbeef:8000"


def cached_shape(prefix_bytes: int = 8_000, text_bytes: int = 10_000) -> RequestShape:
    return shape(
        text_bytes=text_bytes, messages=2, max_out=50, prefix_key=KEY, prefix_bytes=prefix_bytes
    )


def test_cost_cache_share_is_priced_at_the_cached_rate() -> None:
    d = decide(
        route("cost", "b", "a"),
        deps(dep("a"), dep("b")),
        cached_shape(),
        live(rates={"a": CACHING, "b": FLAT}, affinity={KEY: ("a",)}),
    )
    # 10,000 bytes → 2,500 + 6 = 2,506 tokens, 2,000 of them the cached 8,000-byte prefix.
    a = candidate(d, "a")
    assert (a.input_tokens, a.cached_tokens) == (2_506, 2_000)
    assert a.expected_cost_usd == pytest.approx((506 * 3.0 + 2_000 * 0.3 + 50 * 10.0) / 1e6)
    assert a.cost_without_cache_usd == pytest.approx((2_506 * 3.0 + 50 * 10.0) / 1e6)
    assert a.note == "~2000 prefix tokens cached here"
    b = candidate(d, "b")
    assert b.cached_tokens == 0
    assert b.expected_cost_usd == pytest.approx((2_506 * 2.0 + 50 * 10.0) / 1e6)
    assert order(d) == ["a", "b"]
    assert d.reason == "prompt-cache affinity"


def test_cost_affinity_reason_only_when_the_cache_made_the_difference() -> None:
    # A is the cheapest even at list price: the cache did not decide it.
    d = decide(
        route("cost", "b", "a"),
        deps(dep("a"), dep("b")),
        cached_shape(),
        live(rates={"a": (1.0, 0.1, 10.0), "b": FLAT}, affinity={KEY: ("a",)}),
    )
    assert order(d) == ["a", "b"]
    assert candidate(d, "a").cached_tokens == 2_000
    assert d.reason == "cheapest eligible"
    # Alone on the route: nothing to compare with.
    d = decide(
        route("cost", "a"),
        deps(dep("a")),
        cached_shape(),
        live(rates={"a": CACHING}, affinity={KEY: ("a",)}),
    )
    assert d.reason == "cheapest eligible"


def test_cost_affinity_needs_a_cacheable_prefix() -> None:
    specs = deps(dep("a"), dep("b"))
    rates = {"a": CACHING, "b": FLAT}
    # 4,092 bytes = 1,023 tokens: below the providers' minimum, nothing cached.
    below = decide(
        route("cost", "b", "a"),
        specs,
        cached_shape(prefix_bytes=4_092),
        live(rates=rates, affinity={KEY: ("a",)}),
    )
    assert candidate(below, "a").cached_tokens == 0
    assert order(below) == ["b", "a"]
    assert below.reason == "cheapest eligible"
    at = decide(
        route("cost", "b", "a"),
        specs,
        cached_shape(prefix_bytes=4_096),
        live(rates=rates, affinity={KEY: ("a",)}),
    )
    assert candidate(at, "a").cached_tokens == MIN_CACHEABLE_TOKENS


def test_cost_affinity_uses_calibrated_bytes_per_token_and_caps_at_the_input() -> None:
    d = decide(
        route("cost", "a"),
        deps(dep("a")),
        cached_shape(),
        live(loads={"a": DeploymentLoad(bytes_per_token=2.0)}, affinity={KEY: ("a",)}),
    )
    assert candidate(d, "a").cached_tokens == 4_000
    d = decide(
        route("cost", "a"),
        deps(dep("a")),
        cached_shape(prefix_bytes=20_000),  # more than the text: capped at the input tokens
        live(affinity={KEY: ("a",)}),
    )
    c = candidate(d, "a")
    assert c.cached_tokens == c.input_tokens == 2_506


def test_cost_affinity_off_or_elsewhere_changes_nothing() -> None:
    specs = deps(dep("a"), dep("b"))
    rates = {"a": CACHING, "b": FLAT}
    off = decide(
        route("cost", "b", "a", affinity=False),
        specs,
        cached_shape(),
        live(rates=rates, affinity={KEY: ("a",)}),
    )
    assert candidate(off, "a").cached_tokens == 0
    assert order(off) == ["b", "a"]
    other_key = decide(
        route("cost", "b", "a"),
        specs,
        cached_shape(),
        live(rates=rates, affinity={"p:other": ("a",)}),
    )
    assert order(other_key) == ["b", "a"]
    no_key = decide(
        route("cost", "b", "a"),
        specs,
        shape(text_bytes=10_000, prefix_bytes=8_000),
        live(rates=rates, affinity={KEY: ("a",)}),
    )
    assert order(no_key) == ["b", "a"]


# -- weighted -------------------------------------------------------------------------------


def first_shares(
    rt: RouteSpec, specs: Mapping[str, DeploymentSpec], n: int, view: LiveView | None = None
) -> dict[str, float]:
    counts = Counter(
        order(decide(rt, specs, shape(request_id=f"req-{i}"), view or live()))[0] for i in range(n)
    )
    return {k: counts[k] / n for k in rt.targets}


@pytest.mark.parametrize(
    ("ids", "weights"),
    [
        (("a@x", "b@x"), (3.0, 1.0)),
        (("a", "b", "c"), (1.0, 2.0, 7.0)),
        (("alpha@p", "beta@q", "gamma@r", "delta@s"), (1.0, 1.0, 1.0, 1.0)),
        (("big@sim", "small@sim"), (0.9, 0.1)),
    ],
)
def test_weighted_shares_follow_the_weights(
    ids: tuple[str, ...], weights: tuple[float, ...]
) -> None:
    rt = route("weighted", *ids, weights=weights)
    shares = first_shares(rt, deps(*(dep(i) for i in ids)), 10_000)
    total = sum(weights)
    for dep_id, weight in zip(ids, weights, strict=True):
        assert shares[dep_id] == pytest.approx(weight / total, abs=0.02), shares


def test_weighted_without_weights_is_even() -> None:
    rt = route("weighted", "a", "b")
    shares = first_shares(rt, deps(dep("a"), dep("b")), 4_000)
    assert shares["a"] == pytest.approx(0.5, abs=0.03)


def test_weighted_plan_is_a_full_order_with_a_reason() -> None:
    rt = route("weighted", "a", "b", "c", weights=(1, 1, 1))
    d = decide(rt, deps(dep("a"), dep("b"), dep("c")), shape(), live())
    assert sorted(order(d)) == ["a", "b", "c"]
    assert d.reason == "weighted (by request id)"
    assert [a.role for a in d.plan.attempts] == ["primary", "fallback", "fallback"]


def test_weighted_sticky_key_keeps_a_client_on_one_target() -> None:
    rt = route("weighted", "a", "b", "c", weights=(1, 1, 1), sticky="user")
    specs = deps(dep("a"), dep("b"), dep("c"))
    for user in ("alice", "bob", "carol", "dave"):
        plans = {
            tuple(order(decide(rt, specs, shape(sticky_key=user, request_id=f"r{i}"), live())))
            for i in range(50)
        }
        assert len(plans) == 1
    d = decide(rt, specs, shape(sticky_key="alice"), live())
    assert d.reason == "weighted (sticky user)"
    # And different clients do spread out.
    firsts = {order(decide(rt, specs, shape(sticky_key=f"u{i}"), live()))[0] for i in range(60)}
    assert firsts == {"a", "b", "c"}


@pytest.mark.parametrize("drop", ["soft", "hard"])
def test_weighted_dropping_a_target_moves_only_its_share(drop: str) -> None:
    rt = route("weighted", "a", "b", "c", weights=(1.0, 1.0, 2.0), sticky="user")
    specs = deps(dep("a"), dep("b"), dep("c"))
    if drop == "hard":
        gone = deps(dep("a"), dep("b", context_window=1), dep("c"))
        after_view = live()
    else:
        gone, after_view = specs, live(breaker_open={"b": True})
    moved = Counter[str]()
    n = 3_000
    for i in range(n):
        s = shape(sticky_key=f"user-{i}")
        before = order(decide(rt, specs, s, live()))
        after = order(decide(rt, gone, s, after_view))
        # The remaining targets keep their relative order for every key.
        assert [t for t in after if t != "b"] == [t for t in before if t != "b"]
        if before[0] != "b":
            assert after[0] == before[0]
        else:
            moved[after[0]] += 1
    # b's quarter went to a and c in proportion to their weights (1:2).
    assert sum(moved.values()) / n == pytest.approx(0.25, abs=0.03)
    assert moved["c"] / sum(moved.values()) == pytest.approx(2 / 3, abs=0.06)


# -- latency --------------------------------------------------------------------------------


def test_latency_two_targets_faster_first() -> None:
    rt = route("latency", "slow", "fast")
    specs = deps(dep("slow"), dep("fast"))
    for i in range(20):
        d = decide(
            rt,
            specs,
            shape(request_id=f"r{i}"),
            live(loads={"slow": ttft(300.0), "fast": ttft(100.0)}),
        )
        assert order(d) == ["fast", "slow"]
        assert d.reason == "lower EWMA time to first token"


def test_latency_explores_unmeasured_deployments() -> None:
    rt = route("latency", "known", "new")
    d = decide(rt, deps(dep("known"), dep("new")), shape(), live(loads={"known": ttft(50.0)}))
    assert order(d) == ["new", "known"]


def test_latency_power_of_two_choices_spreads_load() -> None:
    rt = route("latency", "fast", "mid", "slow")
    specs = deps(dep("fast"), dep("mid"), dep("slow"))
    view = live(loads={"fast": ttft(100.0), "mid": ttft(200.0), "slow": ttft(400.0)})
    firsts = Counter[str]()
    n = 3_000
    explored = 0
    for i in range(n):
        d = decide(rt, specs, shape(request_id=f"req-{i}"), view)
        if d.reason == "latency (exploring)":
            explored += 1  # one in EXPLORE_EVERY re-measures a random deployment
            continue
        plan = order(d)
        firsts[plan[0]] += 1
        # The rest stay sorted by time to first token.
        rest = plan[1:]
        assert rest == sorted(rest, key=["fast", "mid", "slow"].index)
    assert explored / n == pytest.approx(1 / 50, abs=0.01)
    # The winner of two picks: the slowest never wins; the fastest whenever it is drawn.
    measured = n - explored
    assert firsts["slow"] == 0
    assert firsts["fast"] / measured == pytest.approx(2 / 3, abs=0.05)
    assert firsts["mid"] / measured == pytest.approx(1 / 3, abs=0.05)


def test_latency_unmeasured_wins_whenever_drawn() -> None:
    rt = route("latency", "a", "b", "new")
    specs = deps(dep("a"), dep("b"), dep("new"))
    view = live(loads={"a": ttft(100.0), "b": ttft(200.0)})
    decisions = [decide(rt, specs, shape(request_id=f"q{i}"), view) for i in range(3_000)]
    firsts = Counter(order(d)[0] for d in decisions if d.reason != "latency (exploring)")
    assert firsts["b"] == 0
    assert firsts["new"] / firsts.total() == pytest.approx(2 / 3, abs=0.05)


def test_latency_ignores_ineligible_deployments() -> None:
    rt = route("latency", "fast", "mid", "slow")
    specs = deps(dep("fast"), dep("mid"), dep("slow"))
    view = live(
        loads={"fast": ttft(100.0), "mid": ttft(200.0), "slow": ttft(400.0)},
        breaker_open={"fast": True},
    )
    for i in range(50):
        assert order(decide(rt, specs, shape(request_id=f"r{i}"), view)) == ["mid", "slow", "fast"]


# -- prompt-cache affinity, weighted and latency ----------------------------------------------


def affinity_case(
    strategy: str, rates: Mapping[str, Rates | None], **kw: object
) -> tuple[Decision, Decision]:
    """(without affinity, with the prefix held by whichever target is not first)."""
    rt = route(strategy, "a", "b", **kw)  # type: ignore[arg-type]
    specs = deps(dep("a"), dep("b"))
    loads = {"a": ttft(100.0), "b": ttft(300.0)}
    s = cached_shape()
    base = decide(rt, specs, s, live(loads=loads, rates=rates))
    holder = order(base)[1]
    with_cache = decide(rt, specs, s, live(loads=loads, rates=rates, affinity={KEY: (holder,)}))
    return base, with_cache


@pytest.mark.parametrize("strategy", ["latency"])
def test_affinity_moves_the_holder_first(strategy: str) -> None:
    base, d = affinity_case(strategy, {"a": CACHING, "b": CACHING})
    assert order(d) == order(base)[::-1]
    assert d.reason == "prompt-cache affinity"
    assert d.plan.reason == "prompt-cache affinity"


@pytest.mark.parametrize("strategy", ["latency"])
def test_affinity_moves_the_holder_when_prices_are_unknown(strategy: str) -> None:
    base, d = affinity_case(strategy, {})
    assert order(d) == order(base)[::-1]


@pytest.mark.parametrize("strategy", ["weighted", "latency"])
def test_affinity_does_not_move_a_holder_that_costs_more(strategy: str) -> None:
    # Even with its cached share, a deployment at ten times the price costs more.
    base = decide(
        route(strategy, "a", "b"),
        deps(dep("a"), dep("b")),
        cached_shape(),
        live(loads={"a": ttft(100.0), "b": ttft(300.0)}),
    )
    first, second = order(base)
    rates = {first: FLAT, second: (30.0, 3.0, 100.0)}
    d = decide(
        route(strategy, "a", "b"),
        deps(dep("a"), dep("b")),
        cached_shape(),
        live(loads={"a": ttft(100.0), "b": ttft(300.0)}, rates=rates, affinity={KEY: (second,)}),
    )
    assert candidate(d, second).cached_tokens == 2_000
    assert order(d) == [first, second]
    assert d.reason != "prompt-cache affinity"


@pytest.mark.parametrize("strategy", ["weighted", "latency"])
def test_affinity_off_for_the_route(strategy: str) -> None:
    base, d = affinity_case(strategy, {"a": CACHING, "b": CACHING}, affinity=False)
    assert order(d) == order(base)
    assert d.reason == base.reason


def test_weighted_sticky_disables_affinity() -> None:
    rt = route("weighted", "a", "b", sticky="user")
    specs = deps(dep("a"), dep("b"))
    s = dataclasses.replace(cached_shape(), sticky_key="alice")
    base = decide(rt, specs, s, live())
    d = decide(rt, specs, s, live(affinity={KEY: (order(base)[1],)}))
    assert order(d) == order(base)
    assert d.reason == "weighted (sticky user)"


def test_weighted_sticky_without_a_key_falls_back_to_the_prompt_prefix() -> None:
    # sticky configured but the client sent no user: a long shared prefix keys the choice.
    base, d = affinity_case("weighted", {}, sticky="user")
    assert base.reason == d.reason == "weighted (by prompt prefix)"
    assert order(base) == order(d)


def test_weighted_keys_on_a_long_prompt_prefix() -> None:
    """Each prefix stays on one deployment (where it is cached); different prefixes still
    split by weight; short prefixes and affinity off go by request id."""
    rt = route("weighted", "a", "b", weights=(3.0, 1.0))
    specs = deps(dep("a"), dep("b"))
    firsts = {
        order(
            decide(
                rt, specs, shape(prefix_key="p:x", prefix_bytes=8_000, request_id=f"r{i}"), live()
            )
        )[0]
        for i in range(200)
    }
    assert len(firsts) == 1
    by_prefix = Counter(
        order(decide(rt, specs, shape(prefix_key=f"p:{i}", prefix_bytes=8_000), live()))[0]
        for i in range(4_000)
    )
    assert by_prefix["a"] / 4_000 == pytest.approx(0.75, abs=0.03)
    short = decide(rt, specs, shape(prefix_key="p:x", prefix_bytes=100), live())
    assert short.reason == "weighted (by request id)"
    off = route("weighted", "a", "b", affinity=False)
    assert decide(off, specs, cached_shape(), live()).reason == "weighted (by request id)"


@pytest.mark.parametrize("strategy", ["weighted", "latency"])
def test_affinity_below_the_cacheable_minimum_does_nothing(strategy: str) -> None:
    rt = route(strategy, "a", "b")
    specs = deps(dep("a"), dep("b"))
    loads = {"a": ttft(100.0), "b": ttft(300.0)}
    s = cached_shape(prefix_bytes=1_000)
    base = decide(rt, specs, s, live(loads=loads))
    d = decide(rt, specs, s, live(loads=loads, affinity={KEY: (order(base)[1],)}))
    assert order(d) == order(base)


def test_affinity_never_puts_a_skipped_holder_first() -> None:
    base, _ = affinity_case("latency", {})
    holder = order(base)[1]
    d = decide(
        route("latency", "a", "b"),
        deps(dep("a"), dep("b")),
        cached_shape(),
        live(
            loads={"a": ttft(100.0), "b": ttft(300.0)},
            affinity={KEY: (holder,)},
            breaker_open={holder: True},
        ),
    )
    assert order(d) == order(base)
    assert skipped(d)[holder] == ("circuit breaker open", False)


def test_cost_every_recent_holder_gets_its_cached_share() -> None:
    d = decide(
        route("cost", "a", "b", "c"),
        deps(dep("a"), dep("b"), dep("c")),
        cached_shape(),
        live(rates={"a": FLAT, "b": CACHING, "c": CACHING}, affinity={KEY: ("c", "b")}),
    )
    assert [candidate(d, x).cached_tokens for x in "abc"] == [0, 2_000, 2_000]
    assert order(d) == ["b", "c", "a"]  # b and c tie: configured order
    assert d.reason == "prompt-cache affinity"


@pytest.mark.parametrize("strategy", ["latency"])
def test_of_several_holders_the_strategys_preferred_one_goes_first(strategy: str) -> None:
    rt = route(strategy, "a", "b", "c")
    specs = deps(dep("a"), dep("b"), dep("c"))
    loads = {"a": ttft(100.0), "b": ttft(200.0), "c": ttft(300.0)}
    s = cached_shape()
    base = order(decide(rt, specs, s, live(loads=loads)))
    # The most recent holder is the strategy's last choice; the other holder its second.
    d = decide(rt, specs, s, live(loads=loads, affinity={KEY: (base[2], base[1])}))
    assert order(d) == [base[1], base[0], base[2]]
    assert d.reason == "prompt-cache affinity"


# -- fallbacks and the plan -----------------------------------------------------------------


def test_fallbacks_follow_the_targets_as_fallbacks() -> None:
    rt = RouteSpec(
        name="chat",
        strategy="cost",
        targets=("dear", "cheap"),
        timeouts=TIMEOUTS,
        workload="tests",
        fallbacks=("fb1", "fb2"),
        retry=RetryPolicy(attempts=3),
        hedge_after_ms=250,
    )
    specs = deps(dep("dear"), dep("cheap"), dep("fb1"), dep("fb2"))
    # Fallbacks keep their configured order, whatever they cost.
    d = decide(
        rt,
        specs,
        shape(),
        live(rates={"dear": DEAR, "cheap": CHEAP, "fb1": DEAR, "fb2": (0.0, 0.0, 0.0)}),
    )
    assert [(a.deployment.id, a.role) for a in d.plan.attempts] == [
        ("cheap", "primary"),
        ("dear", "fallback"),
        ("fb1", "fallback"),
        ("fb2", "fallback"),
    ]
    plan = d.plan
    assert (plan.route, plan.strategy, plan.workload) == ("chat", "cost", "tests")
    assert (plan.timeouts, plan.retry, plan.hedge_after_ms) == (
        TIMEOUTS,
        RetryPolicy(attempts=3),
        250,
    )
    assert plan.reason == d.reason == "cheapest eligible"
    assert [c.deployment.id for c in d.candidates] == ["cheap", "dear", "fb1", "fb2"]


def test_fallbacks_are_hard_filtered_by_require_and_kept_when_busy() -> None:
    rt = route(
        "cost",
        "a",
        fallbacks=("us-fb", "eu-fb", "eu-busy"),
        require=Requirements(regions=frozenset({"eu"})),
    )
    specs = deps(
        dep("a", region="eu"),
        dep("us-fb", region="us"),
        dep("eu-fb", region="eu"),
        dep("eu-busy", region="eu"),
    )
    d = decide(rt, specs, shape(), live(breaker_open={"eu-busy": True}))
    assert order(d) == ["a", "eu-fb", "eu-busy"]
    assert skipped(d)["us-fb"] == ("region us not in ['eu']", True)
    assert skipped(d)["eu-busy"] == ("circuit breaker open", False)
    assert [c.deployment.id for c in d.candidates] == ["a", "eu-fb", "eu-busy", "us-fb"]


def test_fallbacks_come_after_soft_skipped_targets() -> None:
    rt = route("cost", "a", "b", fallbacks=("fb",))
    d = decide(
        rt,
        deps(dep("a"), dep("b"), dep("fb")),
        shape(),
        live(rates={"a": CHEAP, "b": DEAR, "fb": (0.0, 0.0, 0.0)}, breaker_open={"a": True}),
    )
    assert order(d) == ["b", "a", "fb"]


def test_only_fallbacks_left() -> None:
    rt = route("cost", "a", fallbacks=("fb",))
    d = decide(rt, deps(dep("a", context_window=5), dep("fb")), shape(), live())
    assert [(a.deployment.id, a.role) for a in d.plan.attempts] == [("fb", "primary")]
    assert [c.deployment.id for c in d.candidates] == ["fb", "a"]


# -- prices by effective date, through LiveRouting ---------------------------------------------

PRICES = """\
models:
  gpt-a:
    - {effective_from: 2026-01-01, input: 1.0, output: 2.0}
    - {effective_from: 2026-03-01, input: 4.0, output: 8.0}
  gpt-b:
    - {effective_from: 2025-06-01, input: 2.0, output: 4.0}
  gpt-caching:
    - {effective_from: 2025-01-01, input: 3.0, output: 10.0, cached_input: 0.3}
  gpt-flat:
    - {effective_from: 2025-01-01, input: 2.0, output: 10.0}
"""


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def price_book(tmp_path: Path) -> PriceBook:
    empty = tmp_path / "litellm.json"
    empty.write_text("{}")  # every price here comes from prices.yaml
    return PriceBook(table=parse_prices(PRICES, "prices.yaml"), litellm=LitellmPriceMap(empty))


def live_routing(
    tmp_path: Path, clock: Clock, *specs: DeploymentSpec, rt: RouteSpec
) -> LiveRouting:
    return LiveRouting(deps(*specs), {rt.name: rt}, price_book(tmp_path), lambda: {}, clock)


def test_cost_order_flips_on_the_day_a_new_price_takes_effect(tmp_path: Path) -> None:
    rt = route("cost", "b", "a")
    specs = (dep("a", model="gpt-a"), dep("b", model="gpt-b"))
    clock = Clock(at(2026, 2, 28, 23, 59, 59))
    routing = live_routing(tmp_path, clock, *specs, rt=rt)
    payload = {"messages": [{"role": "user", "content": "x" * 4_000}], "max_tokens": 100}

    before, _ = routing.decide(rt, payload, "req-1", lambda name: None)
    assert routing.view("r").rates["a"] == (1.0, 1.0, 2.0)  # cached input defaults to input
    assert order(before) == ["a", "b"]
    assert candidate(before, "a").expected_cost_usd == pytest.approx((1_003 + 200) / 1e6)

    clock.now = at(2026, 3, 1)  # midnight UTC: the new price applies
    after, _ = routing.decide(rt, payload, "req-2", lambda name: None)
    assert routing.view("r").rates["a"] == (4.0, 4.0, 8.0)
    assert order(after) == ["b", "a"]
    assert candidate(after, "a").expected_cost_usd == pytest.approx((4 * 1_003 + 800) / 1e6)
    assert candidate(after, "b").expected_cost_usd == pytest.approx((2 * 1_003 + 400) / 1e6)


def test_rates_before_any_dated_entry_are_unknown(tmp_path: Path) -> None:
    rt = route("cost", "a", "b")
    clock = Clock(at(2025, 12, 31, 12))
    routing = live_routing(tmp_path, clock, dep("a", model="gpt-a"), dep("b", model="gpt-b"), rt=rt)
    view = routing.view("r")
    assert view.rates["a"] is None
    d = decide(rt, deps(dep("a", model="gpt-a"), dep("b", model="gpt-b")), shape(), view)
    assert order(d) == ["b", "a"]  # unknown goes last


def test_cached_input_price_wins_only_with_affinity(tmp_path: Path) -> None:
    rt = route("cost", "flat", "caching")
    specs = (dep("caching", model="gpt-caching"), dep("flat", model="gpt-flat"))
    routing = live_routing(tmp_path, Clock(at(2026, 1, 15)), *specs, rt=rt)
    system = "s" * 8_000
    payload = {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "u" * 2_000},
        ],
        "max_tokens": 50,
    }
    cold, s = routing.decide(rt, payload, "req-1", lambda name: None)
    assert s.prefix_key is not None and s.prefix_bytes == 8_000
    assert order(cold) == ["flat", "caching"]
    assert cold.reason == "cheapest eligible"

    routing.affinity[s.prefix_key] = ("caching",)  # what a served answer records
    warm, _ = routing.decide(rt, payload, "req-2", lambda name: None)
    assert order(warm) == ["caching", "flat"]
    assert warm.reason == "prompt-cache affinity"
    c = candidate(warm, "caching")
    assert c.cached_tokens == 2_000
    assert c.expected_cost_usd == pytest.approx((506 * 3.0 + 2_000 * 0.3 + 500) / 1e6)

    # The same prompt on a route with affinity turned off: list prices decide.
    off = route("cost", "flat", "caching", affinity=False)
    d = decide(off, deps(*specs), s, routing.view("r"))
    assert order(d) == ["flat", "caching"]


def test_live_routing_reads_the_sticky_header(tmp_path: Path) -> None:
    rt = route("weighted", "a", "b", sticky="header:x-session")
    routing = live_routing(tmp_path, Clock(at(2026, 1, 15)), dep("a"), dep("b"), rt=rt)
    headers = {"x-session": "s-42"}
    plans = set()
    for i in range(20):
        d, s = routing.decide(rt, {"messages": []}, f"req-{i}", headers.get)
        assert s.sticky_key == "s-42"
        plans.add(tuple(order(d)))
    assert len(plans) == 1
