"""What a provider's own Batch API is asked and answers, whatever the provider: the lines sent,
the batch's state, one result per line, and the client interface (:class:`ProviderBatches`).

Kept apart from :mod:`gateway.batch.upstream` (which picks the client for a deployment) so the
clients can import these types without an import cycle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Where a batch stands upstream. Terminal ones never change again.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

# UpstreamResult.error for lines the provider never ran.
EXPIRED = "batch_expired"
CANCELLED = "batch_cancelled"


@dataclass(frozen=True, slots=True)
class UpstreamLine:
    # Farebox uses "<line_no>" (its own numbering); unique within the upstream batch.
    custom_id: str
    # The request body, `model` already the deployment's upstream model.
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UpstreamState:
    # validating | in_progress | finalizing | completed | failed | expired | cancelling |
    # cancelled (OpenAI's names).
    status: str
    total: int
    completed: int
    failed: int
    # Why the whole batch failed, when it did (the provider's messages, joined).
    error: str | None = None

    @property
    def done(self) -> bool:
        """Whether the batch has ended upstream (its results are final)."""
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    custom_id: str
    # The line's response status (200 = answered); None when the provider never ran it.
    http_status: int | None
    # The provider's response body (OpenAI's shape for OpenAI endpoints), or its error object.
    body: dict[str, Any] | None
    # OpenAI-shaped usage (the body's `usage`) when the provider reported it.
    usage: dict[str, Any] | None
    provider_request_id: str | None
    # None on success; otherwise why: "http_<status>", "batch_expired", "batch_cancelled", or
    # the provider's own error code for a line it refused without running it.
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class ProviderBatches(Protocol):
    """One deployment's provider, driven through its Batch API.

    Every method raises :class:`gateway.providers.base.UpstreamError` when the provider
    cannot be reached or answers with an error status."""

    async def find(self, farebox_batch_id: str, *, not_before: int | None = None) -> str | None:
        """The newest upstream batch already created for `farebox_batch_id` (by its
        metadata), if any: a gateway killed between `submit` and saving its answer must
        not submit the same lines twice. `not_before` (unix seconds, e.g. the Farebox
        batch's creation) stops the search at older upstream batches."""
        ...

    async def submit(
        self,
        farebox_batch_id: str,
        endpoint: str,
        lines: Sequence[UpstreamLine],
        window: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Upload the lines and create the upstream batch; its upstream id. `endpoint` is the
        OpenAI batch endpoint ("/v1/chat/completions", "/v1/responses", "/v1/embeddings");
        `metadata`: the client's own batch metadata, passed on (Farebox adds its batch id)."""
        ...

    async def state(self, upstream_id: str) -> UpstreamState: ...

    def results(self, upstream_id: str) -> AsyncIterator[UpstreamResult]:
        """Every line result the provider has written (output and error files), streamed;
        complete once :attr:`UpstreamState.done`. Lines the provider lists in neither file
        are not yielded."""
        ...

    async def cancel(self, upstream_id: str) -> None:
        """Ask the provider to stop; a batch that has already ended is left as it is."""
        ...

    async def discard(self, upstream_id: str) -> None:
        """Delete what the batch left at the provider (its input, output and error files)
        once its results are safely kept; files already gone are fine."""
        ...
