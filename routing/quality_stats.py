"""Online quality statistics: how often each deployment's answers pass a route's gate.

Per route × deployment × request band (input size), a Beta posterior over the pass rate,
with counts decayed exponentially so a model that got better (or worse) last week counts
for more than one from last quarter. Pure: times are passed in (seconds since the epoch).

The gateway rebuilds these from the ledger (every gated attempt records its outcome), so
replicas and restarts share them; between rebuilds it adds its own outcomes locally.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Half of a sample's weight is gone after this long.
HALF_LIFE_S = 7 * 24 * 3600.0
# Band edges in input tokens: answers to long prompts fail differently from short ones.
BAND_EDGES = (512, 2048, 8192)
BAND_NAMES = ("xs", "s", "m", "l")

Key = tuple[str, str, str]  # route, deployment, band


def band_of(input_tokens: int) -> str:
    for edge, name in zip(BAND_EDGES, BAND_NAMES, strict=False):
        if input_tokens < edge:
            return name
    return BAND_NAMES[-1]


@dataclass(slots=True)
class Counts:
    passes: float = 0.0
    fails: float = 0.0
    at: float = 0.0  # when the counts were last decayed

    def decayed(self, now: float) -> Counts:
        if now <= self.at:
            return Counts(self.passes, self.fails, self.at)
        keep = math.pow(0.5, (now - self.at) / HALF_LIFE_S)
        return Counts(self.passes * keep, self.fails * keep, now)

    @property
    def n(self) -> float:
        return self.passes + self.fails


@dataclass(frozen=True, slots=True)
class Posterior:
    """Beta(1 + passes, 1 + fails): the uniform prior plus the decayed evidence."""

    passes: float
    fails: float

    @property
    def mean(self) -> float:
        return (1.0 + self.passes) / (2.0 + self.passes + self.fails)

    @property
    def evidence(self) -> float:
        return self.passes + self.fails


class QualityStats:
    def __init__(self) -> None:
        self._counts: dict[Key, Counts] = {}

    def observe(self, key: Key, passed: bool, now: float) -> None:
        current = self._counts.get(key)
        counts = current.decayed(now) if current is not None else Counts(at=now)
        if passed:
            counts.passes += 1
        else:
            counts.fails += 1
        self._counts[key] = counts

    def posterior(self, key: Key, now: float) -> Posterior:
        counts = self._counts.get(key)
        if counts is None:
            return Posterior(0.0, 0.0)
        now_counts = counts.decayed(now)
        return Posterior(now_counts.passes, now_counts.fails)

    def replace_all(self, rows: Iterable[tuple[Key, bool, float, int]], now: float) -> None:
        """Rebuild from history: (key, passed, when, how many) per row."""
        fresh: dict[Key, Counts] = {}
        for key, passed, when, count in rows:
            weight = count * math.pow(0.5, max(0.0, now - when) / HALF_LIFE_S)
            counts = fresh.setdefault(key, Counts(at=now))
            if passed:
                counts.passes += weight
            else:
                counts.fails += weight
        self._counts = fresh

    def snapshot(self, now: float) -> Mapping[Key, Posterior]:
        return {key: self.posterior(key, now) for key in self._counts}


def failure_estimate(score: float, posterior: Posterior, prior_strength: float = 20.0) -> float:
    """The chance the cheap deployment's answer fails, combining the router's score (a
    prior worth `prior_strength` observations) with the gate's record for this band."""
    score = min(1.0, max(0.0, score))
    return (prior_strength * score + posterior.fails) / (prior_strength + posterior.evidence)
