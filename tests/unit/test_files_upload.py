"""The pieces of a `/v1/files` upload that see the bytes as they arrive, fed in every split:
the batch-line check (gateway/files/batch_lines.py), the streaming multipart reader
(gateway/api/files_form.py) and the local storage backend (gateway/files/storage.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from gateway.api.files_form import StreamingForm, boundary_of
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.files.batch_lines import BatchLines
from gateway.files.storage import LocalDirectory


def line(n: int) -> bytes:
    body = {"custom_id": f"r{n}", "method": "POST", "url": "/v1/embeddings", "body": {"n": n}}
    return orjson.dumps(body)


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 7, 64, 10_000])
def test_batch_lines_any_split_crlf_and_blank_lines(size: int) -> None:
    data = line(1) + b"\r\n\r\n" + line(2) + b"\n" + line(3)  # no final newline
    lines = BatchLines(max_lines=10)
    for chunk in chunked(data, size):
        lines.feed(chunk)
    lines.finish()
    assert lines.lines == 3


@pytest.mark.parametrize("size", [1, 5, 10_000])
def test_batch_lines_names_the_physical_line(size: int) -> None:
    data = line(1) + b"\n\n" + line(2) + b"\n" + b'{"custom_id": "x"}' + b"\n" + line(4)
    lines = BatchLines(max_lines=10)
    with pytest.raises(InvalidRequest, match=r"^Line 4 of the batch file: 'method'"):
        for chunk in chunked(data, size):
            lines.feed(chunk)
        lines.finish()


def test_batch_lines_refuse_a_custom_id_the_batch_cannot_keep() -> None:
    lines = BatchLines(max_lines=10)
    long_id = {"custom_id": "x" * 513, "method": "POST", "url": "/v1/embeddings", "body": {}}
    lines.feed(line(1) + b"\n")
    with pytest.raises(InvalidRequest, match=r"^Line 2 of the batch file: 'custom_id' is longer"):
        lines.feed(orjson.dumps(long_id) + b"\n")


def test_batch_lines_limits() -> None:
    lines = BatchLines(max_lines=2)
    lines.feed(line(1) + b"\n" + line(2) + b"\n")
    with pytest.raises(InvalidRequest, match="more than 2 requests"):
        lines.feed(line(3) + b"\n")
    empty = BatchLines(max_lines=2)
    empty.feed(b"\n \n")
    with pytest.raises(InvalidRequest, match="no requests"):
        empty.finish()


FORM = (
    b"--b0undary\r\n"
    b'Content-Disposition: form-data; name="purpose"\r\n\r\n'
    b"batch\r\n"
    b"--b0undary\r\n"
    b'Content-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
    b"line one\r\n--not the boundary\r\nline two\r\n"
    b"--b0undary--\r\n"
)


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    yield b""  # Starlette's request.stream() ends with an empty chunk


@pytest.mark.parametrize("size", [1, 3, 17, 10_000])
def test_streaming_form_any_split(size: int) -> None:
    async def main() -> list[tuple[str, str | None, bytes]]:
        form = StreamingForm(
            _stream(chunked(FORM, size)), boundary_of("multipart/form-data; boundary=b0undary")
        )
        seen = []
        while (part := await form.next_part()) is not None:
            body = b"".join([chunk async for chunk in form.data()])
            seen.append((part.name, part.filename, body))
        return seen

    assert asyncio.run(main()) == [
        ("purpose", None, b"batch"),
        ("file", "in.jsonl", b"line one\r\n--not the boundary\r\nline two"),
    ]


def test_streaming_form_refuses_other_bodies() -> None:
    with pytest.raises(InvalidRequest, match="multipart/form-data"):
        boundary_of("application/json")

    async def truncated() -> None:
        form = StreamingForm(_stream([FORM[:60]]), b"b0undary")
        while await form.next_part() is not None:
            pass

    with pytest.raises(InvalidRequest, match="ended in the middle"):
        asyncio.run(truncated())


def test_local_storage_leaves_nothing_of_a_failed_put(tmp_path: Path) -> None:
    storage = LocalDirectory(tmp_path / "files")

    async def refused() -> AsyncIterator[bytes]:
        yield b"x" * 10
        raise PayloadTooLarge("too big")

    async def main() -> bytes:
        with pytest.raises(PayloadTooLarge):
            await storage.put("file-a", refused())
        assert list((tmp_path / "files").iterdir()) == []
        size, digest = await storage.put("file-b", _stream([b"ab", b"c"]))
        assert (size, digest[:8]) == (3, "ba7816bf")  # sha256("abc")
        read = b"".join([chunk async for chunk in storage.open("file-b")])
        await storage.delete("file-b")
        await storage.delete("file-b")  # already gone: nothing happens
        with pytest.raises(FileNotFoundError):
            [chunk async for chunk in storage.open("file-b")]
        return read

    assert asyncio.run(main()) == b"abc"
    with pytest.raises(ValueError):
        asyncio.run(storage.delete("../escape"))
