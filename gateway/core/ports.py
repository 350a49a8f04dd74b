"""What the service exchanges with the rest of the gateway: its answers, and protocols
for what it needs (with a no-op)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from gateway.ledger.events import AttemptRow
from gateway.providers.base import UpstreamError
from routing.model import Plan
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
