"""Per-request plans for the balancing strategies: cost, weighted and latency.

Pure: the gateway passes a snapshot of live state (loads, learned limits, prices resolved
for today, breaker states, prompt-cache affinity, the clock) and gets back the ordered plan
plus, for `explain`, every deployment's expected cost and the reason it was skipped.

Skips are hard or soft. Hard ones (route requirements, a missing capability, a context
window too small) remove the deployment: trying it cannot work or is not allowed. Soft ones
(breaker open, rate limited, at capacity) move it after every eligible deployment, as a
last resort, because "busy" is better than "no answer".
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from routing.live import BYTES_PER_TOKEN, DeploymentLoad, RouteStats, family_of
from routing.model import DeploymentSpec, Plan, PlannedAttempt, RouteSpec
from routing.shape import PER_IMAGE, PER_MESSAGE, RequestShape

# USD per 1M tokens as floats: input, cached input, output. Estimates only compare
# deployments, so floats are exact enough; the ledger prices with Decimal.
Rates = tuple[float, float, float]
# Output tokens assumed when neither the request nor the route's history says.
DEFAULT_OUTPUT_TOKENS = 256
# Providers cache prefixes of at least this many tokens (OpenAI and Anthropic's minimum).
MIN_CACHEABLE_TOKENS = 1024
# latency: one request in this many goes to a random eligible deployment, to re-measure it.
EXPLORE_EVERY = 50
_UNKNOWN = math.inf
_IDLE = DeploymentLoad()


_NOTHING: Mapping[str, Any] = MappingProxyType({})


class LiveView(NamedTuple):
    """Everything the planner reads that changes while the gateway runs. (A named tuple,
    as Candidate: built per request and per candidate, and a frozen dataclass costs a
    `object.__setattr__` per field to build.)"""

    now: float
    loads: Mapping[str, DeploymentLoad] = _NOTHING
    rates: Mapping[str, Rates | None] = _NOTHING
    breaker_open: Mapping[str, bool] = _NOTHING
    # prompt prefix key → the deployments that served it lately, most recent first
    affinity: Mapping[str, tuple[str, ...]] = _NOTHING
    route_stats: RouteStats | None = None


class Candidate(NamedTuple):
    deployment: DeploymentSpec
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    expected_cost_usd: float  # math.inf when the price is unknown
    cost_without_cache_usd: float  # the same with nothing cached here
    skipped: str | None = None  # why it is not among the eligible, if it is not
    hard: bool = False  # skipped for good, not merely moved to the end
    note: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    plan: Plan
    candidates: tuple[Candidate, ...]  # plan order, then the deployments left out
    reason: str


def input_tokens(shape: RequestShape, dep: DeploymentSpec, load: DeploymentLoad) -> int:
    per_token = load.bytes_per_token or BYTES_PER_TOKEN[family_of(dep.upstream_model)]
    return (
        math.ceil(shape.text_bytes / per_token)
        + PER_MESSAGE * shape.messages
        + PER_IMAGE * shape.images
    )


def expected_cost(
    rates: Rates | None, uncached: int, cached: int, output: int, free: bool
) -> float:
    if free:
        return 0.0
    if rates is None:
        return _UNKNOWN
    return (uncached * rates[0] + cached * rates[1] + output * rates[2]) / 1_000_000


def _skip(
    route: RouteSpec, dep: DeploymentSpec, shape: RequestShape, live: LiveView, need: int
) -> tuple[str | None, bool]:
    """(reason, hard) for a deployment that cannot or should not go first, else (None, _)."""
    require = route.require
    if require is not None:
        if require.regions is not None and dep.region not in require.regions:
            return f"region {dep.region or 'unknown'} not in {sorted(require.regions)}", True
        if require.zero_retention and not dep.zero_retention:
            return "no zero-retention agreement", True
        if require.kinds is not None and dep.provider_kind not in require.kinds:
            return f"kind {dep.provider_kind} not allowed", True
    if dep.capabilities is not None:
        for wanted in sorted(shape.needs):  # sorted: the same reason in every process
            if wanted not in dep.capabilities:
                return f"no {wanted} support", True
    if dep.context_window is not None and need > dep.context_window:
        return f"context window {dep.context_window} < {need} tokens", True
    if live.breaker_open.get(dep.id, False):
        return "circuit breaker open", False
    load = live.loads.get(dep.id, _IDLE)
    if load.limited_until > live.now:
        return f"rate limited for {load.limited_until - live.now:.1f} s", False
    if dep.rpm is not None and load.requests.total(live.now) + load.remote_requests >= dep.rpm:
        return f"at its {dep.rpm} requests/min limit", False
    if dep.tpm is not None and load.tokens.total(live.now) + load.remote_tokens + need > dep.tpm:
        return f"at its {dep.tpm} tokens/min limit", False
    if dep.max_concurrency is not None:
        busy = load.in_flight + load.remote_in_flight
        if busy >= dep.max_concurrency:
            return f"at capacity ({busy}/{dep.max_concurrency} in flight)", False
    return None, False


def candidate(
    route: RouteSpec,
    dep: DeploymentSpec,
    shape: RequestShape,
    live: LiveView,
    output: int,
) -> Candidate:
    load = live.loads.get(dep.id, _IDLE)
    tokens = input_tokens(shape, dep, load)
    cached = 0
    key = shape.prefix_key
    if route.affinity and key is not None and dep.id in live.affinity.get(key, ()):
        per_token = load.bytes_per_token or BYTES_PER_TOKEN[family_of(dep.upstream_model)]
        prefix = min(tokens, math.ceil(shape.prefix_bytes / per_token))
        if prefix >= MIN_CACHEABLE_TOKENS:
            cached = prefix
    need = tokens + (shape.max_output_tokens or 0)
    reason, hard = _skip(route, dep, shape, live, need)
    # A dedicated GPU is already paid for: it costs nothing more while it has room.
    free = dep.provider_kind == "dedicated"
    rates = live.rates.get(dep.id)
    cost = expected_cost(rates, tokens - cached, cached, output, free)
    plain = expected_cost(rates, tokens, 0, output, free) if cached else cost
    note = ""
    if free and dep.max_concurrency is not None:
        busy = load.in_flight + load.remote_in_flight
        note = f"dedicated, {busy}/{dep.max_concurrency} in flight"
    elif cached:
        note = f"~{cached} prefix tokens cached here"
    return Candidate(dep, tokens, cached, output, cost, plain, reason, hard, note)


def decide(
    route: RouteSpec,
    deployments: Mapping[str, DeploymentSpec],
    shape: RequestShape,
    live: LiveView,
) -> Decision:
    stats = live.route_stats
    output = shape.max_output_tokens or (
        round(stats.ewma_output_tokens)
        if stats is not None and stats.ewma_output_tokens
        else DEFAULT_OUTPUT_TOKENS
    )
    targets = [candidate(route, deployments[t], shape, live, output) for t in route.targets]
    eligible = [c for c in targets if c.skipped is None]
    soft = [c for c in targets if c.skipped is not None and not c.hard]
    if route.strategy == "cost":
        ordered, reason = _by_cost(eligible)
    elif route.strategy == "weighted":
        ordered, reason = _by_weight(route, eligible, shape)
    else:
        ordered, reason = _by_latency(eligible, shape, live)
    if not ordered:
        reason = "no eligible deployment: trying the busy ones" if soft else "none eligible"
    soft.sort(key=_cost_key)
    fallbacks = [candidate(route, deployments[f], shape, live, output) for f in route.fallbacks]
    chosen = [*ordered, *soft, *(c for c in fallbacks if not c.hard)]
    left_out = [c for c in (*targets, *fallbacks) if c.hard]
    plan = _plan(route, [c.deployment for c in chosen], reason)
    return Decision(plan, (*chosen, *left_out), reason)


def plan_cost_route(
    route: RouteSpec,
    deployments: Mapping[str, DeploymentSpec],
    shape: RequestShape,
    live: LiveView,
) -> tuple[Plan, str] | None:
    """`decide`'s plan and reason for a cost route in the common case — every target
    eligible and no prompt prefix this route has seen before — without building the
    Candidates that only `route explain` reads; None when `decide` must answer (some target
    is skipped, or prompt-cache affinity may apply). The request path calls this first."""
    key = shape.prefix_key
    if not route.targets or (route.affinity and key is not None and key in live.affinity):
        return None
    stats = live.route_stats
    output = shape.max_output_tokens or (
        round(stats.ewma_output_tokens)
        if stats is not None and stats.ewma_output_tokens
        else DEFAULT_OUTPUT_TOKENS
    )
    asked = shape.max_output_tokens or 0
    loads, rates = live.loads, live.rates
    scored = []
    for index, name in enumerate(route.targets):
        dep = deployments[name]
        tokens = input_tokens(shape, dep, loads.get(dep.id, _IDLE))
        if _skip(route, dep, shape, live, tokens + asked)[0] is not None:
            return None
        free = dep.provider_kind == "dedicated"
        # The order _by_cost sorts in (stably: the index keeps the configured order on ties).
        cost = expected_cost(rates.get(dep.id), tokens, 0, output, free)
        scored.append((cost, 0 if free else 1, index, dep))
    scored.sort()
    first_cost, first_paid = scored[0][0], scored[0][1]
    if first_cost == 0.0 and not first_paid:
        reason = "dedicated capacity free"
    elif first_cost == _UNKNOWN:
        reason = "no price known for any eligible deployment"
    else:
        reason = "cheapest eligible"
    chosen = [entry[3] for entry in scored]
    for name in route.fallbacks:
        dep = deployments[name]
        tokens = input_tokens(shape, dep, loads.get(dep.id, _IDLE))
        if not _skip(route, dep, shape, live, tokens + asked)[1]:
            chosen.append(dep)
    return _plan(route, chosen, reason), reason


# Plans are immutable and most requests of a route get one of a few orders: built once per
# (route, order, reason) rather than per request. Keyed by the RouteSpec object's identity
# (hashing a whole frozen spec per request would cost what the cache saves); the entry holds
# the spec, so its id cannot be reused while the entry exists, and a reloaded route (a new
# spec) never gets an old plan.
_PLANS: dict[tuple[int, tuple[str, ...], str], tuple[RouteSpec, Plan]] = {}
_PLANS_MAX = 4096


def _plan(route: RouteSpec, chosen: list[DeploymentSpec], reason: str) -> Plan:
    key = (id(route), tuple([d.id for d in chosen]), reason)
    found = _PLANS.get(key)
    if found is not None and found[0] is route:
        return found[1]
    attempts = tuple(
        PlannedAttempt(d, "primary" if i == 0 else "fallback") for i, d in enumerate(chosen)
    )
    plan = Plan(
        route=route.name,
        strategy=route.strategy,
        attempts=attempts,
        timeouts=route.timeouts,
        workload=route.workload,
        retry=route.retry,
        hedge_after_ms=route.hedge_after_ms,
        reason=reason,
        gate=route.gate,
        fanout=route.fanout,
    )
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()  # many distinct orders (weighted, latency): start over
    _PLANS[key] = (route, plan)
    return plan


def _cost_key(c: Candidate) -> tuple[float, int]:
    # Ties: dedicated first (already paid for), then the configured order (stable sort).
    return c.expected_cost_usd, 0 if c.deployment.provider_kind == "dedicated" else 1


def _by_cost(eligible: list[Candidate]) -> tuple[list[Candidate], str]:
    ordered = sorted(eligible, key=_cost_key)
    if not ordered:
        return ordered, ""
    first = ordered[0]
    if first.expected_cost_usd == 0.0 and first.deployment.provider_kind == "dedicated":
        return ordered, "dedicated capacity free"
    if (
        first.cached_tokens
        and len(ordered) > 1
        and first.cost_without_cache_usd > ordered[1].expected_cost_usd
    ):
        return ordered, "prompt-cache affinity"
    if first.expected_cost_usd == _UNKNOWN:
        return ordered, "no price known for any eligible deployment"
    return ordered, "cheapest eligible"


def _by_weight(
    route: RouteSpec, eligible: list[Candidate], shape: RequestShape
) -> tuple[list[Candidate], str]:
    # With affinity on, a long shared prefix is the key: each prefix stays on one
    # deployment (where it is cached) while different prefixes still split by weight.
    by_prefix = (
        shape.sticky_key is None
        and route.affinity
        and shape.prefix_key is not None
        and shape.prefix_bytes >= MIN_CACHEABLE_TOKENS * BYTES_PER_TOKEN["default"]
    )
    key = shape.sticky_key or (shape.prefix_key if by_prefix else None) or shape.request_id
    weights = dict(zip(route.targets, route.weights, strict=False))
    scored = []
    for c in eligible:
        # Weighted rendezvous hashing: the same key picks the same target while it stays
        # eligible, and only that target's share moves when another one drops out. Not CRC:
        # it is affine, so one key's scores for two targets would be tied to each other and
        # the shares would not follow the weights.
        digest = hashlib.blake2b(f"{key}\x00{c.deployment.id}".encode(), digest_size=4).digest()
        h = int.from_bytes(digest, "big")
        u = (h + 1) / 4_294_967_297
        scored.append((weights.get(c.deployment.id, 1.0) / -math.log(u), c))
    scored.sort(key=lambda pair: pair[0], reverse=True)
    ordered = [c for _, c in scored]
    if shape.sticky_key:
        return ordered, f"weighted (sticky {route.sticky})"
    if by_prefix:
        return ordered, "weighted (by prompt prefix)"
    return _with_affinity(ordered, shape, "weighted (by request id)", sticky=False)


def _by_latency(
    eligible: list[Candidate], shape: RequestShape, live: LiveView
) -> tuple[list[Candidate], str]:
    def ttft(c: Candidate) -> float:
        # Unmeasured deployments look fastest, so every one gets measured.
        return live.loads.get(c.deployment.id, _IDLE).ewma_ttft_ms or 0.0

    ordered = sorted(eligible, key=ttft)
    if len(eligible) < 2:
        return ordered, "only eligible deployment"
    h = zlib.crc32(shape.request_id.encode())
    if h % EXPLORE_EVERY == 0:
        # Now and then one at random, so a deployment measured slow once (a cold start)
        # gets measured again instead of starving on a stale average.
        pick = eligible[(h >> 8) % len(eligible)]
        ordered.remove(pick)
        ordered.insert(0, pick)
        return ordered, "latency (exploring)"
    if len(eligible) > 2:
        # Power of two choices: two candidates picked from the request id, the faster wins;
        # this spreads load where always taking the single fastest would herd onto it.
        a = h % len(eligible)
        b = (a + 1 + (h >> 8) % (len(eligible) - 1)) % len(eligible)
        winner = min(eligible[a], eligible[b], key=ttft)
        ordered.remove(winner)
        ordered.insert(0, winner)
    return _with_affinity(ordered, shape, "lower EWMA time to first token", sticky=False)


def _with_affinity(
    ordered: list[Candidate], shape: RequestShape, reason: str, sticky: bool
) -> tuple[list[Candidate], str]:
    """Put the deployment holding the request's prompt prefix first, unless that costs
    more than the strategy's choice would."""
    if sticky or len(ordered) < 2 or shape.prefix_key is None:
        return ordered, reason
    holder = next((c for c in ordered if c.cached_tokens), None)
    if holder is None or holder is ordered[0]:
        return ordered, reason
    if holder.expected_cost_usd <= ordered[0].expected_cost_usd:
        ordered.remove(holder)
        ordered.insert(0, holder)
        return ordered, "prompt-cache affinity"
    return ordered, reason
