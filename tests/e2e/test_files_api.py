"""The Files API (`/v1/files`) through the real OpenAI Python SDK, unchanged, on a gateway with
a real ledger database (SQLite and PostgreSQL) and each storage backend (a local directory, an
S3-compatible server): upload, list, retrieve, read back byte for byte, delete; one key never
sees another's files; `batch` files are checked line by line while they stream in; the size
limit is a 413; a large upload streams into storage (never held whole) and a refused one
leaves nothing behind; `expires_after` makes a file a 404 once it expires, and the purge
removes it. Every body is validated against OpenAI's spec.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.files.storage import LocalDirectory
from gateway.files.storage_s3 import MIN_PART_BYTES, S3Storage
from gateway.files.store import FileStore
from gateway.ledger.migrate import upgrade
from gateway.ledger.models_files import files_table
from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows
from tests.openapi import check
from tests.s3_server import REGION, S3Server, aws_env, s3_server
from tests.waiting import wait_until

ALICE = "sk-files-alice-01"
BOB = "sk-files-bob-0001"
MAX_BYTES = 64 * 1024
MIB = 1024 * 1024
# The purge of expired files runs this often here (production: every few minutes).
PURGE_S = 0.2

CONFIG = f"""
auth:
  keys:
    - {{name: alice, key: {ALICE}}}
    - {{name: bob, key: {BOB}}}
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1", api_key: "${{SIM_KEY}}"}}
deployments:
  small@sim: {{provider: sim, model: "sim-small::tokens=5", price: {{input: 1.0, output: 2.0}}}}
routes:
  chat: {{targets: [small@sim]}}
"""


def batch_line(n: int, url: str = "/v1/chat/completions") -> bytes:
    body = {"model": "chat", "messages": [{"role": "user", "content": f"question {n}"}]}
    line = {"custom_id": f"req-{n}", "method": "POST", "url": url, "body": body}
    return orjson.dumps(line) + b"\n"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server, aws_env():
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgres", "postgres-s3"])
def gw(
    request: pytest.FixtureRequest, simulator: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    directory = Path(tmp_path_factory.mktemp("files"))
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    settings = sqlite_settings(
        directory, files_max_bytes=MAX_BYTES, files_max_lines=100, files_purge_interval_s=PURGE_S
    )
    if request.param.endswith("-s3"):
        server: S3Server = request.getfixturevalue("s3")
        settings = settings.model_copy(
            update={
                "files_backend": "s3",
                "files_s3_bucket": server.new_bucket(),
                "files_s3_prefix": "farebox/files/",
                "files_s3_endpoint_url": server.url,
                "files_s3_region": REGION,
                "files_s3_part_bytes": MIN_PART_BYTES,
            }
        )
    if request.param.startswith("postgres"):
        postgres = request.getfixturevalue("postgres")
        name = f"files_{uuid.uuid4().hex[:12]}"
        postgres.create_database(name)
        url = postgres.url(name)
        upgrade(url)
        settings = settings.model_copy(update={"database_url": url})
    with running_gateway(config, settings) as running:
        yield running


def files_store(gw: RunningGateway) -> FileStore:
    store = gw.state.files
    assert store is not None
    return store


def stored(gw: RunningGateway, file_id: str) -> bytes | None:
    """The file's bytes as the backend holds them (None: nothing there), read past the
    gateway: from the directory, or from the bucket with a client of the test's own."""
    storage = files_store(gw).storage
    if isinstance(storage, LocalDirectory):
        path = storage.directory / file_id
        return path.read_bytes() if path.exists() else None
    assert isinstance(storage, S3Storage) and storage.endpoint_url is not None
    client = S3Server(storage.endpoint_url).client()
    try:
        got = client.get_object(Bucket=storage.bucket, Key=storage.prefix + file_id)
    except client.exceptions.NoSuchKey:
        return None
    return bytes(got["Body"].read())


def in_flight(gw: RunningGateway) -> list[int]:
    """Sizes of what an upload still running has put in storage so far: the local backend's
    partial files, or the parts of the bucket's open multipart uploads. Empty once every
    upload has completed or been cleaned up."""
    storage = files_store(gw).storage
    if isinstance(storage, LocalDirectory):
        return [p.stat().st_size for p in storage.directory.glob(".*.part")]
    assert isinstance(storage, S3Storage) and storage.endpoint_url is not None
    server = S3Server(storage.endpoint_url)
    return [
        part["Size"]
        for upload in server.open_uploads(storage.bucket)
        for part in server.parts(storage.bucket, upload["Key"], upload["UploadId"])
    ]


def client(gw: RunningGateway, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def raw(
    gw: RunningGateway,
    method: str,
    path: str,
    key: str = ALICE,
    content_type: str | None = None,
    **kw: object,
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    if content_type is not None:
        headers["content-type"] = content_type
    return httpx.request(method, gw.root + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


def test_upload_list_retrieve_content_delete(gw: RunningGateway) -> None:
    sdk = client(gw)
    data = b"".join(batch_line(n) for n in range(20)) + batch_line(20, "/v1/embeddings")
    created = sdk.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.id.startswith("file-")
    assert (created.object, created.bytes, created.filename) == ("file", len(data), "input.jsonl")
    assert (created.purpose, created.status, created.expires_at) == ("batch", "processed", None)

    got = raw(gw, "GET", f"/v1/files/{created.id}")
    assert got.status_code == 200 and got.headers["x-request-id"]
    check("OpenAIFile", got.json())
    assert sdk.files.retrieve(created.id) == created

    assert sdk.files.content(created.id).read() == data
    assert stored(gw, created.id) == data

    other = sdk.files.create(file=("notes.txt", b"hello\x00world"), purpose="user_data")
    listed = raw(gw, "GET", "/v1/files")
    assert listed.status_code == 200
    check("ListFilesResponse", listed.json())
    ids = [f.id for f in sdk.files.list()]
    assert ids[:2] == [other.id, created.id]  # newest first
    assert [f.id for f in sdk.files.list(purpose="batch")] == [created.id]
    page = sdk.files.list(limit=1, order="asc")
    assert len(page.data) == 1 and page.has_more
    after = sdk.files.list(limit=1, order="asc", after=page.data[0].id)
    assert after.data[0].id != page.data[0].id

    deleted = raw(gw, "DELETE", f"/v1/files/{other.id}")
    check("DeleteFileResponse", deleted.json())
    assert deleted.json() == {"id": other.id, "object": "file", "deleted": True}
    assert sdk.files.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.delete(created.id)
    assert created.id not in [f.id for f in sdk.files.list()]
    # The bytes go with the row: nothing left in storage.
    assert stored(gw, created.id) is None


def test_another_key_cannot_see_a_file(gw: RunningGateway) -> None:
    mine = client(gw).files.create(file=("a.jsonl", batch_line(1)), purpose="batch")
    theirs = client(gw, BOB)
    for call in (theirs.files.retrieve, theirs.files.content, theirs.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(mine.id)
    assert mine.id not in [f.id for f in theirs.files.list()]
    assert client(gw).files.retrieve(mine.id).id == mine.id  # still there for its owner
    unknown = raw(gw, "GET", "/v1/files", key="sk-not-a-key")
    assert unknown.status_code == 401 and unknown.headers["x-request-id"]


@pytest.mark.parametrize(
    ("line", "wrong"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"method": "POST", "url": "/v1/embeddings", "body": {}}', "'custom_id'"),
        (
            b'{"custom_id": "req-0", "method": "POST", "url": "/v1/embeddings", "body": {}}',
            "earlier line",
        ),
        (b'{"custom_id": "x", "method": "GET", "url": "/v1/embeddings", "body": {}}', "'method'"),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/images", "body": {}}', "'url'"),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": "hi"}', "'body'"),
    ],
)
def test_a_bad_batch_line_is_a_400_naming_it(gw: RunningGateway, line: bytes, wrong: str) -> None:
    data = batch_line(0) + b"\n" + batch_line(1) + line + b"\n" + batch_line(3)
    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).files.create(file=("bad.jsonl", data), purpose="batch")
    message = caught.value.response.json()["error"]["message"]
    assert "Line 4 of the batch file" in message and wrong in message, message
    assert caught.value.response.headers["x-request-id"]
    # The same bytes are a fine file for another purpose.
    assert client(gw).files.create(file=("ok.jsonl", data), purpose="user_data").bytes == len(data)


def test_batch_line_limit_and_purpose_after_file(gw: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError, match="more than 100 requests"):
        data = b"".join(batch_line(n) for n in range(101))
        client(gw).files.create(file=("big.jsonl", data), purpose="batch")
    # curl may send the file before the purpose: the lines are checked once it is known.
    for content, status in ((batch_line(1) + b"oops\n", 400), (batch_line(1), 200)):
        body = (
            b'--XyZ\r\ncontent-disposition: form-data; name="file"; filename="late.jsonl"\r\n'
            b"content-type: application/jsonl\r\n\r\n" + content + b"\r\n"
            b'--XyZ\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--XyZ--\r\n'
        )
        sent = raw(
            gw,
            "POST",
            "/v1/files",
            content=body,
            content_type="multipart/form-data; boundary=XyZ",
        )
        assert sent.status_code == status, sent.text
    assert "Line 2 of the batch file" in raw_error_for(gw, batch_line(1) + b"oops\n")


def raw_error_for(gw: RunningGateway, content: bytes) -> str:
    files = {"file": ("x.jsonl", content)}
    sent = raw(gw, "POST", "/v1/files", data={"purpose": "batch"}, files=files)
    assert sent.status_code == 400
    return str(sent.json()["error"]["message"])


def test_an_oversize_upload_is_a_413(gw: RunningGateway) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(gw).files.create(file=("big.bin", b"x" * (MAX_BYTES + 1)), purpose="user_data")
    assert caught.value.status_code == 413
    assert f"limit of {MAX_BYTES} bytes" in caught.value.message
    # Declared far past the limit: refused before the body is read.
    with pytest.raises(openai.APIStatusError) as caught:
        client(gw).files.create(file=("huge.bin", b"x" * (4 * MAX_BYTES)), purpose="user_data")
    assert caught.value.status_code == 413
    assert (
        client(gw).files.create(file=("fits.bin", b"x" * MAX_BYTES), purpose="user_data").bytes
        == MAX_BYTES
    )


def test_bad_requests_are_400s(gw: RunningGateway) -> None:
    not_multipart = raw(gw, "POST", "/v1/files", json={"purpose": "batch", "file": "x"})
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["error"]["message"]
    assert not_multipart.headers["x-request-id"]
    no_file = raw(gw, "POST", "/v1/files", data={"purpose": "batch"}, files={"other": ("a", b"1")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    with pytest.raises(openai.BadRequestError, match="Invalid purpose"):
        client(gw).files.create(file=("a.txt", b"1"), purpose="homework")  # type: ignore[arg-type]
    bad_limit = raw(gw, "GET", "/v1/files", params={"limit": "zero"})
    assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "limit"


def test_rows_are_in_the_ledger_database(gw: RunningGateway) -> None:
    made = client(gw).files.create(file=("row.jsonl", batch_line(7)), purpose="batch")
    rows = sql_rows(
        ledger_url(gw), "SELECT key_id, purpose, bytes FROM files WHERE id = :id", {"id": made.id}
    )
    assert [tuple(r) for r in rows] == [("alice", "batch", len(batch_line(7)))]


def test_a_draining_gateway_takes_no_new_file_requests(gw: RunningGateway) -> None:
    made = client(gw).files.create(file=("d.jsonl", batch_line(1)), purpose="batch")
    assert gw.app is not None
    drain = gw.app.app.state.drain
    drain.active = True  # as from SIGTERM on (gateway/serving/server.py)
    try:
        refused = raw(gw, "GET", f"/v1/files/{made.id}")
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "gateway_shutting_down"
    finally:
        drain.active = False
    assert raw(gw, "GET", f"/v1/files/{made.id}").status_code == 200


def streamed_upload(
    gw: RunningGateway, size: int, midway: Callable[[], None], purpose: str = "user_data"
) -> httpx.Response:
    """POST a `size`-byte file as a chunked multipart body (no content-length), calling
    `midway` once half of it is sent; the bytes are a counter, so order errors show."""
    boundary = b"farebox-stream"

    def body() -> Iterator[bytes]:
        yield b"--" + boundary + b'\r\ncontent-disposition: form-data; name="purpose"\r\n\r\n'
        yield purpose.encode() + b"\r\n--" + boundary + b"\r\n"
        yield b'content-disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
        for offset in range(0, size, 256 * 1024):
            if offset == size // 2:
                midway()
            yield pattern(offset, min(256 * 1024, size - offset))
        yield b"\r\n--" + boundary + b"--\r\n"

    return httpx.post(
        gw.root + "/v1/files",
        content=body(),
        headers={
            "authorization": f"Bearer {ALICE}",
            "content-type": f"multipart/form-data; boundary={boundary.decode()}",
        },
        timeout=120,
    )


def pattern(offset: int, length: int) -> bytes:
    return (offset // 256 % 256).to_bytes(1, "big") * length


@pytest.fixture
def big_files(gw: RunningGateway) -> Iterator[FileStore]:
    """The gateway's store with room for files of tens of MiB, for one test."""
    store = files_store(gw)
    store.max_bytes = 64 * MIB
    try:
        yield store
    finally:
        store.max_bytes = MAX_BYTES


def test_a_large_upload_streams_into_storage(gw: RunningGateway, big_files: FileStore) -> None:
    size = 24 * MIB

    def halfway() -> None:
        # Half the file is sent and the body is still open: storage already holds most of it
        # (several parts in S3, or the partial file on disk), so the file is not held whole.
        wait_until(lambda: sum(in_flight(gw)) >= 2 * MIN_PART_BYTES, "bytes in storage")
        assert max(in_flight(gw)) < MIN_PART_BYTES + MIB or isinstance(
            big_files.storage, LocalDirectory
        ), "an S3 part larger than the part size: the upload is being buffered"

    sent = streamed_upload(gw, size, halfway)
    assert sent.status_code == 200, sent.text
    made = sent.json()
    check("OpenAIFile", made)
    assert made["bytes"] == size
    digest = hashlib.sha256()
    with httpx.stream(
        "GET",
        gw.root + f"/v1/files/{made['id']}/content",
        headers={"authorization": f"Bearer {ALICE}"},
        timeout=60,
    ) as back:
        assert back.status_code == 200 and back.headers["content-length"] == str(size)
        for chunk in back.iter_bytes():
            digest.update(chunk)
    expected = hashlib.sha256()
    for offset in range(0, size, 256 * 1024):
        expected.update(pattern(offset, min(256 * 1024, size - offset)))
    assert digest.hexdigest() == expected.hexdigest()
    assert in_flight(gw) == []
    if isinstance(big_files.storage, S3Storage):
        bucket = S3Server(big_files.storage.endpoint_url or "").client()
        key = big_files.storage.prefix + made["id"]
        head = bucket.head_object(Bucket=big_files.storage.bucket, Key=key, PartNumber=1)
        assert head["PartsCount"] == 5  # 24 MiB in parts of 5 MiB
    assert client(gw).files.delete(made["id"]).deleted


def test_a_refused_large_upload_leaves_nothing(gw: RunningGateway, big_files: FileStore) -> None:
    big_files.max_bytes = 16 * MIB
    before = [f.id for f in client(gw).files.list()]

    def halfway() -> None:
        wait_until(lambda: sum(in_flight(gw)) >= MIN_PART_BYTES, "bytes in storage")

    refused = streamed_upload(gw, 24 * MIB, halfway)
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"]["code"] == "file_too_large"
    # The partial file is removed, the multipart upload aborted: no part is left.
    assert in_flight(gw) == []
    assert [f.id for f in client(gw).files.list()] == before


def test_expires_after(gw: RunningGateway) -> None:
    sdk = client(gw)
    made = sdk.files.create(
        file=("exp.jsonl", batch_line(1)),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert made.expires_at == made.created_at + 3600
    got = raw(gw, "GET", f"/v1/files/{made.id}")
    check("OpenAIFile", got.json())
    assert got.json()["expires_at"] == made.expires_at
    assert next(f for f in sdk.files.list() if f.id == made.id).expires_at == made.expires_at
    kept = sdk.files.create(file=("kept.txt", b"1"), purpose="user_data")
    assert "expires_at" not in raw(gw, "GET", f"/v1/files/{kept.id}").json()


@pytest.mark.parametrize(
    ("fields", "param", "wrong"),
    [
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "seconds", "60"),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"},
            "seconds",
            "between 3600",
        ),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "seconds", ""),
        (
            {"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
            "anchor",
            "last_active_at",
        ),
        ({"expires_after[seconds]": "3600"}, "anchor", "missing"),
    ],
)
def test_a_bad_expires_after_is_a_400(
    gw: RunningGateway, fields: dict[str, str], param: str, wrong: str
) -> None:
    form = {"purpose": "user_data", **fields}
    sent = raw(gw, "POST", "/v1/files", data=form, files={"file": ("a", b"1")})
    assert sent.status_code == 400, sent.text
    error = sent.json()["error"]
    assert error["param"] == f"expires_after.{param}" and wrong in error["message"]


def expire_now(gw: RunningGateway, file_id: str) -> None:
    """Move the file's expiry into the past, as an hour's wait would."""

    async def run() -> None:
        engine = create_async_engine(ledger_url(gw))
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    update(files_table)
                    .where(files_table.c.id == file_id)
                    .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_an_expired_file_is_gone_and_purged(gw: RunningGateway) -> None:
    sdk = client(gw)
    made = sdk.files.create(
        file=("soon.jsonl", batch_line(1)),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert stored(gw, made.id) == batch_line(1)
    expire_now(gw, made.id)
    # A 404 at once, before any purge: retrieve, content, delete, and gone from the list.
    for call in (sdk.files.retrieve, sdk.files.content, sdk.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(made.id)
    assert made.id not in [f.id for f in sdk.files.list()]
    # The background purge takes the bytes, then the row.
    select_row = "SELECT id FROM files WHERE id = :id"
    wait_until(
        lambda: (
            stored(gw, made.id) is None
            and sql_rows(ledger_url(gw), select_row, {"id": made.id}) == []
        ),
        "the purge of the expired file",
    )


def test_an_unusable_bucket_is_a_503_not_a_500(
    s3: S3Server,
    simulator: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    settings = sqlite_settings(
        tmp_path,
        files_backend="s3",
        files_s3_bucket="farebox-no-such-bucket",
        files_s3_endpoint_url=s3.url,
        files_s3_region=REGION,
    )
    with caplog.at_level("ERROR", logger="farebox.files"), running_gateway(config, settings) as gw:
        # Said at start-up, naming the bucket, for the operator.
        wait_until(
            lambda: any("farebox-no-such-bucket" in r.getMessage() for r in caplog.records),
            "the start-up error",
        )
        assert "NoSuchBucket" in caplog.text
        form = {"purpose": "user_data"}
        sent = raw(gw, "POST", "/v1/files", data=form, files={"file": ("a.txt", b"hello")})
        assert sent.status_code == 503, sent.text
        error: dict[str, Any] = sent.json()["error"]
        assert error["code"] == "files_unavailable" and "NoSuchBucket" in error["message"]
        assert "farebox-no-such-bucket" not in error["message"]
        assert sent.headers["x-request-id"]
        # The metadata is in the database: listing works without the bucket.
        assert raw(gw, "GET", "/v1/files").json()["data"] == []
