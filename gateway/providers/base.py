"""What every upstream adapter returns, whatever protocol it speaks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from routing.model import DeploymentSpec, Timeouts

# Why an upstream call failed, before any routing decision is made about it: defined once in
# routing (pure, importable from both sides) and re-exported here for the adapters.
from routing.outcomes import CONNECT, CUT, MALFORMED, STATUS, STREAM_ERROR, TIMEOUT, OutcomeKind

__all__ = [
    "CONNECT",
    "CUT",
    "MALFORMED",
    "STATUS",
    "STREAM_ERROR",
    "TIMEOUT",
    "Adapter",
    "OutcomeKind",
    "UpstreamError",
    "UpstreamReply",
    "UpstreamStream",
    "unsupported_message",
]


class UpstreamError(Exception):
    def __init__(
        self,
        kind: OutcomeKind,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.body = body
        self.headers: Mapping[str, str] = headers or {}
        self.request_id = request_id
        # What the provider itself answered, when the client is shown another status
        # (Anthropic's 529 "overloaded" reaches clients as 503); the ledger keeps this one.
        self.upstream_status = upstream_status if upstream_status is not None else status


@dataclass(slots=True)
class UpstreamReply:
    status: int
    raw: bytes
    data: dict[str, Any]
    request_id: str | None
    # The provider's x-ratelimit-* headers, when it sent any (limits learned for routing).
    limits: Mapping[str, str] | None = None


class UpstreamStream(Protocol):
    request_id: str | None
    limits: Mapping[str, str] | None

    def blocks(self) -> AsyncIterator[bytes]:
        """Complete raw SSE events grouped by network read; ends after `[DONE]` or raises
        UpstreamError."""
        ...

    async def close(self) -> None: ...


def unsupported_message(deployment: DeploymentSpec, endpoint: str) -> str:
    """Why `deployment` cannot serve `/v1/{endpoint}` (an adapter's `supports` said no)."""
    return (
        f"Deployment {deployment.id} ({deployment.protocol}) does not serve /v1/{endpoint}; "
        "route this model to an OpenAI-protocol deployment."
    )


class Adapter(Protocol):
    def supports(self, deployment: DeploymentSpec, endpoint: str) -> bool:
        """Whether `deployment` can serve `endpoint` at all. Asked before the attempt
        loop, so a request no target can serve is refused without an upstream attempt."""
        ...

    async def call(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamReply: ...

    async def open_stream(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamStream: ...

    async def close(self) -> None: ...
