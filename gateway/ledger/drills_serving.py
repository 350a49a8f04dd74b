"""The drill reads a serving worker makes on a Postgres ledger, on asyncpg: the board's poll of
unfinished drills every second, the verdicts restored at start-up, the scheduler's "last
started". Drill changes and verdict aggregates (rare: a drill starts, stops or ends) go to
the SQLAlchemy DrillsRepository, created on first use. Same SQL as drills_repository.py's.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.ledger.drills_records import RUNNING, STOPPING, DrillRow, aware_utc, row_of
from gateway.ledger.pg import PgPool

if TYPE_CHECKING:
    from gateway.ledger.drills_repository import DrillsRepository

_COLUMNS = (
    "id, route, target, percent, simulate_outage, started_at, ends_at, status,"
    " abort_after_errors, abort_error_rate, created_by, schedule, finished_at, result,"
    " verdict, report, updated_at, guard"
)


class ServingDrills:
    def __init__(self, url: str, pool: PgPool) -> None:
        self.url = url
        self._pool = pool
        self._repository: DrillsRepository | None = None

    @property
    def sqlalchemy(self) -> DrillsRepository:
        if self._repository is None:
            from gateway.ledger.drills_repository import DrillsRepository

            self._repository = DrillsRepository.create(self.url)
        return self._repository

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class does not define: start, move, finish, side, ….
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.sqlalchemy, name)

    async def get(self, drill_id: str) -> DrillRow | None:
        raw = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM drills WHERE id = $1", drill_id)
        return row_of(raw) if raw is not None else None

    async def recent(
        self, limit: int = 50, statuses: tuple[str, ...] | None = None
    ) -> list[DrillRow]:
        if statuses is None:
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM drills ORDER BY started_at DESC LIMIT $1", limit
            )
        else:
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM drills WHERE status = ANY($1::text[])"
                " ORDER BY started_at DESC LIMIT $2",
                list(statuses),
                limit,
            )
        return [row_of(r) for r in rows]

    async def active(self) -> list[DrillRow]:
        return await self.recent(limit=1000, statuses=(RUNNING,))

    async def unfinished(self) -> list[DrillRow]:
        return await self.recent(limit=1000, statuses=(RUNNING, STOPPING))

    async def last_started(self, schedule: str) -> datetime | None:
        value = await self._pool.fetchval(
            "SELECT max(started_at) FROM drills WHERE schedule = $1", schedule
        )
        return aware_utc(value)

    async def close(self) -> None:
        # The pool is the ledger's (closed with it); only what was opened here.
        if self._repository is not None:
            await self._repository.close()
