"""What every upstream adapter returns, whatever protocol it speaks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import orjson

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


class UpstreamReply:
    """One upstream answer: its status, JSON body, the body decoded, the provider's
    request id and rate-limit headers.

    `data` is decoded from `raw` when first read if the adapter did not decode it: an
    answer Farebox wrote itself from templates (a translated Response,
    gateway/providers/responses_answer.py) is then never parsed back unless a gate or a
    consensus reads it. `usage` is what the meter reads: `data`'s usage unless the adapter
    set it (in any OpenAI naming, routing.cost.usage_from_openai)."""

    __slots__ = ("_data", "_usage", "limits", "raw", "request_id", "status")

    def __init__(
        self,
        status: int,
        raw: bytes,
        data: dict[str, Any] | None,
        request_id: str | None,
        # The provider's x-ratelimit-* headers, when it sent any (limits learned for routing).
        limits: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.raw = raw
        self._data = data
        self.request_id = request_id
        self.limits = limits
        self._usage: Any = _FROM_DATA

    @property
    def data(self) -> dict[str, Any]:
        data = self._data
        if data is None:
            data = self._data = orjson.loads(self.raw)
        return data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        self._data = value

    def usage(self) -> Any:
        usage = self._usage
        return self.data.get("usage") if usage is _FROM_DATA else usage

    def rewrite(self, raw: bytes, usage: Any) -> None:
        """The answer is now `raw` (a JSON object, decoded only if `data` is read) and its
        usage `usage` (the meter's, not necessarily as `raw` names it)."""
        self.raw = raw
        self._data = None
        self._usage = usage

    def __repr__(self) -> str:
        return f"UpstreamReply(status={self.status}, raw={self.raw[:80]!r}…)"


_FROM_DATA: Any = object()


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
