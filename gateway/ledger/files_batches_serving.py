"""Files and batches of a serving worker on a Postgres ledger: SQLAlchemy only once there is
work. Their stores (gateway/files/store.py, gateway/batch/store.py) run background polls from
start-up: the purge of expired files, and the batch runner's claim every `poll_interval_s`.
Those idle polls are answered here on asyncpg; the SQLAlchemy repositories (FilesRepository,
BatchesRepository) are created on the first call that has something to do (an upload, a batch,
an expired file, a batch to claim) and answer everything from then on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.ledger.batches_records import ACTIVE
from gateway.ledger.serving_ledger import ServingLedger

if TYPE_CHECKING:
    from gateway.ledger.batches_repository import BatchesRepository
    from gateway.ledger.files_repository import FilesRepository


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ServingFiles:
    def __init__(self, ledger: ServingLedger) -> None:
        self._ledger = ledger
        self._repository: FilesRepository | None = None

    @property
    def sqlalchemy(self) -> FilesRepository:
        if self._repository is None:
            from gateway.ledger.files_repository import FilesRepository

            self._repository = FilesRepository(self._ledger.sqlalchemy.engine)
        return self._repository

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class does not define: insert, fetch, delete, page, ….
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.sqlalchemy, name)

    async def expired(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` files (id, storage_key) expired at `now` (FilesRepository.expired's
        query): the purge's question every round, usually answered with nothing."""
        if self._repository is not None:
            return await self._repository.expired(now, limit)
        rows = await self._ledger.pool.fetch(
            "SELECT id, storage_key FROM files WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2",
            _utc(now),
            limit,
        )
        return [dict(row) for row in rows]


class ServingBatches:
    def __init__(self, ledger: ServingLedger) -> None:
        self._ledger = ledger
        self._repository: BatchesRepository | None = None

    @property
    def sqlalchemy(self) -> BatchesRepository:
        if self._repository is None:
            from gateway.ledger.batches_repository import BatchesRepository

            # It writes the batch lines' ledger rows through the ledger's SQLAlchemy
            # repository (its engine, its row inserts).
            self._repository = BatchesRepository(self._ledger.sqlalchemy)
        return self._repository

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.sqlalchemy, name)

    async def claim(
        self, owner: str, now: datetime, lease_until: datetime
    ) -> dict[str, Any] | None:
        """BatchesRepository.claim, after a cheap look for a claimable batch: the runner asks
        every poll interval, and almost always there is none."""
        if self._repository is None:
            free = await self._ledger.pool.fetchval(
                "SELECT 1 FROM batches WHERE status = ANY($1::text[])"
                " AND (owner IS NULL OR lease_until IS NULL OR lease_until < $2) LIMIT 1",
                list(ACTIVE),
                _utc(now),
            )
            if free is None:
                return None
        return await self.sqlalchemy.claim(owner, now, lease_until)
