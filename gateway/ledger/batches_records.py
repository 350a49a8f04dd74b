"""Batch statuses and records, without SQLAlchemy: what the batch store, runner and line
committer share with BatchesRepository, so a serving worker on Postgres loads SQLAlchemy only
once a batch exists (gateway/ledger/files_batches_serving.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.ledger_rows import AttemptRow, RequestRow

# A batch in one of these still has work (or a cancel) for some replica's runner.
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass(frozen=True, slots=True)
class FinishedLine:
    """One line's outcome with the ledger rows of the call that produced it."""

    line_no: int
    custom_id: str
    status: str  # completed | failed
    request_id: str | None
    http_status: int | None
    body: dict[str, Any] | None
    request: RequestRow | None
    attempts: Sequence[AttemptRow]
