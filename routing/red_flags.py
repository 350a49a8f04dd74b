"""Red-flag rules shared by the reconciliation and LCPR reports (pure).

Trends compare the last 14 days of the period with the 14 days before them, on rates
recomputed from daily counts (never an average of daily rates, which would let a quiet day
weigh as much as a busy one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from routing.workflows import compounded_failure

WINDOW_DAYS = 14
RETRY_RISE_POINTS = Decimal(5)
CACHE_DROP_POINTS = Decimal(10)
GATE_DROP_POINTS = Decimal(5)
FALLBACK_SHARE_LIMIT = Decimal("0.20")
UTILIZATION_FLOOR = Decimal("0.40")
INVOICE_VARIANCE_LIMIT_PCT = Decimal(10)
# Workflows may fail this much (as a share) more often than independent calls would make them.
WORKFLOW_EXCESS_POINTS = Decimal("0.05")
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class DailyRates:
    """One segment's counts on one UTC day."""

    segment: str
    day: date
    requests: int
    retries: int
    gated: int
    gate_passed: int
    input_tokens: int
    cached_tokens: int


@dataclass(frozen=True, slots=True)
class RedFlag:
    code: str
    subject: str
    message: str


def _rate(num: int, den: int) -> Decimal | None:
    return Decimal(num) / Decimal(den) if den else None


def _points(value: Decimal) -> str:
    return f"{value * _HUNDRED:.1f} %"


def trend_flags(daily: Iterable[DailyRates], period_end: date) -> list[RedFlag]:
    """Retry rate +5 points, cache-hit rate −10 points, gate pass rate −5 points: the last
    14 days before `period_end` (exclusive) against the 14 days before them."""
    recent_start = period_end - timedelta(days=WINDOW_DAYS)
    earlier_start = recent_start - timedelta(days=WINDOW_DAYS)
    sums: dict[tuple[str, bool], list[int]] = {}
    for d in daily:
        if not earlier_start <= d.day < period_end:
            continue
        key = (d.segment, d.day >= recent_start)
        acc = sums.setdefault(key, [0] * 6)
        for i, v in enumerate(
            (d.requests, d.retries, d.gated, d.gate_passed, d.input_tokens, d.cached_tokens)
        ):
            acc[i] += v
    flags = []
    for segment in sorted({s for s, _ in sums}):
        before, after = sums.get((segment, False)), sums.get((segment, True))
        if before is None or after is None:
            continue
        checks = (
            ("retry_rate_rising", "retry rate", 1, 0, RETRY_RISE_POINTS),
            ("cache_hit_falling", "cache-hit rate", 5, 4, -CACHE_DROP_POINTS),
            ("gate_pass_falling", "gate pass rate", 3, 2, -GATE_DROP_POINTS),
        )
        for code, label, num, den, limit in checks:
            old, new = _rate(before[num], before[den]), _rate(after[num], after[den])
            if old is None or new is None:
                continue
            change = (new - old) * _HUNDRED
            if (limit > 0 and change > limit) or (limit < 0 and change < limit):
                flags.append(
                    RedFlag(
                        code,
                        segment,
                        f"{label} {_points(old)} → {_points(new)} ({change:+.1f} points over "
                        f"the last {WINDOW_DAYS} days; limit {limit:+.0f})",
                    )
                )
    return flags


def fallback_flag(segment: str, share: Decimal | None) -> list[RedFlag]:
    if share is None or share <= FALLBACK_SHARE_LIMIT:
        return []
    return [
        RedFlag(
            "fallback_share_high",
            segment,
            f"fallback share {_points(share)} (> {_points(FALLBACK_SHARE_LIMIT)}): the primary "
            "is failing often enough that fallbacks are carrying the route",
        )
    ]


def workflow_failure_flag(
    group: str, failure_rate: Decimal, call_success_rate: Decimal, mean_calls: Decimal
) -> list[RedFlag]:
    """Workflows fail more than their calls explain: failure rate > 1 − pⁿ + 5 points, for
    per-call success p over n calls on average (routing/workflows.py). Failures that
    cluster in the same workflows (an agent that gives up after one error, a step that
    fails whatever it is retried with) show up here, where per-call numbers look fine."""
    expected = compounded_failure(call_success_rate, mean_calls)
    limit = expected + WORKFLOW_EXCESS_POINTS
    if failure_rate <= limit:
        return []
    return [
        RedFlag(
            "workflow_failure_high",
            group,
            f"workflow failure rate {_points(failure_rate)} > {_points(limit)}: per-call "
            f"success {_points(call_success_rate)} compounded over {mean_calls:.2f} calls per "
            f"workflow fails 1 − {call_success_rate:.3f}^{mean_calls:.2f} = {_points(expected)} "
            f"of workflows, + {WORKFLOW_EXCESS_POINTS * _HUNDRED:.0f} points",
        )
    ]


def utilization_flag(provider: str, utilization: Decimal | None) -> list[RedFlag]:
    if utilization is None or utilization >= UTILIZATION_FLOOR:
        return []
    return [
        RedFlag(
            "dedicated_underused",
            provider,
            f"dedicated utilization {_points(utilization)} for the month (< "
            f"{_points(UTILIZATION_FLOOR)}): paid GPU hours mostly idle",
        )
    ]


def invoice_variance_flag(subject: str, cost_variance_pct: Decimal | None) -> list[RedFlag]:
    if cost_variance_pct is None or abs(cost_variance_pct) <= INVOICE_VARIANCE_LIMIT_PCT:
        return []
    return [
        RedFlag(
            "invoice_variance",
            subject,
            f"invoice differs from the ledger by {cost_variance_pct:+.1f} % in dollars "
            f"(> {INVOICE_VARIANCE_LIMIT_PCT:.0f} %)",
        )
    ]


def price_change_flags(changes: Sequence[tuple[str, str, Sequence[str]]]) -> list[RedFlag]:
    """(provider, deployment, price versions seen in the month) with more than one version."""
    return [
        RedFlag(
            "price_changed",
            provider,
            f"{deployment} was charged at {len(versions)} prices during the month: "
            + ", ".join(versions),
        )
        for provider, deployment, versions in changes
        if len(versions) > 1
    ]


def utilization(busy_seconds: Decimal, paid_hours: Decimal, slots: int) -> Decimal | None:
    """Share of paid concurrency-slot time spent serving attempts."""
    capacity = paid_hours * 3600 * max(slots, 1)
    return busy_seconds / capacity if capacity > 0 else None
