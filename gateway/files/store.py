"""The files store the `/v1/files` endpoints call: upload (size limit and, for `batch` files,
line checks while the bytes stream into storage), get, list, read back and delete.

A file belongs to the key that uploaded it (its `key_name`; None on a gateway without auth):
another key gets the same 404 as for a file that never existed. The bytes go to storage first
and the metadata row after, so a row always has its bytes; a row that cannot be written takes
its bytes with it.

A file may expire (`expires_after` on upload, `expires_at` for files the gateway writes): past
that it is a 404 at once, and the background purge (`start`) deletes its bytes, then its row.
Bytes first: a purge cut short leaves a row that is already invisible and is picked up again
next time, never bytes no row points to. Replicas may purge side by side: every delete is
idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.errors import NotFound, PayloadTooLarge, Unavailable, bad_request, clip
from gateway.files.batch_lines import BatchLines
from gateway.files.storage import FileStorage
from gateway.ledger.db_errors import database_errors
from gateway.runtime.background import Background, within

if TYPE_CHECKING:  # SQLAlchemy; a serving worker on Postgres passes ServingFiles
    from gateway.ledger.files_repository import FilesRepository

log = logging.getLogger("farebox.files")

PURPOSES = ("assistants", "batch", "evals", "fine-tune", "user_data", "vision")
LIST_LIMIT_MAX = 10_000
FILENAME_MAX = 255
# `expires_after[seconds]`: OpenAI's bounds, one hour to thirty days.
EXPIRES_AFTER_MIN_S = 3600
EXPIRES_AFTER_MAX_S = 2_592_000
# Files purged per round trip, and how long one round may take on a database (or bucket)
# that does not answer before the purge gives up until next time.
PURGE_BATCH = 500
PURGE_BATCH_TIMEOUT_S = 120.0
# The first purge comes within this long of start-up (spread across workers and replicas).
FIRST_PURGE_WITHIN_S = 60.0
# The start-up check of the storage backend (credentials may take a while to resolve).
CHECK_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Staged:
    """An upload's bytes, stored but not yet a file (no row): `commit` or `discard` it."""

    file_id: str
    filename: str
    size: int
    sha256: str
    checked_as_batch: bool


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise bad_request(
            f"Invalid purpose {clip(purpose, 64)!r}: expected one of {', '.join(PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    return purpose


def check_expires_after(anchor: str | None, seconds: str | None) -> int | None:
    """The upload's `expires_after[anchor]` and `expires_after[seconds]` form fields as a
    number of seconds after creation; None when neither was sent."""
    if anchor is None and seconds is None:
        return None
    if anchor is None or seconds is None:
        missing = "anchor" if anchor is None else "seconds"
        raise bad_request(
            f"expires_after needs both 'anchor' and 'seconds': 'expires_after[{missing}]' "
            "is missing.",
            param=f"expires_after.{missing}",
            code="missing_required_parameter",
        )
    if anchor != "created_at":
        raise bad_request(
            f"Invalid expires_after anchor {clip(anchor, 64)!r}: the only anchor is 'created_at'.",
            param="expires_after.anchor",
            code="invalid_value",
        )
    try:
        value = int(seconds.strip())
    except ValueError:
        value = 0
    if not EXPIRES_AFTER_MIN_S <= value <= EXPIRES_AFTER_MAX_S:
        raise bad_request(
            f"expires_after seconds must be an integer between {EXPIRES_AFTER_MIN_S} (1 hour) "
            f"and {EXPIRES_AFTER_MAX_S} (30 days), not {clip(seconds, 32)!r}.",
            param="expires_after.seconds",
            code="invalid_value",
        )
    return value


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI FileObject. `expires_at` is left out for a file that does not expire: the
    spec types it as an integer, not null, and the SDKs read the missing field as None."""
    body = {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": int(row["created_at"].timestamp()),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
    }
    if row.get("expires_at") is not None:
        body["expires_at"] = int(row["expires_at"].timestamp())
    return body


class FileStore:
    def __init__(
        self,
        repository: FilesRepository,
        storage: FileStorage,
        *,
        max_bytes: int,
        max_lines: int,
        purge_interval_s: float = 300.0,
    ) -> None:
        self.repository = repository
        self.storage = storage
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self.purge_interval_s = purge_interval_s
        self._tasks = Background()
        self._purger: asyncio.Task[None] | None = None

    async def stage(
        self, filename: str, purpose: str | None, chunks: AsyncIterator[bytes]
    ) -> Staged:
        """Stream `chunks` into storage, refusing (413) past `max_bytes` and, when `purpose`
        is already known to be `batch`, (400) at the first bad line."""
        filename = clip(filename or "file", FILENAME_MAX - 1)
        file_id = "file-" + secrets.token_hex(12)
        lines = BatchLines(self.max_lines) if purpose == "batch" else None
        size, digest = await self.storage.put(file_id, self._checked(chunks, lines))
        return Staged(file_id, filename, size, digest, lines is not None)

    async def _checked(
        self, chunks: AsyncIterator[bytes], lines: BatchLines | None
    ) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > self.max_bytes:
                raise PayloadTooLarge(
                    f"The file is larger than this gateway's limit of {self.max_bytes} bytes "
                    "(FAREBOX_FILES_MAX_BYTES).",
                    param="file",
                    code="file_too_large",
                )
            if lines is not None:
                lines.feed(chunk)
            yield chunk
        if lines is not None:
            lines.finish()

    async def commit(
        self,
        staged: Staged,
        key_id: str | None,
        purpose: str,
        *,
        expires_after_s: int | None = None,
        expires_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Make the staged bytes a file of `key_id`'s; its FileObject. A `batch` file staged
        before its purpose was known is checked now, read back from storage. The file expires
        `expires_after_s` seconds after its creation, or at `expires_at`; neither: never."""
        try:
            if purpose == "batch" and not staged.checked_as_batch:
                lines = BatchLines(self.max_lines)
                async for chunk in self.storage.open(staged.file_id):
                    lines.feed(chunk)
                lines.finish()
            created_at = datetime.now(UTC)
            if expires_after_s is not None:
                expires_at = created_at + timedelta(seconds=expires_after_s)
            row = {
                "id": staged.file_id,
                "key_id": key_id,
                "filename": staged.filename,
                "purpose": purpose,
                "bytes": staged.size,
                "sha256": staged.sha256,
                "status": "processed",
                "created_at": created_at,
                "storage_key": staged.file_id,
                "expires_at": expires_at,
            }
            try:
                await self.repository.insert(row)
            except database_errors() as exc:
                raise _unavailable() from exc
        except BaseException:
            await self.discard(staged)
            raise
        return file_object(row)

    async def create(
        self,
        key_id: str | None,
        filename: str,
        purpose: str,
        chunks: AsyncIterator[bytes],
        *,
        expires_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Stage and commit in one call: for files the gateway writes itself (the Batch API's
        output and error files, purpose `batch_output`), which no client form carries.
        `expires_at`: when the file is purged (None: kept until deleted)."""
        staged = await self.stage(filename, purpose, chunks)
        return await self.commit(staged, key_id, purpose, expires_at=expires_at)

    async def discard(self, staged: Staged) -> None:
        await self.storage.delete(staged.file_id)

    async def get(self, file_id: str, key_id: str | None) -> dict[str, Any]:
        """The file's row; 404 unless it exists and is `key_id`'s."""
        try:
            row = await self.repository.fetch(file_id, key_id)
        except database_errors() as exc:
            raise _unavailable() from exc
        if row is None:
            raise NotFound(f"No such File object: {clip(file_id, 128)}", param="id")
        return row

    def content(self, row: dict[str, Any]) -> AsyncIterator[bytes]:
        return self.storage.open(row["storage_key"])

    async def delete(self, file_id: str, key_id: str | None) -> dict[str, Any]:
        row = await self.get(file_id, key_id)
        try:
            deleted = await self.repository.delete(file_id, key_id)
        except database_errors() as exc:
            raise _unavailable() from exc
        if not deleted:  # deleted by a concurrent call between the two statements
            raise NotFound(f"No such File object: {clip(file_id, 128)}", param="id")
        await self.storage.delete(row["storage_key"])
        return {"id": file_id, "object": "file", "deleted": True}

    async def list(
        self,
        key_id: str | None,
        *,
        purpose: str | None,
        limit: int,
        after: str | None,
        order: str,
    ) -> dict[str, Any]:
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise bad_request(
                f"limit must be between 1 and {LIST_LIMIT_MAX}.",
                param="limit",
                code="invalid_value",
            )
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'.", param="order", code="invalid_value")
        try:
            rows = await self.repository.page(
                key_id, purpose=purpose, limit=limit + 1, after=after, descending=order == "desc"
            )
        except database_errors() as exc:
            raise _unavailable() from exc
        data = [file_object(row) for row in rows[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(rows) > limit,
        }

    async def purge(self, now: datetime) -> int:
        """Delete every file expired at `now`, bytes then row, PURGE_BATCH at a time; how
        many rows were deleted. Raises what the database or storage raises."""
        total = 0
        while True:
            async with asyncio.timeout(PURGE_BATCH_TIMEOUT_S):
                expired = await self.repository.expired(now, PURGE_BATCH)
                if not expired:
                    # The usual round: nothing to delete, and no second query (on a serving
                    # worker that would also load the SQLAlchemy repository for nothing).
                    return total
                for row in expired:
                    await self.storage.delete(row["storage_key"])
                total += await self.repository.delete_expired([r["id"] for r in expired], now)
            if len(expired) < PURGE_BATCH:
                return total

    def start(self) -> None:
        """Check the storage backend (a log line at start-up if it cannot be used) and
        start the background purge of expired files (once; every `purge_interval_s`)."""
        if self._purger is None:
            self._purger = self._tasks.spawn(self._purge_forever())

    async def close(self) -> None:
        """Stop the purge and release the storage backend. The engine is the ledger's: it
        is disposed with the ledger repository, not here."""
        self._purger = None
        await self._tasks.cancel()
        await self.storage.close()

    async def _check(self) -> None:
        where = self.storage.describe()
        try:
            await within(self.storage.check(), CHECK_TIMEOUT_S)
        except TimeoutError:
            log.error("files storage %s did not answer within %ss", where, CHECK_TIMEOUT_S)
        except Exception as exc:  # reported, not fatal: the rest of the gateway serves on
            log.error(
                "files storage %s cannot be used (/v1/files answers 503 until it can): %s",
                where,
                exc,
            )
        else:
            log.info("files stored in %s", where)

    async def _purge_forever(self) -> None:
        await self._check()
        interval = self.purge_interval_s
        # Soon after start (a gateway restarted more often than the interval still purges),
        # at a random moment so workers and replicas do not all purge at once.
        await asyncio.sleep(random.uniform(0, min(interval, FIRST_PURGE_WITHIN_S)))
        while True:
            try:
                deleted = await self.purge(datetime.now(UTC))
            except Exception as exc:  # logged; the next round tries again
                log.warning("purging expired files failed (retrying in %ss): %r", interval, exc)
            else:
                if deleted:
                    log.info("purged %d expired files", deleted)
            await asyncio.sleep(interval)


def _unavailable() -> Unavailable:
    return Unavailable("The files database cannot be reached; retry shortly.")
