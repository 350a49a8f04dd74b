"""Plain, immutable descriptions of what can be routed to.

The gateway builds these from the validated YAML so that routing never depends on the
config schema (pydantic) or on anything with I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("primary", "retry", "fallback", "hedge", "escalation", "repair", "drill")


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    id: str
    provider: str
    provider_kind: str
    protocol: str
    upstream_model: str
    context_window: int | None = None


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
class RouteSpec:
    name: str
    strategy: str
    targets: tuple[str, ...]
    timeouts: Timeouts
    workload: str | None = None
    fallbacks: tuple[str, ...] = ()
    retry: RetryPolicy = NO_RETRY
    hedge_after_ms: int | None = None


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
