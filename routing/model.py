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


@dataclass(frozen=True, slots=True)
class RouteSpec:
    name: str
    strategy: str
    targets: tuple[str, ...]
    timeouts: Timeouts
    workload: str | None = None


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
