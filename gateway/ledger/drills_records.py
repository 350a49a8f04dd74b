"""Failover drills as the gateway sees them, without SQLAlchemy: the statuses, the row record
and the row -> record mapping, shared by the SQLAlchemy repository (drills_repository.py) and
the asyncpg reads of a serving worker on Postgres (drills_serving.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

RUNNING = "running"
STOPPING = "stopping"
FINISHING = "finishing"
FINAL = ("completed", "stopped", "aborted")
# How long before a drill's window a request that has attempts in it may have arrived.
EARLIER = timedelta(hours=1)
# Errors-by-class entries for attempts that failed without an error class of their own.
GATE_FAILED = "gate_failed"
NOT_DELIVERED = "not_delivered"


@dataclass(frozen=True, slots=True)
class DrillRow:
    id: str
    route: str
    target: str
    percent: float
    simulate_outage: bool
    started_at: datetime
    ends_at: datetime
    status: str
    abort_after_errors: int
    abort_error_rate: float
    created_by: str | None
    schedule: str | None
    finished_at: datetime | None
    result: str | None
    verdict: dict[str, Any] | None
    report: str | None
    updated_at: datetime
    # Checks tried on the cohort (gateway/config/guard.py's form); `target` is "" when the
    # drill only tries them.
    guard: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        for name in ("started_at", "ends_at", "finished_at", "updated_at"):
            value = out[name]
            out[name] = value.isoformat() if value is not None else None
        return out


def aware_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def row_of(mapping: Mapping[str, Any]) -> DrillRow:
    """A DrillRow from a row's column -> value mapping (SQLAlchemy's `_mapping`, asyncpg's
    Record)."""
    data = dict(mapping)
    for name in ("started_at", "ends_at", "finished_at", "updated_at"):
        data[name] = aware_utc(data[name])
    return DrillRow(**data)
