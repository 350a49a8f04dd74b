"""One client call as it moves through the service (`CallContext`), and the interfaces the
meter hands its rows to (`Ledger`, `Settles`, `DrillObserver`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.keys.auth import Principal
from gateway.ledger_rows import AttemptRow, RequestRow
from gateway.observability import telemetry
from routing.answer_guard import AnswerGuard
from routing.masking import Masker
from routing.shape import RequestShape


class Ledger(Protocol):
    def record(self, request: RequestRow, attempts: list[AttemptRow]) -> None: ...


class Settles(Protocol):
    def settle(self, row: RequestRow | None) -> None: ...


class DrillObserver(Protocol):
    def observe(self, drill_id: str, attempts: list[AttemptRow]) -> None: ...


class NullLedger:
    """Used when the ledger is switched off (FAREBOX_LEDGER_ENABLED=false)."""

    def record(self, request: RequestRow, attempts: list[AttemptRow]) -> None:
        return None


@dataclass(slots=True)
class CallContext:
    """One client call as it moves through the service."""

    request_id: str
    key_id: str | None
    endpoint: str
    requested_model: str
    stream: bool
    payload: dict[str, Any]
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    t0: float = field(default_factory=time.perf_counter)
    attempts: list[AttemptRow] = field(default_factory=list)
    ttft_ms: float | None = None
    input_estimate: int | None = None
    # The authenticated caller (None when auth is off); its team and tags go to the ledger.
    principal: Principal | None = None
    # The key's limit reservation (gateway.limits.limiter), settled with this call's real usage.
    admission: Settles | None = None
    # Set when the request is in a running drill's cohort (gateway.drills.board).
    drill_id: str | None = None
    # Set for balancing routes: what the planner measured of the request.
    shape: RequestShape | None = None
    # Span ids when tracing is on (gateway.observability.telemetry); None otherwise.
    trace: telemetry.RequestTrace | None = None
    # The route and workload the call was planned on, and its body size: what the journal
    # needs to rebuild the request if the process dies mid-call.
    route: str = ""
    workload: str | None = None
    body_bytes: int = 0
    # Upstream calls journalled but not metered yet: id(PlannedAttempt) -> attempt id.
    intents: dict[int, str] = field(default_factory=dict)
    # The agent workflow this call belongs to (client tag, or the previous_response_id chain).
    workflow_id: str | None = None
    # Responses streams: the terminal Response object, for the conversation store.
    final_response: dict[str, Any] | None = None
    # Responses streams: set by the relay just before it hands over its last block, so that
    # block goes out with the end of the response in one write (gateway/api/common.py).
    stream_ended: bool = False
    # A line of a Batch API batch: the batch's id (gateway/batch/).
    batch_id: str | None = None
    # What the route's guard checks did, as `x-farebox-guard` says it ("reroute;
    # rerouted=pii; flagged=injection"; gateway/guard), the ledger's `requests.guard`;
    # and the placeholders to put back in the answer when a mask check restores them.
    guard: str | None = None
    unmask: Masker | None = None
    # The route's answer checks for this request (gateway/providers/answer_checks.py runs
    # them on each upstream answer; `note_answer_guard` keeps `guard` up to date).
    answer_guard: AnswerGuard | None = None

    def note_answer_guard(self) -> None:
        if self.answer_guard is not None:
            self.guard = self.answer_guard.summary()

    def stream_ended_now(self) -> bool:
        """`stream_ended`, as the callable gateway.api.common.send_stream asks after each
        block."""
        return self.stream_ended
