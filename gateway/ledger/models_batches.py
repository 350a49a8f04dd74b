"""Batch API state (gateway/batch/): one row per batch, one per finished line.

A batch's progress lives here, not in a replica's memory, so a gateway that restarts resumes
where it stopped: a line with a `batch_lines` row is done (its answer or error is in `body`)
and is never run again; a line without one runs. The line's row is written in the same
transaction as its ledger rows.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from gateway.ledger.base import COST, ID, NAME, TAG, Base


class BatchRecord(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(ID, primary_key=True)  # batch_… as the client saw it
    key_id: Mapped[str | None] = mapped_column(NAME)
    endpoint: Mapped[str] = mapped_column(TAG)  # /v1/chat/completions | /v1/responses | ...
    input_file_id: Mapped[str] = mapped_column(ID)
    completion_window: Mapped[str] = mapped_column(TAG)
    status: Mapped[str] = mapped_column(TAG)
    # How it runs: provider_batch | dedicated_fill | serverless (routing/batch_paths.py).
    path: Mapped[str | None] = mapped_column(TAG)
    route: Mapped[str | None] = mapped_column(NAME)
    model: Mapped[str | None] = mapped_column(NAME)
    deployment: Mapped[str | None] = mapped_column(NAME)
    upstream_batch_id: Mapped[str | None] = mapped_column(NAME)
    output_file_id: Mapped[str | None] = mapped_column(ID)
    error_file_id: Mapped[str | None] = mapped_column(ID)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    total: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    # The key budget held for the whole batch at submission, released as lines settle.
    reserved_usd: Mapped[Decimal | None] = mapped_column(COST)
    # The creating key's limits as they were (gateway/batch/principal.py): each line is
    # admitted and settled against them, whichever replica runs it and whenever.
    principal: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # `output_expires_after.seconds`: the output and error files expire that long after
    # they are written (None: they are kept until deleted).
    output_expires_after_s: Mapped[int | None] = mapped_column(Integer)
    # The replica running it and until when its claim holds (renewed while it runs).
    owner: Mapped[str | None] = mapped_column(NAME)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_batches_key_id_created_at", "key_id", "created_at"),
        Index("ix_batches_status", "status"),
    )


class BatchLineRecord(Base):
    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(ID, primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based, input order
    custom_id: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(TAG)  # completed | failed
    request_id: Mapped[str | None] = mapped_column(ID)
    http_status: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


batches_table: Table = Base.metadata.tables["batches"]
batch_lines_table: Table = Base.metadata.tables["batch_lines"]
