"""The files store the `/v1/files` endpoints call: upload (size limit and, for `batch` files,
line checks while the bytes stream into storage), get, list, read back and delete.

A file belongs to the key that uploaded it (its `key_name`; None on a gateway without auth):
another key gets the same 404 as for a file that never existed. The bytes go to storage first
and the metadata row after, so a row always has its bytes; a row that cannot be written takes
its bytes with it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.errors import NotFound, PayloadTooLarge, Unavailable, bad_request, clip
from gateway.files.batch_lines import BatchLines
from gateway.files.storage import FileStorage
from gateway.ledger.db_errors import DATABASE_ERRORS
from gateway.ledger.files_repository import FilesRepository

PURPOSES = ("assistants", "batch", "evals", "fine-tune", "user_data", "vision")
LIST_LIMIT_MAX = 10_000
FILENAME_MAX = 255


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


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI FileObject. `expires_at` is left out: files do not expire (yet), and the
    spec types it as an integer, not null; the SDKs read the missing field as None."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": int(row["created_at"].timestamp()),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
    }


class FileStore:
    def __init__(
        self,
        repository: FilesRepository,
        storage: FileStorage,
        *,
        max_bytes: int,
        max_lines: int,
    ) -> None:
        self.repository = repository
        self.storage = storage
        self.max_bytes = max_bytes
        self.max_lines = max_lines

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

    async def commit(self, staged: Staged, key_id: str | None, purpose: str) -> dict[str, Any]:
        """Make the staged bytes a file of `key_id`'s; its FileObject. A `batch` file staged
        before its purpose was known is checked now, read back from storage."""
        try:
            if purpose == "batch" and not staged.checked_as_batch:
                lines = BatchLines(self.max_lines)
                async for chunk in self.storage.open(staged.file_id):
                    lines.feed(chunk)
                lines.finish()
            row = {
                "id": staged.file_id,
                "key_id": key_id,
                "filename": staged.filename,
                "purpose": purpose,
                "bytes": staged.size,
                "sha256": staged.sha256,
                "status": "processed",
                "created_at": datetime.now(UTC),
                "storage_key": staged.file_id,
            }
            try:
                await self.repository.insert(row)
            except DATABASE_ERRORS as exc:
                raise _unavailable() from exc
        except BaseException:
            await self.discard(staged)
            raise
        return file_object(row)

    async def create(
        self, key_id: str | None, filename: str, purpose: str, chunks: AsyncIterator[bytes]
    ) -> dict[str, Any]:
        """Stage and commit in one call: for files the gateway writes itself (the Batch API's
        output and error files, purpose `batch_output`), which no client form carries."""
        return await self.commit(await self.stage(filename, purpose, chunks), key_id, purpose)

    async def discard(self, staged: Staged) -> None:
        await self.storage.delete(staged.file_id)

    async def get(self, file_id: str, key_id: str | None) -> dict[str, Any]:
        """The file's row; 404 unless it exists and is `key_id`'s."""
        try:
            row = await self.repository.fetch(file_id, key_id)
        except DATABASE_ERRORS as exc:
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
        except DATABASE_ERRORS as exc:
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
        except DATABASE_ERRORS as exc:
            raise _unavailable() from exc
        data = [file_object(row) for row in rows[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(rows) > limit,
        }


def _unavailable() -> Unavailable:
    return Unavailable("The files database cannot be reached; retry shortly.")
