"""strategy quality: the failure estimate against a fixed or share-keeping threshold, and
the gate's record folded into the estimate."""

from __future__ import annotations

import pytest

from routing.live import DeploymentLoad
from routing.model import DeploymentSpec, GatePolicy, RouteSpec, Timeouts
from routing.planner import LiveView
from routing.quality_route import MIN_WINDOW, ScoreWindow, decide_quality
from routing.quality_stats import (
    HALF_LIFE_S,
    Posterior,
    QualityStats,
    band_of,
    failure_estimate,
)
from routing.shape import request_shape

T = Timeouts(1000, 1000, 10000)
CHEAP = DeploymentSpec("cheap", "p", "serverless", "openai", "m-small")
STRONG = DeploymentSpec("strong", "p", "closed_api", "openai", "m-large")
DEPS = {"cheap": CHEAP, "strong": STRONG}
ROUTE = RouteSpec("r", "quality", ("cheap", "strong"), T, gate=GatePolicy(spec=None))
SHAPE = request_shape({"messages": [{"role": "user", "content": "What is 2+2?"}]}, "req-1")


def order(estimate: float, threshold: float, **live: object) -> list[str]:
    view = LiveView(now=0.0, **live)  # type: ignore[arg-type]
    decision = decide_quality(ROUTE, DEPS, SHAPE, view, estimate, threshold)
    assert decision.plan.gate is ROUTE.gate  # a gate still escalates cheap failures
    return [a.deployment.id for a in decision.plan.attempts]


def test_below_the_threshold_cheap_goes_first() -> None:
    assert order(0.2, 0.5) == ["cheap", "strong"]


def test_at_or_above_the_threshold_strong_goes_first() -> None:
    assert order(0.5, 0.5) == ["strong", "cheap"]
    assert order(0.9, 0.5) == ["strong", "cheap"]


def test_an_ineligible_strong_target_leaves_cheap_first() -> None:
    assert order(0.9, 0.5, breaker_open={"strong": True}) == ["cheap", "strong"]


def test_reason_says_which_side_and_why() -> None:
    view = LiveView(now=0.0)
    low = decide_quality(ROUTE, DEPS, SHAPE, view, 0.12, 0.5)
    high = decide_quality(ROUTE, DEPS, SHAPE, view, 0.8, 0.5)
    assert low.reason == "quality: failure estimate 0.12 < 0.50, cheap first"
    assert high.reason == "quality: failure estimate 0.80 >= 0.50, strong first"


def test_window_threshold_holds_the_share() -> None:
    window = ScoreWindow()
    assert window.threshold(0.3) == pytest.approx(0.7)  # cold: the share itself
    for i in range(1000):
        window.add(i / 1000)
    threshold = window.threshold(0.2)
    assert threshold == pytest.approx(0.8, abs=0.002)
    above = sum(1 for i in range(1000) if i / 1000 >= threshold)
    assert above == 200
    assert window.threshold(0.0) > 1 and window.threshold(1.0) < 0
    assert len(window) >= MIN_WINDOW


def test_failure_estimate_blends_score_and_record() -> None:
    assert failure_estimate(0.3, Posterior(0, 0)) == pytest.approx(0.3)  # no record yet
    # A long clean record pulls a pessimistic score down; a bad one pushes it up.
    assert failure_estimate(0.6, Posterior(passes=180, fails=0)) == pytest.approx(0.06)
    assert failure_estimate(0.1, Posterior(passes=20, fails=80)) == pytest.approx(82 / 120)
    assert 0 <= failure_estimate(7.0, Posterior(0, 0)) <= 1


def test_stats_decay_and_rebuild() -> None:
    stats = QualityStats()
    key = ("r", "cheap", band_of(100))
    for _ in range(8):
        stats.observe(key, True, now=0.0)
    stats.observe(key, False, now=0.0)
    now = stats.posterior(key, 0.0)
    later = stats.posterior(key, HALF_LIFE_S)
    assert (now.passes, now.fails) == (8, 1)
    assert (later.passes, later.fails) == pytest.approx((4, 0.5))
    assert now.mean == pytest.approx(9 / 11)
    stats.replace_all([(key, True, 0.0, 10), (key, False, HALF_LIFE_S, 2)], HALF_LIFE_S)
    rebuilt = stats.posterior(key, HALF_LIFE_S)
    assert (rebuilt.passes, rebuilt.fails) == pytest.approx((5, 2))


def test_bands() -> None:
    assert [band_of(n) for n in (0, 511, 512, 2047, 2048, 8191, 8192, 10**6)] == [
        "xs",
        "xs",
        "s",
        "s",
        "m",
        "m",
        "l",
        "l",
    ]


def test_idle_load_is_fine() -> None:
    assert order(0.1, 0.5, loads={"cheap": DeploymentLoad()}) == ["cheap", "strong"]
