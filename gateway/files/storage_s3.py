"""The S3 files backend: uploaded files' bytes as objects in an S3-compatible bucket (AWS S3,
MinIO, R2, ...), selected by `FAREBOX_FILES_BACKEND=s3`; needs the `s3` extra (boto3).

An upload streams into a multipart upload one part at a time, so memory holds at most one
part (`FAREBOX_FILES_S3_PART_BYTES`) whatever the file's size; a file smaller than one part
is a single PUT. If the stream fails (a refused line, a size limit, a client that went away)
the multipart upload is aborted: S3 keeps nothing, and a reader never sees half a file
because an object only exists once its upload completes. A download is read back in chunks.

boto3 is synchronous: its calls run on this backend's own small thread pool, never the
event loop's default executor, which the gateway's DNS lookups and other `to_thread` work
share — a slow bucket must not hold those up. Storage errors (a missing bucket, bad
credentials, an unreachable endpoint) become a 503 `files_unavailable`, logged with the
detail; the client's message does not name the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway.errors import Unavailable
from gateway.files.storage import READ_CHUNK, safe_key

log = logging.getLogger("farebox.files")

# S3's rule: every part but the last is at least 5 MiB.
MIN_PART_BYTES = 5 * 1024 * 1024
# Threads (and pooled connections) for S3 calls: uploads and downloads run side by side.
THREADS = 8
# An error code that means "no such object" (GetObject says NoSuchKey, HeadObject a bare 404).
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class S3Storage:
    """Files as objects `<prefix><key>` in one bucket."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        if not bucket:
            raise ValueError("the S3 files backend needs a bucket (FAREBOX_FILES_S3_BUCKET)")
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts are at least {MIN_PART_BYTES} bytes")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.part_bytes = part_bytes
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="farebox-s3")
        config = Config(
            max_pool_connections=THREADS,
            connect_timeout=5,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},
            # Checksums only where S3 requires them: the newer default (CRC32 on every
            # upload) is refused by several S3-compatible stores. The store keeps its own
            # sha256 of every file.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of its own: boto3's default one is shared process-wide and not
        # thread-safe to create clients from.
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _key(self, key: str) -> str:
        return self.prefix + safe_key(key)

    async def _run(self, call: Callable[..., Any], **params: Any) -> Any:
        """`call(**params)` on the pool, its botocore errors made ours: FileNotFoundError
        for a missing object, Unavailable (503 files_unavailable) for the rest."""
        return await self._result(self._pool.submit(functools.partial(call, **params)))

    async def _result(self, future: Future[Any]) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise FileNotFoundError(code) from exc
            raise self._unavailable(exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> Unavailable:
        log.warning("files storage %s failed: %s", self.describe(), exc)
        return Unavailable(
            f"The files storage cannot be used right now ({_reason(exc)}); retry shortly.",
            code="files_unavailable",
        )

    async def put(self, key: str, stream: AsyncIterator[bytes]) -> tuple[int, str]:
        object_key = self._key(key)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        # The part being sent: its thread goes on if this task is cancelled meanwhile.
        sending: Future[Any] | None = None
        try:
            async for chunk in stream:
                if not chunk:
                    continue
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                if len(buffer) < self.part_bytes:
                    continue
                if upload_id is None:
                    created = await self._run(
                        self.client.create_multipart_upload, Bucket=self.bucket, Key=object_key
                    )
                    upload_id = str(created["UploadId"])
                # Handed over whole (a part may pass part_bytes by less than one chunk), not
                # copied: the buffer starts afresh for the next part.
                part, buffer = buffer, bytearray()
                sending = self._part(object_key, upload_id, len(parts) + 1, part)
                parts.append({"PartNumber": len(parts) + 1, "ETag": await self._etag(sending)})
            if upload_id is None:
                await self._run(
                    self.client.put_object, Bucket=self.bucket, Key=object_key, Body=bytes(buffer)
                )
            else:
                if buffer:
                    sending = self._part(object_key, upload_id, len(parts) + 1, buffer)
                    parts.append({"PartNumber": len(parts) + 1, "ETag": await self._etag(sending)})
                await self._run(
                    self.client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=object_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                # Shielded: a cancelled upload (the client went away) still frees its parts.
                await asyncio.shield(self._abort(object_key, upload_id, sending))
            raise
        return size, digest.hexdigest()

    def _part(self, object_key: str, upload_id: str, number: int, body: bytearray) -> Future[Any]:
        return self._pool.submit(
            functools.partial(
                self.client.upload_part,
                Bucket=self.bucket,
                Key=object_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
        )

    async def _etag(self, sending: Future[Any]) -> str:
        return str((await self._result(sending))["ETag"])

    async def _abort(self, object_key: str, upload_id: str, sending: Future[Any] | None) -> None:
        # A part still being sent when the abort runs may land after it and be kept (S3
        # says as much): let it finish first.
        with contextlib.suppress(Exception):
            if sending is not None and not sending.cancel():
                await asyncio.wrap_future(sending)
        with contextlib.suppress(Exception):
            await self._run(
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=object_key,
                UploadId=upload_id,
            )

    async def open(self, key: str) -> AsyncIterator[bytes]:
        got = await self._run(self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        body = got["Body"]
        try:
            while chunk := await self._run(body.read, amt=READ_CHUNK):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        # S3 answers a delete of a missing object with success: nothing to special-case.
        await self._run(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    async def check(self) -> None:
        try:
            await self._run(self.client.head_bucket, Bucket=self.bucket)
        except (Unavailable, FileNotFoundError) as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise Unavailable(
                f"The files bucket {self.describe()} cannot be used: {_reason(cause)}",
                code="files_unavailable",
            ) from cause

    async def close(self) -> None:
        # Not waiting: whatever still runs is bounded by the client's timeouts, and an upload
        # cut off here never completes, so S3 keeps nothing of it.
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def _reason(exc: BaseException) -> str:
    """What went wrong in a few words: the S3 error code (NoSuchBucket, AccessDenied,
    InvalidAccessKeyId, a bare 404 from HEAD) or botocore's error class."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "error"
        if code == "404":
            code = "NoSuchBucket" if exc.operation_name == "HeadBucket" else "NotFound"
        elif code == "403":
            code = "AccessDenied"
        return code
    return type(exc).__name__
