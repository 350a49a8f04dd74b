"""Arithmetic for routes that ask several targets at once (consensus, speculative).

Pure: what a fan-out reserves against a key's limits, and what a candidate cancelled before
it answered is assumed to have cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from routing.model import Plan
from routing.quota import Ask


def width(plan: Plan) -> int:
    """Upstream calls a request of this plan starts at once (1 for every other strategy)."""
    return 1 if plan.fanout is None else max(1, plan.fanout.n)


def widen(ask: Ask, plan: Plan) -> Ask:
    """A fan-out reserves tokens and worst-case cost for every candidate it starts at once.

    Replacements for failed candidates and retries settle at their real cost, as retries
    and fallbacks of any route do.
    """
    n = width(plan)
    if n == 1:
        return ask
    return dataclasses.replace(
        ask,
        tokens=ask.tokens * n,
        reserve_nano=ask.reserve_nano * n,
        default_tokens=ask.default_tokens * n,
    )


def cancelled_output_tokens(answered: Sequence[tuple[int, float]], elapsed_ms: float) -> int:
    """Output tokens a candidate cancelled after `elapsed_ms` is assumed to have generated.

    A non-stream call shows nothing of its output before it ends, so the estimate comes
    from the candidates of the same request that did answer, `(output tokens, latency ms)`:
    their mean output, prorated by how long the cancelled one ran against their mean
    latency (capped at the full mean). Without any answer to go by it is 0, a lower bound.
    """
    if not answered:
        return 0
    tokens = sum(t for t, _ in answered) / len(answered)
    latency = sum(ms for _, ms in answered) / len(answered)
    if latency <= 0:
        return round(tokens)
    return round(tokens * min(1.0, max(0.0, elapsed_ms) / latency))
