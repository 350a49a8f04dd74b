"""The transcription upload's tee (gateway/api/passthrough_form.py), fed by a fake ASGI receive:
each attempt's body is a well-formed form with its own model name and the whole file, whether
readers run one after another (a fallback) or at once (a hedge), whatever the chunk sizes, with
the fields that follow the file at the end; the client's errors are kept for the service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.api.files_form import StreamingForm
from gateway.api.passthrough_form import UploadForm
from gateway.errors import GatewayError, PayloadTooLarge

FILE = bytes(range(256)) * 400  # 100 KiB, every byte value


def form(*parts: tuple[str, bytes, str | None], boundary: str = "b0und") -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def receiver(body: bytes, size: int) -> Any:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)  # a loop turn per chunk, so readers interleave
        if not chunks:
            return {"type": "http.disconnect"}
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    return receive


def scope(boundary: str = "b0und") -> dict[str, Any]:
    return {"headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]}


async def collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in body])


async def parse(data: bytes, boundary: bytes) -> dict[str, tuple[str | None, bytes]]:
    async def source() -> AsyncIterator[bytes]:
        yield data

    reader = StreamingForm(source(), boundary)
    parts: dict[str, tuple[str | None, bytes]] = {}
    while (part := await reader.next_part()) is not None:
        parts[part.name] = (part.filename, b"".join([c async for c in reader.data()]))
    return parts


@pytest.mark.parametrize("size", [1000, 4096, 70_000])
@pytest.mark.parametrize("together", [False, True])
def test_every_reader_gets_the_whole_form_with_its_model(size: int, together: bool) -> None:
    body = form(
        ("model", b"transcribe", None),
        ("language", b"en", None),
        ("file", FILE, "talk.wav"),
        ("prompt", b"after the file", None),
    )

    async def run() -> list[bytes]:
        upload = await UploadForm.open(scope(), receiver(body, size), idle_s=5)
        try:
            assert upload.value("model") == "transcribe"
            if together:
                return list(
                    await asyncio.gather(
                        collect(upload.encode("whisper-1")), collect(upload.encode("whisper-2"))
                    )
                )
            return [await collect(upload.encode("whisper-1")), await collect(upload.encode("w2"))]
        finally:
            upload.close()

    first, second = asyncio.run(run())
    for data, model in ((first, "whisper-1"), (second, "whisper-2" if together else "w2")):
        parts = asyncio.run(parse(data, data[2 : data.index(b"\r\n")]))
        assert parts["model"] == (None, model.encode())
        assert parts["language"] == (None, b"en")
        assert parts["prompt"] == (None, b"after the file")
        assert parts["file"] == ("talk.wav", FILE)


def test_model_after_the_file_spools_it_first() -> None:
    body = form(("file", FILE, "late.wav"), ("model", b"transcribe", None))

    async def run() -> tuple[int, bytes]:
        upload = await UploadForm.open(scope(), receiver(body, 8192), idle_s=5)
        try:
            spooled = upload.size  # the whole file was read before the route was known
            return spooled, await collect(upload.encode("whisper-1"))
        finally:
            upload.close()

    spooled, data = asyncio.run(run())
    assert spooled == len(FILE)
    parts = asyncio.run(parse(data, data[2 : data.index(b"\r\n")]))
    assert parts["model"] == (None, b"whisper-1") and parts["file"] == ("late.wav", FILE)


def test_a_client_error_mid_file_is_kept_for_the_service() -> None:
    body = form(("model", b"transcribe", None), ("file", FILE, "big.wav"))

    async def run() -> GatewayError | None:
        upload = await UploadForm.open(
            scope(), receiver(body, 4096), idle_s=5, limit=len(body) // 2
        )
        try:
            with pytest.raises(PayloadTooLarge):
                await collect(upload.encode("whisper-1"))
            return upload.error
        finally:
            upload.close()

    assert isinstance(asyncio.run(run()), PayloadTooLarge)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ((("model", b"transcribe", None),), "'file'"),
        ((("file", b"x", "a.wav"), ("file", b"y", "b.wav")), "Unexpected file part"),
    ],
)
def test_bad_forms_are_400s(parts: tuple[tuple[str, bytes, str | None], ...], message: str) -> None:
    body = form(*parts)

    async def run() -> None:
        upload = await UploadForm.open(scope(), receiver(body, 100_000), idle_s=5)
        upload.close()

    with pytest.raises(GatewayError, match=message) as info:
        asyncio.run(run())
    assert info.value.status == 400
