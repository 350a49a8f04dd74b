"""What per-key limits say to a client, and what a request asks of them.

A key's limits (`limits_of`), the `x-ratelimit-*` headers, the 429 / 400 / 503 errors a
refusal becomes, and `ask_for`: the tokens and worst-case cost a request reserves. Split
from gateway/limits/limiter.py, which holds the limiter itself.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    QuotaExceeded,
    RateLimited,
    Unavailable,
)
from gateway.keys.auth import Principal
from gateway.ledger.pricing import PriceBook
from routing import quota
from routing.cost import TokenPrice
from routing.model import Plan
from routing.quota import BUDGET, CONCURRENCY, RPM, TPM, Ask, Limits, Verdict


def limits_of(principal: Principal) -> Limits:
    return Limits(
        rpm=principal.rpm,
        tpm=principal.tpm,
        max_concurrency=principal.max_concurrency,
        budget_nano=None if principal.budget_usd is None else quota.to_nano(principal.budget_usd),
    )


def enabled_checks(limits: Limits) -> frozenset[str]:
    on = []
    if limits.rpm is not None:
        on.append(RPM)
    if limits.tpm is not None:
        on.append(TPM)
    if limits.max_concurrency is not None:
        on.append(CONCURRENCY)
    if limits.budget_nano is not None:
        on.append(BUDGET)
    return frozenset(on)


def rate_headers(limits: Limits, verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """OpenAI's `x-ratelimit-*` headers for the limits this key has."""
    out: list[tuple[bytes, bytes]] = []
    if limits.rpm is not None:
        out.append((b"x-ratelimit-limit-requests", str(limits.rpm).encode()))
        if verdict.remaining_requests is not None:
            out.append(
                (b"x-ratelimit-remaining-requests", str(verdict.remaining_requests).encode())
            )
        if verdict.reset_requests_ms is not None:
            reset = quota.duration_header(verdict.reset_requests_ms)
            out.append((b"x-ratelimit-reset-requests", reset.encode()))
    if limits.tpm is not None:
        out.append((b"x-ratelimit-limit-tokens", str(limits.tpm).encode()))
        if verdict.remaining_tokens is not None:
            left = str(verdict.remaining_tokens).encode()
            out.append((b"x-ratelimit-remaining-tokens", left))
        if verdict.reset_tokens_ms is not None:
            reset = quota.duration_header(verdict.reset_tokens_ms)
            out.append((b"x-ratelimit-reset-tokens", reset.encode()))
    return out


def refusal(principal: Principal, limits: Limits, ask: Ask, verdict: Verdict) -> GatewayError:
    headers = rate_headers(limits, verdict)
    check = verdict.refused_by
    if check == BUDGET:
        left = quota.from_nano(verdict.budget_left_nano or 0)
        message = (
            f"You exceeded your current quota: key {principal.key_name!r} has a monthly budget "
            f"of ${principal.budget_usd}; ${left:.6f} is left and this request could cost up "
            f"to ${quota.from_nano(ask.reserve_nano):.6f}. Raise the budget or lower max_tokens."
        )
        # The OpenAI SDKs retry 429s unless told not to: a budget does not refill in seconds.
        headers.append((b"x-should-retry", b"false"))
        return QuotaExceeded(message, headers=headers)
    wait_s = max(verdict.retry_after_ms, 1) / 1000
    headers.append((b"retry-after-ms", str(max(verdict.retry_after_ms, 1)).encode()))
    headers.append((b"retry-after", str(max(1, round(wait_s + 0.499))).encode()))
    if check == RPM:
        what = f"requests per min (RPM): Limit {limits.rpm}"
    elif check == TPM:
        what = f"tokens per min (TPM): Limit {limits.tpm}, Requested {ask.tokens}"
    else:
        what = f"concurrent requests: Limit {limits.max_concurrency}"
    message = (
        f"Rate limit reached for key {principal.key_name!r} on {what}. "
        f"Please try again in {quota.duration_header(max(verdict.retry_after_ms, 1))}."
    )
    return RateLimited(message, error_type=check or "requests", headers=headers)


def limits_unavailable(checks: list[str]) -> Unavailable:
    return Unavailable(
        "Rate and budget limits cannot be checked right now (the shared limit store is "
        f"unreachable) and this gateway fails closed for {', '.join(checks)}. Retry shortly.",
        code="limits_unavailable",
        headers=[(b"retry-after", b"1")],
    )


def too_large(principal: Principal, limits: Limits, ask: Ask) -> InvalidRequest:
    """A request that names more tokens than the key's whole TPM limit can never fit.

    400, not 429: the OpenAI and Anthropic SDKs raise BadRequestError and never retry it,
    and neither do the retry wrappers people put around RateLimitError (tenacity loops,
    LangChain), which would otherwise spin on a request that no amount of waiting admits.
    """
    firm = ask.tokens - ask.default_tokens
    return InvalidRequest(
        f"This request could use up to {firm} tokens (prompt estimate plus max_tokens × n), "
        f"more than key {principal.key_name!r} may use in a minute: tokens per min (TPM): "
        f"Limit {limits.tpm}, Requested {firm}. It can never be admitted as it is: lower "
        "max_tokens or n, or shorten the prompt.",
        code="tokens_exceed_limit",
        param="max_tokens",
    )


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def ask_for(
    plan: Plan,
    payload: dict[str, Any],
    body_bytes: int,
    prices: PriceBook | None,
    reserve_output_tokens: int,
    now: datetime,
) -> Ask:
    """What a request reserves: tokens for TPM, and its worst-case cost for the budget.

    Input is over-estimated on purpose (a token per 3 body bytes; English runs ~4 bytes a
    token) and output is the request's own cap, so a settled request rarely costs more than
    it reserved. One attempt is reserved: retries and fallbacks settle at their real cost.
    max_tokens × n saturates at quota.MAX_ASK (JSON integers reach 2^64, their product
    2^128): such an ask is refused by the limit it exceeds, never overflows one. The
    reservation lasts as long as the route's total timeout allows the request to run.
    """
    input_tokens = body_bytes // 3 + 1
    asked = _positive_int(payload.get("max_completion_tokens")) or _positive_int(
        payload.get("max_tokens")
    )
    output = asked or reserve_output_tokens
    n = _positive_int(payload.get("n"))
    if n is not None and n > 1:
        output *= n
    output = min(output, quota.MAX_ASK)
    tokens = min(input_tokens + output, quota.MAX_ASK)
    default = 0 if asked is not None else output
    hold_ms = plan.timeouts.total_ms
    if prices is None:
        return Ask(tokens, 0, default, hold_ms)
    found, dedicated, rates = _plan_prices(plan, prices, now)
    reserve = (
        quota.worst_case_nano(input_tokens, output, found, dedicated)
        if rates is None
        else quota.worst_case_nano_from_rates(input_tokens, output, rates)
    )
    return Ask(tokens, min(reserve, quota.MAX_ASK), default, hold_ms)


# The prices of a plan's deployments on a day, looked up once: plans are built once per
# order and reused (routing/planner.py), so most requests of a route share one entry. Keyed
# by the plan's and price book's identities (the entry holds both, so neither id can be
# reused while it exists) and the UTC date; cleared when it grows past a bound.
_PlanPrices = tuple[list[TokenPrice | None], list[bool], tuple[tuple[int, int], ...] | None]
_PLAN_PRICES: dict[tuple[int, int, date], tuple[Plan, PriceBook, _PlanPrices]] = {}
_PLAN_PRICES_MAX = 4096


def _plan_prices(plan: Plan, prices: PriceBook, now: datetime) -> _PlanPrices:
    """(prices, dedicated flags, integer reserve rates or None) of the plan's deployments."""
    key = (id(plan), id(prices), now.date())
    entry = _PLAN_PRICES.get(key)
    if entry is not None and entry[0] is plan and entry[1] is prices:
        return entry[2]
    deployments = [a.deployment for a in plan.attempts]
    found = [prices.price_for(d.id, d.upstream_model, d.provider_kind, now) for d in deployments]
    dedicated = [d.provider_kind == "dedicated" for d in deployments]
    if len(_PLAN_PRICES) >= _PLAN_PRICES_MAX:
        _PLAN_PRICES.clear()
    value = (found, dedicated, quota.reserve_rates(found, dedicated))
    _PLAN_PRICES[key] = (plan, prices, value)
    return value
