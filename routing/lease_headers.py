"""The rate-limit headers lease mode answers with: what a request admitted (or refused)
against its replica's slice (routing/lease.py) is told is left. Pure, like the slice.

Redis's levels as last seen (at the slice's last sync) plus what the slice holds: not a
live reading, and never above the limit, because the key's bucket refills while a slice
holds its part, so that sum can pass it.
"""

from __future__ import annotations

import math

from routing.lease import Slice
from routing.quota import BUDGET, CONCURRENCY, MINUTE_MS, RPM, TPM, Ask, Limits, Verdict


def admitted_verdict(s: Slice, limits: Limits) -> Verdict:
    """The headers' view after a local admission: Redis's last-seen level plus this slice,
    never above the limit (the bucket refills while the slice holds its part, so the sum
    can pass it). Runs for every admitted request: plain integer arithmetic, no helper calls."""
    requests = reset_r = tokens = reset_t = left = spent = None
    rpm, tpm = limits.rpm, limits.tpm
    if rpm is not None:
        level = s.rpm_level + s.requests
        requests = rpm if level > rpm else level if level > 0 else 0
        missing = rpm - level
        reset_r = -(-missing * MINUTE_MS // rpm) if missing > 0 else 0
    if tpm is not None:
        level = s.tpm_level + s.tokens
        tokens = tpm if level > tpm else level if level > 0 else 0
        missing = tpm - level
        reset_t = -(-missing * MINUTE_MS // tpm) if missing > 0 else 0
    if limits.budget_nano is not None:
        free = s.held_nano - s.reserved_nano - s.unpushed_nano
        left = (s.budget_left_nano if s.budget_left_nano > 0 else 0) + (free if free > 0 else 0)
        spent = s.spent_nano + s.unpushed_nano
    return Verdict(True, None, 0, requests, reset_r, tokens, reset_t, left, spent)


def refused_verdict(s: Slice, limits: Limits, ask: Ask, short: str) -> Verdict:
    """Today's refusal for the limit the slice stayed short of after a sync."""
    if short == RPM and limits.rpm is not None:
        level = s.rpm_level + s.requests
        return Verdict(
            False,
            RPM,
            _wait_ms(level, limits.rpm, 1),
            remaining_requests=0,
            reset_requests_ms=_reset_ms(level, limits.rpm),
        )
    if short == TPM and limits.tpm is not None:
        level = s.tpm_level + s.tokens
        return Verdict(
            False,
            TPM,
            _wait_ms(level, limits.tpm, ask.tokens),
            remaining_tokens=max(0, min(level, limits.tpm)),
            reset_tokens_ms=_reset_ms(level, limits.tpm),
        )
    if short == BUDGET:
        return Verdict(
            False,
            BUDGET,
            budget_left_nano=max(0, s.budget_left_nano) + max(0, s.free_nano),
            spent_nano=s.spent_nano + s.unpushed_nano,
        )
    return Verdict(False, CONCURRENCY, 1000)


def _wait_ms(level: int, capacity: int, amount: int) -> int:
    need = min(amount, capacity) - level
    return max(1, math.ceil(need * MINUTE_MS / capacity))


def _reset_ms(level: int, capacity: int) -> int:
    missing = capacity - level
    return -(-missing * MINUTE_MS // capacity) if missing > 0 else 0
