"""The ledger's repositories as a gateway process opens them (gateway/state.py).

On a Postgres ledger a serving worker must not import SQLAlchemy (issue #25), so the ledger
repository is a ServingLedger over one asyncpg pool and the others read and write what serving
needs on that pool (drills, stored Responses) or look for work there before they load their
SQLAlchemy repository (files, batches). On SQLite every repository is SQLAlchemy's, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from gateway.ledger.drills_serving import ServingDrills
from gateway.ledger.files_batches_serving import ServingBatches, ServingFiles
from gateway.ledger.pg import PgPool, is_postgres
from gateway.ledger.responses_pg import PgResponsesRepository
from gateway.ledger.serving_ledger import ServingLedger

if TYPE_CHECKING:
    from gateway.ledger.batches_repository import BatchesRepository
    from gateway.ledger.drills_repository import DrillsRepository
    from gateway.ledger.files_repository import FilesRepository
    from gateway.ledger.repository import LedgerRepository
    from gateway.ledger.responses_repository import ResponsesRepository


def open_ledger(url: str) -> LedgerRepository:
    """The ledger repository. On Postgres a ServingLedger: asyncpg for what a serving worker
    reads, SQLAlchemy's repository only on first use of anything else (issue #25)."""
    if is_postgres(url):
        return cast("LedgerRepository", ServingLedger(url, PgPool(url)))
    from gateway.ledger.repository import LedgerRepository

    return LedgerRepository.create(url)


def open_drills(url: str, repository: LedgerRepository | None) -> DrillsRepository:
    """The drills repository: on Postgres the board's poll and the scheduler's reads go to
    the ledger's asyncpg pool, drill changes to SQLAlchemy on first use (ServingDrills)."""
    ledger = cast("ServingLedger | LedgerRepository | None", repository)
    if isinstance(ledger, ServingLedger):
        return cast("DrillsRepository", ServingDrills(url, ledger.pool))
    from gateway.ledger.drills_repository import DrillsRepository

    return DrillsRepository.create(url)


def open_responses(repository: LedgerRepository) -> ResponsesRepository | PgResponsesRepository:
    """Stored Responses on the ledger's asyncpg pool (Postgres) or its engine (SQLite)."""
    ledger = cast("ServingLedger | LedgerRepository", repository)
    if isinstance(ledger, ServingLedger):
        return PgResponsesRepository(ledger.pool)
    from gateway.ledger.responses_repository import ResponsesRepository

    return ResponsesRepository(ledger.engine)


def open_files(repository: LedgerRepository) -> FilesRepository:
    """Files' rows: on Postgres the purge's idle look on asyncpg, SQLAlchemy once there is work."""
    ledger = cast("ServingLedger | LedgerRepository", repository)
    if isinstance(ledger, ServingLedger):
        return cast("FilesRepository", ServingFiles(ledger))
    from gateway.ledger.files_repository import FilesRepository

    return FilesRepository(ledger.engine)


def open_batches(repository: LedgerRepository) -> BatchesRepository:
    """Batches' rows: on Postgres the runner's idle claim on asyncpg, SQLAlchemy once there
    is a batch."""
    ledger = cast("ServingLedger | LedgerRepository", repository)
    if isinstance(ledger, ServingLedger):
        return cast("BatchesRepository", ServingBatches(ledger))
    from gateway.ledger.batches_repository import BatchesRepository

    return BatchesRepository(ledger)
