"""What the service exchanges with the rest of the gateway: its answers, protocols for what
it needs (with a no-op), and the attempt runner it hands to the strategies.

The strategies (gateway.strategies) sit below the service: the service dispatches to them and
passes itself in as an `AttemptRunner`, so they reach upstreams, the meter and the breakers
through this narrow interface and never import gateway.core.service (no cycle).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from gateway.core.metering import CallContext, Meter
from gateway.ledger_rows import AttemptRow
from gateway.providers.base import UpstreamError, UpstreamReply
from routing.model import Plan, PlannedAttempt, Timeouts
from routing.shape import RequestShape


class Tracker(Protocol):
    """Live routing state fed by attempts (gateway.core.live_routing.LiveRouting)."""

    def started(self, deployment: str, shape: RequestShape | None) -> None: ...
    def ended(self, deployment: str) -> None: ...
    def succeeded(
        self,
        plan: Plan,
        shape: RequestShape | None,
        row: AttemptRow,
        limits: Mapping[str, str] | None,
    ) -> None: ...
    def failed(self, deployment: str, error: UpstreamError) -> None: ...


class NullTracker:
    def started(self, deployment: str, shape: RequestShape | None) -> None:
        return None

    def ended(self, deployment: str) -> None:
        return None

    def succeeded(
        self,
        plan: Plan,
        shape: RequestShape | None,
        row: AttemptRow,
        limits: Mapping[str, str] | None,
    ) -> None:
        return None

    def failed(self, deployment: str, error: UpstreamError) -> None:
        return None


class BreakerBoard(Protocol):
    def allow(self, deployment: str) -> bool: ...
    def record(self, deployment: str, success: bool) -> None: ...
    def force_open(self, deployment: str) -> None: ...
    def open_map(self) -> Mapping[str, bool]: ...
    def last_failure_map(self) -> Mapping[str, float]: ...


@dataclass(slots=True)
class Completion:
    body: bytes
    deployment: str
    attempts: int
    cost_usd: Decimal | None
    fallback_reason: str | None = None
    gate: str | None = None  # the quality gate's verdict (x-farebox-gate), gated routes only
    # More response headers (x-farebox-consensus…), added by gateway.api.call.
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class StreamingCompletion:
    deployment: str
    attempts: int
    chunks: AsyncIterator[bytes]
    fallback_reason: str | None = None
    gate: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class QualityObserver(Protocol):
    """Gate pass rates fed by gated routes (gateway.core.quality_live.QualityLive)."""

    def observe(self, route: str, deployment: str, input_tokens: int, passed: bool) -> None: ...


class AttemptRunner(Protocol):
    """What a strategy may use of the service that called it (gateway.core.service.Service).

    Read-only properties, so the service's concrete meter, breakers and quality tracker
    satisfy it without the strategies knowing their classes.
    """

    @property
    def meter(self) -> Meter: ...
    @property
    def breakers(self) -> BreakerBoard: ...
    @property
    def tracker(self) -> Tracker: ...
    @property
    def quality(self) -> QualityObserver | None: ...

    def caller(self, ctx: CallContext) -> Callable[[PlannedAttempt, Timeouts], Awaitable[Any]]:
        """One non-stream upstream call for `ctx`, tracked and journalled."""
        ...

    async def walk(
        self,
        ctx: CallContext,
        plan: Plan,
        *,
        finish_on_failure: bool = True,
    ) -> tuple[PlannedAttempt, UpstreamReply, float, list[str]]:
        """Non-stream attempts of `plan` until one answers (see Service.walk)."""
        ...

    def record_success(
        self,
        ctx: CallContext,
        plan: Plan,
        attempt: PlannedAttempt,
        reply: UpstreamReply,
        started: float,
    ) -> AttemptRow: ...
