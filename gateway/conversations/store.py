"""The stored-Responses store the `/v1/responses` endpoints call: save, get, delete, and the
background purge of expired responses (`responses:` in the YAML, gateway/config/responses.py).

Every database call a request waits on is bounded by `save_timeout_s`. The call runs as its
own task and the caller stops waiting when the bound passes: a frozen database (connections
open, queries hanging) must not hold a request, and a cancelled query's own cleanup (a
rollback on a server that does not answer) would otherwise wait as long as the freeze.

Saves are group-committed (gateway/conversations/group_commit.py): concurrent saves go to the
database together, one statement and one transaction per batch, written by one task per store;
each caller still waits, bounded, for its own row's commit.

A failed save costs the client nothing but the chain (False, a log line, a counter); a read
that cannot reach the database is a 503, never a 404 that would tell the client its
conversation is gone. Stored content is never logged: log lines carry the response id and
the exception's type, never its message, which for a database error can hold the statement's
parameters (the conversation itself).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from prometheus_client import Counter, Histogram

from gateway.config.responses import ResponsesConfig
from gateway.conversations.group_commit import Closed, GroupCommit
from gateway.conversations.items import page_input_items, stored_items
from gateway.errors import Unavailable
from gateway.ledger.db_errors import database_errors
from gateway.ledger.responses_pg import PgResponsesRepository, row_error
from gateway.runtime.background import Background

__all__ = [
    "BATCH_ROWS",
    "FAILURES",
    "PURGED",
    "ResponseStore",
    "StoredResponse",
    "page_input_items",
]

if TYPE_CHECKING:  # SQLAlchemy (SQLite ledgers); a serving worker on Postgres uses asyncpg
    from gateway.ledger.responses_repository import ResponsesRepository

log = logging.getLogger("farebox.responses")

_T = TypeVar("_T")

# Rows deleted per purge transaction: short enough that no lock is held for long, large
# enough that a day's expiries go in a few round trips.
PURGE_BATCH = 1000
# One purge batch on a database that does not answer gives up after this long.
PURGE_BATCH_TIMEOUT_S = 30.0
# The first purge comes within this long of start-up (spread across workers and replicas).
FIRST_PURGE_WITHIN_S = 60.0

FAILURES = Counter(
    "farebox_responses_store_failures_total",
    "Stored-response operations that failed, by operation (save, get, delete, purge) and "
    "reason (timeout, database, error, closed: the gateway stopped before the save was written)",
    ["operation", "reason"],
)
PURGED = Counter("farebox_responses_purged_total", "Expired stored responses deleted by the purge")
BATCH_ROWS = Histogram(
    "farebox_responses_store_batch_rows",
    "Stored responses written per transaction (the saves group-committed together)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)


@dataclass(slots=True)
class StoredResponse:
    id: str
    request_id: str
    key_id: str | None
    workflow_id: str | None
    previous_response_id: str | None
    model: str
    status: str
    created_at: datetime
    expires_at: datetime
    # The whole conversation sent to the model (the previous turns' input and output, then
    # this turn's input); save() gives every item an id.
    input_items: list[dict[str, Any]]
    # The Response object as the client got it.
    response: dict[str, Any]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):  # before DATABASE_ERRORS: it is an OSError
        return "timeout"
    if isinstance(exc, Closed):
        return "closed"
    return "database" if isinstance(exc, database_errors()) else "error"


def _quiet(task: asyncio.Task[Any]) -> None:
    # A task nobody waits for any more (timed out, caller gone): take its exception, so
    # asyncio never logs it as "never retrieved" with a message that may hold content.
    if not task.cancelled():
        task.exception()


def to_row(record: StoredResponse) -> dict[str, Any]:
    return {
        "id": record.id,
        "request_id": record.request_id,
        "key_id": record.key_id,
        "workflow_id": record.workflow_id,
        "previous_response_id": record.previous_response_id,
        "model": record.model,
        "status": record.status,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "input_items": orjson.dumps(record.input_items).decode(),
        "response": orjson.dumps(record.response).decode(),
    }


def _record(row: dict[str, Any]) -> StoredResponse:
    row["input_items"] = orjson.loads(row["input_items"])
    row["response"] = orjson.loads(row["response"])
    return StoredResponse(**row)


class ResponseStore:
    def __init__(
        self, repository: ResponsesRepository | PgResponsesRepository, config: ResponsesConfig
    ) -> None:
        self.repository = repository
        self.config = config
        self._tasks = Background()
        self._purger: asyncio.Task[None] | None = None
        self._saves: GroupCommit[dict[str, Any]] = GroupCommit(
            repository.insert_many,
            timeout_s=config.save_timeout_s,
            tasks=self._tasks,
            on_batch=BATCH_ROWS.observe,
            split_on=row_error,
        )

    @property
    def timeout_s(self) -> float:
        return self.config.save_timeout_s

    def expiry(self, created_at: datetime) -> datetime:
        """When a response created at `created_at` expires (`responses.retention_days`)."""
        return created_at + timedelta(days=self.config.retention_days)

    async def save(self, record: StoredResponse) -> bool:
        """Store `record`; True when it is stored (now or by an earlier save of the same id:
        saving is idempotent, the first save's row stays). Never raises: on a database error,
        a timeout or a body that cannot be encoded, False, one log line and
        `farebox_responses_store_failures_total{operation="save"}`.

        Every input item without an id gets one: `record.input_items` is replaced by the
        stored items (see gateway/conversations/items.py), the caller's dicts are not changed.

        Written with the other saves queued meanwhile, in one transaction (group commit): True
        only once that transaction has committed; if it fails, every save in it is False
        (one refused for a row's own values is written again row by row, see row_error).
        """
        try:
            record.input_items = stored_items(record.input_items)
            row = to_row(record)
        except Exception as exc:  # a save never fails the request it stores
            self._failed("save", record.id, exc)
            return False
        failed = await self._saves.put(row, len(row["input_items"]) + len(row["response"]))
        if failed is not None:
            self._failed("save", record.id, failed)
            return False
        return True

    async def get(self, response_id: str, key_id: str | None) -> StoredResponse | None:
        """The stored response, or None when there is none, it has expired, or another key
        stored it (whether it exists is never told across keys). `key_id`: the caller's key
        as the ledger records it (Principal.key_name; None matches only rows stored with
        None). Unavailable (503) when the database cannot be read within the timeout."""
        now = datetime.now(UTC)
        try:
            row = await self._bounded(
                self.repository.fetch(response_id, key_id, now), self.timeout_s
            )
        except database_errors() as exc:  # TimeoutError included (an OSError)
            self._failed("get", response_id, exc)
            raise Unavailable(
                "stored responses cannot be read right now; retry shortly",
                code="response_store_unavailable",
            ) from None
        return None if row is None else _record(row)

    async def delete(self, response_id: str, key_id: str | None) -> bool:
        """Delete the response if `get` would return it; whether it did. Unavailable (503)
        when the database cannot be reached within the timeout."""
        now = datetime.now(UTC)
        try:
            return await self._bounded(
                self.repository.delete(response_id, key_id, now), self.timeout_s
            )
        except database_errors() as exc:  # TimeoutError included (an OSError)
            self._failed("delete", response_id, exc)
            raise Unavailable(
                "stored responses cannot be deleted right now; retry shortly",
                code="response_store_unavailable",
            ) from None

    async def purge(self, now: datetime) -> int:
        """Delete every response expired at `now`, PURGE_BATCH rows per transaction; how
        many. Raises what the database raises (the purge loop logs it and tries again)."""
        total = 0
        while True:
            deleted = await self._bounded(
                self.repository.purge_batch(now, PURGE_BATCH), PURGE_BATCH_TIMEOUT_S
            )
            total += deleted
            PURGED.inc(deleted)
            if deleted < PURGE_BATCH:
                return total

    def start(self) -> None:
        """Start the saves' writer and the background purge (once; every
        `purge_interval_s`). A save starts the writer by itself when it is not running."""
        self._saves.start()
        if self._purger is None:
            self._purger = self._tasks.spawn(self._purge_forever())

    async def close(self) -> None:
        """Stop the writer (saves still waiting get False), the purge and any database call
        still running. The engine is the ledger's: it is disposed with the ledger repository,
        not here."""
        self._purger = None
        await self._saves.close()
        await self._tasks.cancel()

    async def _purge_forever(self) -> None:
        interval = self.config.purge_interval_s
        # Soon after start (a gateway restarted more often than the interval still purges),
        # at a random moment so workers and replicas do not all purge at once.
        await asyncio.sleep(random.uniform(0, min(interval, FIRST_PURGE_WITHIN_S)))
        while True:
            try:
                deleted = await self.purge(datetime.now(UTC))
            except Exception as exc:  # logged; the next round tries again
                self._failed("purge", None, exc, retry_s=interval)
            else:
                if deleted:
                    log.info("purged %d expired stored responses", deleted)
            await asyncio.sleep(interval)

    async def _bounded(self, work: Coroutine[Any, Any, _T], seconds: float) -> _T:
        task = self._tasks.spawn(work)
        task.add_done_callback(_quiet)
        try:
            done, _ = await asyncio.wait((task,), timeout=seconds)
        except BaseException:  # the caller was cancelled: nobody wants the answer
            task.cancel()
            raise
        if not done:
            # Not awaited: its cleanup may wait on the database as long as the freeze lasts.
            task.cancel()
            raise TimeoutError
        result: _T = task.result()
        return result

    def _failed(
        self,
        operation: str,
        response_id: str | None,
        exc: BaseException,
        *,
        retry_s: float | None = None,
    ) -> None:
        reason = _reason(exc)
        FAILURES.labels(operation, reason).inc()
        # The exception's type only: its message can hold the statement's parameters.
        what = f"stored response {response_id}" if response_id else "expired stored responses"
        then = f"; retrying in {retry_s:g}s" if retry_s is not None else ""
        log.warning("%s: %s failed (%s, %s)%s", what, operation, reason, type(exc).__name__, then)
