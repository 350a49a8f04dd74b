"""Where uploaded files' bytes live: the backend interface, and the local-directory backend
(`FAREBOX_FILES_DIR`, the default; gateway/files/storage_s3.py has the S3 one).

An upload is streamed into the backend chunk by chunk and never held whole in memory; the
local backend writes to a temporary name and renames it into place when the stream ends, so a
failed or refused upload (too large, a bad line) leaves nothing behind and a reader never sees
half a file. Disk writes run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Protocol

from gateway.errors import Unavailable

# Read back in chunks of this size (the content endpoint's writes).
READ_CHUNK = 256 * 1024
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def safe_key(key: str) -> str:
    """`key` if it is a plain name; ValueError otherwise. Keys are made by the store (file
    ids), never by clients: a bad one is a bug, and must not reach a path or an object key."""
    if not _SAFE_KEY.match(key) or key.startswith("."):
        raise ValueError(f"unsafe storage key {key!r}")
    return key


class FileStorage(Protocol):
    async def put(self, key: str, stream: AsyncIterator[bytes]) -> tuple[int, str]:
        """Store the stream under `key`: (size in bytes, sha256 hex). If the stream raises,
        nothing is stored and the exception propagates."""
        ...

    def open(self, key: str) -> AsyncIterator[bytes]:
        """The stored bytes, in chunks; FileNotFoundError if `key` holds nothing."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key`'s bytes; nothing happens if there are none."""
        ...

    async def check(self) -> None:
        """Raise (Unavailable, saying what is wrong) unless files can be stored: run at
        start-up, so a misconfigured backend is a log line, not a surprise at the first upload."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the backend is not used after this."""
        ...

    def describe(self) -> str:
        """Where the bytes go, for logs."""
        ...


class LocalDirectory:
    """Files as plain files in one directory, named by their storage key."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / safe_key(key)

    async def put(self, key: str, stream: AsyncIterator[bytes]) -> tuple[int, str]:
        final = self._path(key)
        partial = final.with_name(f".{key}.part")
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        out: IO[bytes] = await asyncio.to_thread(open, partial, "wb")
        try:
            async for chunk in stream:
                if not chunk:
                    continue
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(_close_synced, out)
            await asyncio.to_thread(os.replace, partial, final)
        except BaseException:
            out.close()
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return size, digest.hexdigest()

    async def open(self, key: str) -> AsyncIterator[bytes]:
        source: IO[bytes] = await asyncio.to_thread(open, self._path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(source.read, READ_CHUNK):
                yield chunk
        finally:
            source.close()

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(key).unlink)

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(
                f"The files directory {self.directory} cannot be created: {exc}",
                code="files_unavailable",
            ) from exc
        if not await asyncio.to_thread(os.access, self.directory, os.W_OK | os.X_OK):
            raise Unavailable(
                f"The files directory {self.directory} is not writable.", code="files_unavailable"
            )

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return f"directory {self.directory}"


def _close_synced(out: IO[bytes]) -> None:
    # A stored file is one the batch runner will read later: on disk before its row exists.
    out.flush()
    os.fsync(out.fileno())
    out.close()
