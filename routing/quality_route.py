"""`strategy: quality`: the cheap target unless it is likely to fail where the strong one
would not, judged from the prompt by a learned scorer and from the gate's record.

Targets are ordered cheap → strong (the last is the strong one). The failure estimate
combines the router's score with the cheap deployment's gate pass rate for this request
band (routing.quality_stats.failure_estimate). Above the threshold the strong target goes
first; below it the cheap one does, and a route gate escalates its failures as usual.

The threshold is either fixed or follows the live distribution of estimates so that a
target share of calls goes strong whatever the traffic looks like this hour.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from routing.model import DeploymentSpec, Plan, PlannedAttempt, RouteSpec
from routing.planner import (
    DEFAULT_OUTPUT_TOKENS,
    Candidate,
    Decision,
    LiveView,
    candidate,
)
from routing.shape import RequestShape

# Estimates kept to place the adaptive threshold; a few minutes of traffic on a busy route.
WINDOW = 2000
# Below this many estimates the quantile says little: use the share as the threshold.
MIN_WINDOW = 50


class ScoreWindow:
    """Recent failure estimates of one route, for the threshold that keeps a share."""

    __slots__ = ("_values",)

    def __init__(self, size: int = WINDOW) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(value)

    def threshold(self, strong_share: float) -> float:
        """The estimate above which `strong_share` of recent requests fall."""
        if strong_share <= 0:
            return 1.01  # never strong
        if strong_share >= 1:
            return -0.01  # always strong
        if len(self._values) < MIN_WINDOW:
            return 1.0 - strong_share
        ordered = sorted(self._values)
        position = min(len(ordered) - 1, int((1.0 - strong_share) * len(ordered)))
        return ordered[position]

    def __len__(self) -> int:
        return len(self._values)


def decide_quality(
    route: RouteSpec,
    deployments: Mapping[str, DeploymentSpec],
    shape: RequestShape,
    live: LiveView,
    estimate: float,
    threshold: float,
) -> Decision:
    output = shape.max_output_tokens or DEFAULT_OUTPUT_TOKENS
    targets = [candidate(route, deployments[t], shape, live, output) for t in route.targets]
    eligible = [c for c in targets if c.skipped is None]
    soft = [c for c in targets if c.skipped is not None and not c.hard]
    strong = estimate >= threshold
    ordered: list[Candidate] = list(eligible)
    if strong and ordered:
        ordered.insert(0, ordered.pop())  # the last eligible is the strongest left
    if not ordered:
        reason = "no eligible deployment: trying the busy ones" if soft else "none eligible"
    elif strong:
        reason = f"quality: failure estimate {estimate:.2f} >= {threshold:.2f}, strong first"
    else:
        reason = f"quality: failure estimate {estimate:.2f} < {threshold:.2f}, cheap first"
    fallbacks = [candidate(route, deployments[f], shape, live, output) for f in route.fallbacks]
    chosen = [*ordered, *soft, *(c for c in fallbacks if not c.hard)]
    plan = Plan(
        route=route.name,
        strategy=route.strategy,
        attempts=tuple(
            PlannedAttempt(c.deployment, "primary" if i == 0 else "fallback")
            for i, c in enumerate(chosen)
        ),
        timeouts=route.timeouts,
        workload=route.workload,
        retry=route.retry,
        hedge_after_ms=route.hedge_after_ms,
        reason=reason,
        gate=route.gate,
    )
    left_out = [c for c in (*targets, *fallbacks) if c.hard]
    return Decision(plan, (*chosen, *left_out), reason)
