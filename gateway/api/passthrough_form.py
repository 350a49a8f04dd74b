"""A multipart upload (/v1/audio/transcriptions) streamed to the upstream, never held whole.

The client's form is read as it arrives (gateway/api/files_form.py's push parser): its text
fields are kept (small), and the file part's bytes go to an unnamed temporary file *and*, at
the same pace, to the first attempt's upstream request — each attempt re-encodes the form
with its deployment's model name and chunked transfer encoding. A retry or a fallback
replays the file from the start: what is spooled already is read back, the rest still comes
from the client. So memory stays at a few chunks whatever the file's size, the upstream
sees the upload begin before it ends, and failover still works.

If the form's `model` comes after the file (curl -F file=@… -F model=…), the file is spooled
whole first: the route is not known until then.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator

from python_multipart.multipart import parse_options_header

from gateway.api.asgi import ClientGone, Receive, Scope, body_too_large, header
from gateway.api.files_form import StreamingForm
from gateway.errors import GatewayError, InvalidRequest, RequestTimeout, bad_request

# OpenAI's own limit on an audio upload, plus room for the form around the file.
AUDIO_MAX_BYTES = 25 * 1024 * 1024 + 64 * 1024
# Text fields of one form, together (language, prompt, response_format, …).
FIELDS_MAX = 64 * 1024
_READ = 256 * 1024


def _boundary(scope: Scope) -> bytes:
    raw = header(scope, b"content-type")
    kind, options = parse_options_header(raw or b"")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise bad_request(
            "Expected a multipart/form-data body with the fields 'file' and 'model'.",
            code="invalid_content_type",
        )
    return boundary


async def _client_body(
    scope: Scope, receive: Receive, limit: int, idle_s: float
) -> AsyncIterator[bytes]:
    """The request body chunk by chunk: at most `limit` bytes (413), no silence longer
    than `idle_s` between chunks (408), ClientGone if the client hangs up."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle_s):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(f"The upload stalled for more than {idle_s:g} s.") from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _field_part(boundary: bytes, name: str, value: str) -> bytes:
    return (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + _quoted(name) + b'"'
        b"\r\n\r\n" + value.encode() + b"\r\n"
    )


def _quoted(value: str) -> bytes:
    # RFC 7578 §4.2: quotes and line breaks in a name are percent-encoded.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A").encode()


class UploadForm:
    """One multipart upload: its text fields, and its file part as a replayable stream."""

    def __init__(self, form: StreamingForm) -> None:
        self._form = form
        self.fields: list[tuple[str, str]] = []
        self.filename = "file"
        self.size = 0  # file bytes spooled so far
        self.error: GatewayError | None = None
        self._fields_bytes = 0
        self._spool = tempfile.TemporaryFile(prefix="farebox-upload-")  # noqa: SIM115 (closed by close())
        self._fd = self._spool.fileno()
        self._source: AsyncIterator[bytes] | None = None
        self._file_done = False
        self._form_done = False
        self._lock = asyncio.Lock()
        self.boundary = b"farebox-" + os.urandom(12).hex().encode()

    @classmethod
    async def open(
        cls, scope: Scope, receive: Receive, idle_s: float, limit: int = AUDIO_MAX_BYTES
    ) -> UploadForm:
        """Read the form up to its file part (and, when `model` has not come yet, past it);
        400 when the file or the model is missing."""
        boundary = _boundary(scope)
        self = cls(StreamingForm(_client_body(scope, receive, limit, idle_s), boundary))
        try:
            await self._read_parts(stop_at_file=True)
            if self._source is None:
                raise bad_request(
                    "Missing required parameter: 'file' (a multipart file part).",
                    param="file",
                    code="missing_required_parameter",
                )
            if self.value("model") is None:
                while not self._file_done:
                    await self._pull()
                await self._read_parts(stop_at_file=False)
        except BaseException:
            self.close()
            raise
        return self

    def value(self, name: str) -> str | None:
        for key, value in self.fields:
            if key == name:
                return value
        return None

    async def _read_parts(self, *, stop_at_file: bool) -> None:
        form = self._form
        while (part := await form.next_part()) is not None:
            if part.filename is None:
                value = await form.field(part.name)
                self._fields_bytes += len(part.name) + len(value)
                if self._fields_bytes > FIELDS_MAX:
                    raise bad_request("The form's text fields are too long.", param=part.name)
                self.fields.append((part.name, value))
                continue
            if part.name != "file" or self._source is not None:
                raise bad_request(
                    f"Unexpected file part {part.name!r}: send one audio file as 'file'.",
                    param=part.name,
                )
            self.filename = part.filename or "file"
            self._source = form.data()
            if stop_at_file:
                return
        self._form_done = True

    async def _pull(self) -> None:
        """One more piece of the upload: a chunk of the file into the spool or, after the
        file, the text fields that follow it. Called under the lock by readers."""
        try:
            if not self._file_done:
                assert self._source is not None
                chunk = await anext(self._source, None)
                if chunk is None:
                    self._file_done = True
                else:
                    os.write(self._fd, chunk)
                    self.size += len(chunk)
                return
            if not self._form_done:
                await self._read_parts(stop_at_file=False)
        except GatewayError as exc:
            self.error = exc
            raise
        except ClientGone:
            self.error = InvalidRequest("The client closed the connection mid-upload.")
            raise

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file from its first byte: spooled bytes read back, then the rest as it
        arrives (several readers may run at once: a hedge)."""
        offset = 0
        while True:
            if offset < self.size:
                data = os.pread(self._fd, min(_READ, self.size - offset), offset)
                offset += len(data)
                yield data
                continue
            if self._file_done:
                return
            async with self._lock:
                if offset >= self.size and not self._file_done:
                    await self._pull()

    async def encode(self, model: str) -> AsyncIterator[bytes]:
        """The form for one attempt: `model` replaced, the fields known so far, the file,
        then any fields that came after the file."""
        boundary = self.boundary
        fields = list(self.fields)
        head = b"".join(
            _field_part(boundary, name, model if name == "model" else value)
            for name, value in fields
        )
        filename = _quoted(self.filename)
        yield head + (
            b"--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="file"; filename="'
            + filename
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        async for chunk in self.file_chunks():
            yield chunk
        async with self._lock:
            while not self._form_done:
                await self._pull()
        tail = b"".join(
            _field_part(boundary, name, model if name == "model" else value)
            for name, value in self.fields[len(fields) :]
        )
        yield b"\r\n" + tail + b"--" + boundary + b"--\r\n"

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary.decode()}"

    def close(self) -> None:
        self._spool.close()
