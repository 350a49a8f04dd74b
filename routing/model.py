"""Plain, immutable descriptions of what can be routed to.

The gateway builds these from the validated YAML so that routing never depends on the
config schema (pydantic) or on anything with I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# `candidate`: a consensus / speculative fan-out call beyond the first (gateway.strategies.fanout).
# `guard`: a guard model asked about the request before it is sent (gateway/guard/model.py).
ROLES = (
    "primary",
    "retry",
    "fallback",
    "hedge",
    "escalation",
    "repair",
    "drill",
    "cache_hit",
    "candidate",
    "batch",
    "guard",
)


# What a request may need from a deployment (see routing.shape.request_shape).
CAPABILITIES = ("tools", "json_schema", "vision", "audio")


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    id: str
    provider: str
    provider_kind: str
    protocol: str
    upstream_model: str
    context_window: int | None = None
    # In-flight requests it takes before traffic overflows elsewhere (dedicated GPUs).
    max_concurrency: int | None = None
    # None: not declared, assumed capable of everything (declaring narrows it).
    capabilities: frozenset[str] | None = None
    region: str | None = None
    zero_retention: bool = False
    # Provider limits as configured (requests / tokens per minute).
    rpm: int | None = None
    tpm: int | None = None
    # Serves the Responses API natively, and the built-in Responses tools it runs.
    responses_native: bool = False
    builtin_tools: frozenset[str] = frozenset()
    # The provider runs batches through its own Batch API (its batch price applies).
    batch_api: bool = False


@dataclass(frozen=True, slots=True)
class Requirements:
    """Route constraints every deployment must meet (geo and compliance segmentation)."""

    regions: frozenset[str] | None = None
    zero_retention: bool = False
    kinds: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_ms: int
    ttft_ms: int
    total_ms: int
    # Longest silence allowed between two stream chunks once the first has arrived.
    idle_ms: int = 30_000
    # Cap on one non-stream try (its answer arrives all at once, so neither TTFT nor idle
    # time can tell a hung upstream from a long generation); None: the plan's remaining time.
    attempt_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Tries of the same target before moving on: `attempts` counts the first try too."""

    attempts: int = 2
    backoff_ms: int = 100
    max_backoff_ms: int = 2_000


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """A route's quality gate and what to do when an answer fails it."""

    # routing.gates.GateSpec; typed loosely so this module stays free of imports.
    spec: Any
    on_fail: str = "escalate"  # escalate: next target | repair: re-prompt once, then escalate
    # Streams are gated only if the route buffers them (the client then gets the answer
    # as a stream once it passed); otherwise they pass through ungated.
    buffer_streams: bool = False


@dataclass(frozen=True, slots=True)
class FanoutPolicy:
    """How a consensus or speculative route asks several targets at once."""

    kind: str  # "consensus" | "speculative"
    n: int  # candidates started at once (resolved: never more than the targets)
    # consensus: which answer a tie (or a passed disagreement) returns, and what a
    # disagreement does: `fail` answers 409 with every candidate, `pass` answers with a flag.
    tie_break: str = "first"  # cheapest | strongest | first
    on_disagree: str = "fail"  # fail | pass
    compare: str = "auto"  # auto | text | json | tool_calls
    # Streaming requests: `buffer` (answer as a stream once decided) or `refuse` (400).
    streaming: str = "buffer"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    name: str
    strategy: str
    targets: tuple[str, ...]
    timeouts: Timeouts
    workload: str | None = None
    fallbacks: tuple[str, ...] = ()
    retry: RetryPolicy = NO_RETRY
    hedge_after_ms: int | None = None
    # weighted: one weight per target, in order; sticky: what keeps a client on one target
    # ("user", "prompt_cache_key" or "header:<name>"; None: by request id).
    weights: tuple[float, ...] = ()
    sticky: str | None = None
    require: Requirements | None = None
    # Prompt-cache affinity for the balancing strategies (cost, weighted, latency).
    affinity: bool = True
    gate: GatePolicy | None = None
    # quality: strong (last target) first when the failure estimate is above `threshold`,
    # or above the live quantile that keeps `strong_share` of calls strong.
    threshold: float | None = None
    strong_share: float | None = None
    router_model: str | None = None
    fanout: FanoutPolicy | None = None


# Strategies whose order is decided per request from live state; the others are fixed.
DYNAMIC_STRATEGIES = frozenset({"cost", "weighted", "latency", "quality"})


@dataclass(frozen=True, slots=True)
class PlannedAttempt:
    deployment: DeploymentSpec
    role: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What to try for one request, in order."""

    route: str
    strategy: str
    attempts: tuple[PlannedAttempt, ...]
    timeouts: Timeouts
    workload: str | None = None
    notes: tuple[str, ...] = field(default=())
    retry: RetryPolicy = NO_RETRY
    hedge_after_ms: int | None = None
    # Why the first target was chosen (x-farebox-route-reason, ledger `decision`).
    reason: str | None = None
    gate: GatePolicy | None = None
    fanout: FanoutPolicy | None = None
