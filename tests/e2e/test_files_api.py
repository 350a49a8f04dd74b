"""The Files API (`/v1/files`) through the real OpenAI Python SDK, unchanged, on a gateway with
a real ledger database (SQLite and PostgreSQL): upload, list, retrieve, read back byte for
byte, delete; one key never sees another's files; `batch` files are checked line by line while
they stream in; the size limit is a 413. Every body is validated against OpenAI's spec.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from gateway.files.storage import LocalDirectory
from gateway.ledger.migrate import upgrade
from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows
from tests.openapi import check

ALICE = "sk-files-alice-01"
BOB = "sk-files-bob-0001"
MAX_BYTES = 64 * 1024

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


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest, simulator: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    directory = Path(tmp_path_factory.mktemp("files"))
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    settings = sqlite_settings(directory, files_max_bytes=MAX_BYTES, files_max_lines=100)
    if request.param == "postgres":
        postgres = request.getfixturevalue("postgres")
        name = f"files_{uuid.uuid4().hex[:12]}"
        postgres.create_database(name)
        url = postgres.url(name)
        upgrade(url)
        settings = settings.model_copy(update={"database_url": url})
    with running_gateway(config, settings) as running:
        yield running


def stored_dir(gw: RunningGateway) -> Path:
    store = gw.state.files
    assert store is not None and isinstance(store.storage, LocalDirectory)
    return store.storage.directory


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
    assert (stored_dir(gw) / created.id).read_bytes() == data

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
    assert not (stored_dir(gw) / created.id).exists()


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
