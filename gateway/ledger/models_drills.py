"""The `drills` table: one row per failover drill, its state and its verdict."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.ledger.base import ID, NAME, TAG, Base


class DrillRecord(Base):
    __tablename__ = "drills"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    route: Mapped[str] = mapped_column(NAME)
    target: Mapped[str] = mapped_column(NAME)
    percent: Mapped[float] = mapped_column(Float)
    simulate_outage: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # running → finishing → completed | stopped | aborted
    status: Mapped[str] = mapped_column(TAG)
    abort_after_errors: Mapped[int] = mapped_column(Integer)
    abort_error_rate: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(NAME)
    # The YAML schedule that started it, if any.
    schedule: Mapped[str | None] = mapped_column(NAME)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[str | None] = mapped_column(String(8))  # PASS | FAIL
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    report: Mapped[str | None] = mapped_column(Text)
    # Guard checks the drill tries on its cohort in flag mode (gateway/config/guard.py's
    # form); NULL for a failover drill only (migration 0017).
    guard: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_drills_status", "status"),
        Index("ix_drills_route_started_at", "route", "started_at"),
        Index("ix_drills_updated_at", "updated_at"),
    )


drills_table: Table = Base.metadata.tables["drills"]
