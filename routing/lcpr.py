"""Loaded cost per successful request (LCPR): the what-if calculator and the ledger segments.

    LCPR = (token cost of every attempt + repair cost + engineering cost) / successful requests

Token cost counts retries, fallbacks and hedges, because providers bill them; dedicated GPUs
cost their paid hours × hourly rate whether busy or idle, shared out by served tokens;
"successful" means passed the quality gate and reached the client. The overhead ratio is LCPR
over the list-price cost of one clean attempt: how much more a good answer really costs than
the price sheet suggests.

Pure Decimal arithmetic; the caller supplies volumes, prices and ledger aggregates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

MILLION = Decimal(1_000_000)
# 365 × 24 / 12: the hours a dedicated GPU is paid for in an average month.
HOURS_PER_MONTH = Decimal(730)
_ZERO = Decimal(0)
_ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class Workload:
    """A month of traffic for the what-if calculator.

    `retry_rate` is extra attempts per request (0.1: one request in ten is retried once);
    `gate_pass_rate` the share of requests whose answer passes the quality gate; failures
    each cost `repair_cost_usd` (a re-prompt, a human fixing it) and are not successes.
    `cache_hit_rate` is the share of input tokens read from the prompt cache.
    """

    requests: Decimal
    input_tokens: Decimal
    output_tokens: Decimal
    retry_rate: Decimal = _ZERO
    gate_pass_rate: Decimal = _ONE
    engineering_hours: Decimal = _ZERO
    hourly_rate_usd: Decimal = _ZERO
    repair_cost_usd: Decimal = _ZERO
    cache_hit_rate: Decimal = _ZERO

    def __post_init__(self) -> None:
        if self.requests <= 0:
            raise ValueError("requests must be positive")
        if not _ZERO < self.gate_pass_rate <= _ONE:
            raise ValueError("gate pass rate must be in (0, 1]")
        if not _ZERO <= self.cache_hit_rate <= _ONE:
            raise ValueError("cache-hit rate must be in [0, 1]")
        for name in (
            "input_tokens",
            "output_tokens",
            "retry_rate",
            "engineering_hours",
            "hourly_rate_usd",
            "repair_cost_usd",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', ' ')} must not be negative")


@dataclass(frozen=True, slots=True)
class DeploymentCost:
    """What a deployment charges: per 1M tokens, or per GPU hour (dedicated)."""

    id: str
    kind: str  # serverless | closed_api | dedicated
    input: Decimal = _ZERO
    output: Decimal = _ZERO
    cached_input: Decimal | None = None
    hourly_usd: Decimal | None = None
    gpu_hours: Decimal = HOURS_PER_MONTH

    @property
    def dedicated(self) -> bool:
        return self.kind == "dedicated"


@dataclass(frozen=True, slots=True)
class Estimate:
    deployment: str
    kind: str
    raw_per_request: Decimal  # list price of one clean attempt
    attempts: Decimal
    successful: Decimal
    token_cost: Decimal  # tokens of every attempt, or the paid GPU hours
    repair_cost: Decimal
    engineering_cost: Decimal
    monthly_cost: Decimal
    lcpr: Decimal
    overhead_ratio: Decimal


def clean_attempt_cost(w: Workload, d: DeploymentCost) -> Decimal:
    """List price of one attempt with the workload's tokens (dedicated: hours / requests)."""
    if d.dedicated:
        if d.hourly_usd is None:
            raise ValueError(f"{d.id}: a dedicated deployment needs an hourly rate")
        return d.gpu_hours * d.hourly_usd / w.requests
    cached_rate = d.input if d.cached_input is None else d.cached_input
    cached = w.input_tokens * w.cache_hit_rate
    uncached = w.input_tokens - cached
    return (uncached * d.input + cached * cached_rate + w.output_tokens * d.output) / MILLION


def estimate(w: Workload, d: DeploymentCost) -> Estimate:
    raw = clean_attempt_cost(w, d)
    attempts = w.requests * (_ONE + w.retry_rate)
    # A retry on a dedicated GPU uses hours already paid for: the monthly bill is the same.
    token_cost = d.gpu_hours * (d.hourly_usd or _ZERO) if d.dedicated else attempts * raw
    successful = w.requests * w.gate_pass_rate
    repair = (w.requests - successful) * w.repair_cost_usd
    engineering = w.engineering_hours * w.hourly_rate_usd
    monthly = token_cost + repair + engineering
    lcpr = monthly / successful
    return Estimate(
        deployment=d.id,
        kind=d.kind,
        raw_per_request=raw,
        attempts=attempts,
        successful=successful,
        token_cost=token_cost,
        repair_cost=repair,
        engineering_cost=engineering,
        monthly_cost=monthly,
        lcpr=lcpr,
        overhead_ratio=lcpr / raw if raw > 0 else _ZERO,
    )


# --- from the ledger ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentTotals:
    """One segment's month from the ledger (already aggregated in SQL).

    `dedicated_tokens` are the segment's served tokens per dedicated provider: the key by
    which that provider's paid hours are shared out.
    """

    segment: str
    requests: int
    successful: int
    attempts: int
    retries: int
    fallback_requests: int
    gated: int
    gate_passed: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    token_cost_usd: Decimal
    clean_attempts: int
    clean_attempt_cost_usd: Decimal
    clean_attempt_tokens: int
    dedicated_tokens: Mapping[str, int]
    # Requests answered from the response cache (successful, no token cost) and what
    # their upstream calls would have cost.
    cache_hits: int = 0
    saved_usd: Decimal = _ZERO


@dataclass(frozen=True, slots=True)
class LoadedCosts:
    """Month-level costs that are not per attempt."""

    dedicated_usd: Mapping[str, Decimal]  # paid hours × rate, per dedicated provider
    engineering_usd: Decimal
    repair_cost_usd: Decimal  # per failed request


@dataclass(frozen=True, slots=True)
class SegmentLcpr:
    segment: str
    requests: int
    successful: int
    token_cost_usd: Decimal
    dedicated_cost_usd: Decimal
    repair_cost_usd: Decimal
    engineering_cost_usd: Decimal
    loaded_cost_usd: Decimal
    lcpr: Decimal | None
    clean_attempt_usd: Decimal | None
    overhead_ratio: Decimal | None
    retry_rate: Decimal | None
    gate_pass_rate: Decimal | None
    fallback_share: Decimal | None
    cache_hit_rate: Decimal | None  # prompt cache: share of input tokens read from it
    # Response cache: hits, their share of requests, and the upstream cost they saved.
    cache_hits: int = 0
    response_cache_rate: Decimal | None = None
    saved_usd: Decimal = _ZERO


def _ratio(num: Decimal | int, den: Decimal | int) -> Decimal | None:
    return Decimal(num) / Decimal(den) if den else None


def segment_lcpr(totals: Sequence[SegmentTotals], costs: LoadedCosts) -> list[SegmentLcpr]:
    """LCPR per segment, most expensive per success first.

    Dedicated hours go to segments by their share of that provider's served tokens, and
    engineering by share of requests; a dedicated provider that served nothing in the month
    is still paid for, and shows up in the totals row the caller builds (not in a segment).
    """
    served: dict[str, int] = {}
    for t in totals:
        for provider, tokens in t.dedicated_tokens.items():
            served[provider] = served.get(provider, 0) + tokens
    all_requests = sum(t.requests for t in totals)
    out = []
    for t in totals:
        dedicated = sum(
            (
                costs.dedicated_usd.get(p, _ZERO) * Decimal(n) / Decimal(served[p])
                for p, n in t.dedicated_tokens.items()
                if served.get(p)
            ),
            _ZERO,
        )
        engineering = (
            costs.engineering_usd * Decimal(t.requests) / Decimal(all_requests)
            if all_requests
            else _ZERO
        )
        repair = Decimal(t.requests - t.successful) * costs.repair_cost_usd
        loaded = t.token_cost_usd + dedicated + repair + engineering
        lcpr = _ratio(loaded, t.successful)
        clean = _clean_attempt(t, dedicated)
        out.append(
            SegmentLcpr(
                segment=t.segment,
                requests=t.requests,
                successful=t.successful,
                token_cost_usd=t.token_cost_usd,
                dedicated_cost_usd=dedicated,
                repair_cost_usd=repair,
                engineering_cost_usd=engineering,
                loaded_cost_usd=loaded,
                lcpr=lcpr,
                clean_attempt_usd=clean,
                overhead_ratio=lcpr / clean if lcpr is not None and clean else None,
                retry_rate=_ratio(t.retries, t.requests),
                gate_pass_rate=_ratio(t.gate_passed, t.gated),
                fallback_share=_ratio(t.fallback_requests, t.requests),
                cache_hit_rate=_ratio(t.cached_tokens, t.input_tokens),
                cache_hits=t.cache_hits,
                response_cache_rate=_ratio(t.cache_hits, t.requests),
                saved_usd=t.saved_usd,
            )
        )
    out.sort(key=lambda s: (s.lcpr is None, -(s.lcpr or _ZERO), s.segment))
    return out


def _clean_attempt(t: SegmentTotals, dedicated_usd: Decimal) -> Decimal | None:
    """List-price cost of one clean attempt: the average cost of the segment's successful
    first attempts, with dedicated hours priced at the segment's blended cost per token."""
    if not t.clean_attempts:
        return None
    per_attempt = t.clean_attempt_cost_usd / t.clean_attempts
    total_tokens = t.input_tokens + t.output_tokens
    if dedicated_usd and total_tokens:
        per_attempt += dedicated_usd / total_tokens * t.clean_attempt_tokens / t.clean_attempts
    return per_attempt


# --- consensus routes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsensusTotals:
    """Ledger sums for one consensus route over a period."""

    route: str
    requests: int
    agree: int
    majority: int
    disagree: int
    attempts: int
    cost_usd: Decimal  # every attempt of these requests (failed and cancelled ones too)
    answered: int  # candidate attempts that answered
    answered_cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class ConsensusLine:
    """Agreement rate and cost multiple of one consensus route.

    `cost_multiple` = mean cost of a consensus request ÷ mean cost of one candidate call that
    answered: how many single calls' worth of money one consensus answer costs (3 candidates
    at one price that all answer: 3.0×; failed and cancelled candidates raise it).
    """

    route: str
    requests: int
    agree_rate: Decimal | None
    majority_rate: Decimal | None
    disagree_rate: Decimal | None
    attempts_per_request: Decimal | None
    mean_request_usd: Decimal | None
    mean_candidate_usd: Decimal | None
    cost_multiple: Decimal | None


def consensus_line(t: ConsensusTotals) -> ConsensusLine:
    n = Decimal(t.requests)

    def share(part: int) -> Decimal | None:
        return Decimal(part) / n if t.requests else None

    mean_request = t.cost_usd / n if t.requests else None
    mean_candidate = t.answered_cost_usd / Decimal(t.answered) if t.answered else None
    multiple = (
        mean_request / mean_candidate
        if mean_request is not None and mean_candidate is not None and mean_candidate > 0
        else None
    )
    return ConsensusLine(
        route=t.route,
        requests=t.requests,
        agree_rate=share(t.agree),
        majority_rate=share(t.majority),
        disagree_rate=share(t.disagree),
        attempts_per_request=Decimal(t.attempts) / n if t.requests else None,
        mean_request_usd=mean_request,
        mean_candidate_usd=mean_candidate,
        cost_multiple=multiple,
    )
