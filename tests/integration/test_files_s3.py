"""The S3 files backend (gateway/files/storage_s3.py) against a real S3-compatible server
(moto's, over HTTP): multipart uploads sent part by part while the stream still runs, aborted
when the stream fails or is cancelled; reads back; deletes; and every storage failure — a
missing bucket, no credentials, credentials S3 refuses — is a 503 `files_unavailable`."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator

import pytest
from botocore.stub import Stubber

from gateway.errors import Unavailable
from gateway.files.storage_s3 import MIN_PART_BYTES, S3Storage
from tests.s3_server import REGION, S3Server, aws_env, s3_server
from tests.waiting import until

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server, aws_env():
        yield server


def storage(s3: S3Server, bucket: str, prefix: str = "farebox/") -> S3Storage:
    return S3Storage(
        bucket, prefix=prefix, endpoint_url=s3.url, region=REGION, part_bytes=MIN_PART_BYTES
    )


async def pieces(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield bytes([sent // size % 251]) * n
        sent += n


def expected(total: int, size: int = 64 * 1024) -> bytes:
    return b"".join(bytes([i // size % 251]) * min(size, total - i) for i in range(0, total, size))


def test_put_read_back_and_delete(s3: S3Server) -> None:
    bucket = s3.new_bucket()

    async def main() -> None:
        store = storage(s3, bucket)
        try:
            # Smaller than a part: one PUT. Larger: parts of at least the part size.
            for key, total in (("file-small", 1000), ("file-large", 12 * MIB + 5)):
                size, digest = await store.put(key, pieces(total))
                assert (size, digest) == (total, hashlib.sha256(expected(total)).hexdigest())
                back = b"".join([chunk async for chunk in store.open(key)])
                assert back == expected(total)
            assert s3.keys(bucket) == ["farebox/file-large", "farebox/file-small"]
            head = s3.client().head_object(Bucket=bucket, Key="farebox/file-large", PartNumber=1)
            assert head["PartsCount"] == 3  # 5 MiB + 5 MiB + the rest
            assert s3.open_uploads(bucket) == []

            await store.delete("file-large")
            await store.delete("file-large")  # nothing there: no error
            assert s3.keys(bucket) == ["farebox/file-small"]
            with pytest.raises(FileNotFoundError):
                async for _ in store.open("file-large"):
                    pass
            with pytest.raises(ValueError, match="unsafe"):
                await store.delete("../file-small")
            await store.check()
        finally:
            await store.close()

    asyncio.run(main())


def test_a_failed_stream_aborts_its_multipart_upload(s3: S3Server) -> None:
    bucket = s3.new_bucket()

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in pieces(11 * MIB):
            yield chunk
        raise ValueError("line 9000 is not JSON")

    async def main() -> None:
        store = storage(s3, bucket)
        try:
            with pytest.raises(ValueError, match="line 9000"):
                await store.put("file-bad", failing())
            assert s3.keys(bucket) == [] and s3.open_uploads(bucket) == []
        finally:
            await store.close()

    asyncio.run(main())


def test_parts_leave_while_the_stream_runs_and_a_cancel_aborts(s3: S3Server) -> None:
    bucket = s3.new_bucket()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        async for chunk in pieces(6 * MIB):
            yield chunk
        await release.wait()  # the client stalls mid-upload
        yield b"never sent"

    def first_part_stored() -> bool:
        uploads = s3.open_uploads(bucket)
        return bool(uploads) and bool(s3.parts(bucket, uploads[0]["Key"], uploads[0]["UploadId"]))

    async def main() -> None:
        store = storage(s3, bucket)
        try:
            upload = asyncio.create_task(store.put("file-slow", slow()))
            # One part is in S3 before the stream has ended: the file is never held whole.
            await until(lambda: asyncio.to_thread(first_part_stored), "the first part in S3")
            (part,) = s3.parts(
                bucket, *[s3.open_uploads(bucket)[0][k] for k in ("Key", "UploadId")]
            )
            assert MIN_PART_BYTES <= part["Size"] < MIN_PART_BYTES + 64 * 1024
            upload.cancel()  # the client went away
            with pytest.raises(asyncio.CancelledError):
                await upload
            assert s3.open_uploads(bucket) == [] and s3.keys(bucket) == []
        finally:
            await store.close()

    asyncio.run(main())


def test_a_missing_bucket_is_unavailable_not_an_error(s3: S3Server) -> None:
    async def main() -> None:
        store = storage(s3, "farebox-no-such-bucket")
        try:
            with pytest.raises(Unavailable, match="NoSuchBucket") as checked:
                await store.check()
            assert "farebox-no-such-bucket" in checked.value.message  # for the operator's log
            for call in (
                store.put("file-a", pieces(10)),
                store.delete("file-a"),
                anext(store.open("file-a")),
            ):
                with pytest.raises(Unavailable) as caught:
                    await call
                assert caught.value.status == 503 and caught.value.code == "files_unavailable"
                # The client's message does not name the bucket.
                assert "farebox-no-such-bucket" not in caught.value.message
        finally:
            await store.close()

    asyncio.run(main())


def test_missing_credentials_are_unavailable(s3: S3Server) -> None:
    bucket = s3.new_bucket()

    async def main() -> None:
        with aws_env(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY=""):
            store = storage(s3, bucket)
            try:
                with pytest.raises(Unavailable, match="NoCredentialsError"):
                    await store.check()
                with pytest.raises(Unavailable) as caught:
                    await store.put("file-a", pieces(10))
                assert caught.value.code == "files_unavailable"
            finally:
                await store.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (403, "403", "AccessDenied"),  # HEAD has no body: a bare status
        (403, "InvalidAccessKeyId", "InvalidAccessKeyId"),
        (403, "SignatureDoesNotMatch", "SignatureDoesNotMatch"),
    ],
)
def test_refused_credentials_are_unavailable(
    s3: S3Server, status: int, code: str, reason: str
) -> None:
    # moto takes any credentials: S3's refusals are played by botocore's stubber instead.
    async def main() -> None:
        store = storage(s3, "farebox-any")
        try:
            with Stubber(store.client) as stub:
                stub.add_client_error(
                    "head_bucket", service_error_code=code, http_status_code=status
                )
                stub.add_client_error(
                    "put_object", service_error_code=code, http_status_code=status
                )
                with pytest.raises(Unavailable, match=reason):
                    await store.check()
                with pytest.raises(Unavailable) as caught:
                    await store.put("file-a", pieces(10))
                assert caught.value.code == "files_unavailable" and reason in caught.value.message
        finally:
            await store.close()

    asyncio.run(main())
