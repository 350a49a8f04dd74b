"""Router quality metrics as RouteLLM (lm-sys/RouteLLM, routellm/evals) defines them.

For a router that gives each prompt a score (higher = more in need of the strong model) and a
benchmark with per-prompt outcomes of both models (1.0 = correct):

- thresholds: the 0 %, 10 %, …, 100 % quantiles of the scores (pandas.qcut's bin edges for
  10 bins, i.e. linear interpolation). At each threshold the prompts with score >= it go to the
  strong model — except at the last (the maximum), where it is score > it, so that point has
  no strong calls. That gives 11 points from 100 % strong calls down to 0 %. (Thresholds are
  computed with numpy's arithmetic; a newer pandas nudges a level by one ulp, which can move a
  prompt sitting exactly on a threshold — a difference of one prompt at most per point.)
- quality at a point: mean outcome of the routed answers.
- PGR (performance gap recovered) = (quality − weak quality) / (strong quality − weak quality),
  with the weak and strong qualities measured on the same prompts.
- APGR: the area under quality vs strong-call share (trapezoids over the points sorted by
  share), less the weak model's area, over the strong-minus-weak area — i.e. the mean PGR over
  the share axis. A random router scores ≈ 0.5, a perfect one above 1 (it also keeps the
  prompts the weak model gets right and the strong one gets wrong).
- CPT(x): the smallest strong-call share at which the (linearly interpolated) curve reaches
  PGR x. RouteLLM computes it with numpy.interp over the curve, which agrees whenever the curve
  rises monotonically; on a curve that dips, this takes the first crossing, as the definition
  ("smallest share") says.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CurvePoint:
    threshold: float
    strong_share: float  # fraction of prompts routed to the strong model, 0..1
    quality: float  # mean outcome of the routed answers
    pgr: float  # performance gap recovered at this point (nan if the models tie)


@dataclass(frozen=True, slots=True)
class RouterReport:
    prompts: int
    weak_quality: float
    strong_quality: float
    apgr: float
    cpt50: float | None  # strong-call share reaching PGR 0.5 (None if it never does)
    cpt80: float | None
    curve: tuple[CurvePoint, ...]  # sorted by strong_share


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values, with numpy's arithmetic.

    Same operations in the same order as numpy.quantile's default method, so a threshold that
    lands on a data point (and therefore whether that prompt goes strong) matches RouteLLM's.
    """
    if not sorted_values:
        raise ValueError("quantile of no values")
    virtual = (len(sorted_values) - 1) * q
    lo = math.floor(virtual)
    hi = min(lo + 1, len(sorted_values) - 1)
    lo = min(lo, len(sorted_values) - 1)
    gamma = virtual - lo
    a, b = sorted_values[lo], sorted_values[hi]
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def _levels(num_results: int) -> list[float]:
    """numpy.linspace(0, 1, n + 1), value for value: the quantile levels pandas.qcut uses."""
    step = 1.0 / num_results
    return [i * step for i in range(num_results)] + [1.0]


def _check(scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]) -> None:
    if not scores:
        raise ValueError("no prompts to evaluate")
    if not len(scores) == len(weak) == len(strong):
        raise ValueError("scores and outcomes differ in length")


def pgr_curve(
    scores: Sequence[float],
    weak: Sequence[float],
    strong: Sequence[float],
    num_results: int = 10,
) -> list[CurvePoint]:
    """The num_results + 1 points of RouteLLM's evaluation, sorted by strong-call share."""
    _check(scores, weak, strong)
    n = len(scores)
    weak_q = sum(weak) / n
    strong_q = sum(strong) / n
    gap = strong_q - weak_q
    ordered = sorted(scores)
    points: list[CurvePoint] = []
    for i, level in enumerate(_levels(num_results)):
        t = quantile(ordered, level)
        last = i == num_results
        chosen = 0
        total = 0.0
        for s, w, g in zip(scores, weak, strong, strict=True):
            if s > t or (s == t and not last):
                chosen += 1
                total += g
            else:
                total += w
        quality = total / n
        pgr = (quality - weak_q) / gap if gap != 0 else math.nan
        points.append(CurvePoint(t, chosen / n, quality, pgr))
    # Stable: points with equal share (tied scores) keep threshold order.
    points.sort(key=lambda p: p.strong_share)
    return points


def apgr(curve: Sequence[CurvePoint], weak_quality: float, strong_quality: float) -> float:
    """Average PGR: trapezoid area of quality over share, normalised as RouteLLM does."""
    area = 0.0
    for a, b in itertools.pairwise(curve):
        area += (b.strong_share - a.strong_share) * (a.quality + b.quality) / 2
    span = curve[-1].strong_share - curve[0].strong_share
    denominator = (strong_quality - weak_quality) * span
    if denominator == 0:
        return math.nan
    return (area - weak_quality * span) / denominator


def cpt(curve: Sequence[CurvePoint], target: float) -> float | None:
    """Smallest strong-call share where PGR reaches `target` (e.g. 0.5), interpolated."""
    if not curve or math.isnan(curve[0].pgr):
        return None
    if curve[0].pgr >= target:
        return curve[0].strong_share
    for a, b in itertools.pairwise(curve):
        if b.pgr >= target:
            if b.pgr == a.pgr:
                return b.strong_share
            frac = (target - a.pgr) / (b.pgr - a.pgr)
            return a.strong_share + frac * (b.strong_share - a.strong_share)
    return None


def evaluate(
    scores: Sequence[float],
    weak: Sequence[float],
    strong: Sequence[float],
    num_results: int = 10,
) -> RouterReport:
    """Curve, APGR, CPT(50 %) and CPT(80 %) of one router's scores on one benchmark."""
    curve = pgr_curve(scores, weak, strong, num_results)
    n = len(scores)
    weak_q = sum(weak) / n
    strong_q = sum(strong) / n
    return RouterReport(
        prompts=n,
        weak_quality=weak_q,
        strong_quality=strong_q,
        apgr=apgr(curve, weak_q, strong_q),
        cpt50=cpt(curve, 0.5),
        cpt80=cpt(curve, 0.8),
        curve=tuple(curve),
    )
