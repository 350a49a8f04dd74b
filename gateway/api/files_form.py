"""A multipart/form-data body read part by part as it arrives (python-multipart's push parser
driven by the request stream), so an uploaded file flows to storage in chunks and is never
held whole: `next_part()` gives each part's name and filename, `data()` its bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import InvalidRequest, bad_request

# A part's headers, and a non-file field's value: far more than any real form sends.
HEADERS_MAX = 16 * 1024
FIELD_MAX = 4 * 1024


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data body; 400 for any other content type."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise bad_request(
            "Expected a multipart/form-data body with the fields 'file' and 'purpose'.",
            code="invalid_content_type",
        )
    return boundary


class StreamingForm:
    def __init__(self, body: AsyncIterator[bytes], boundary: bytes) -> None:
        self._body = body
        self._ended = False
        self._events: deque[tuple[str, bytes]] = deque()
        self._in_part = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_header_field": lambda d, s, e: self._events.append(("field", d[s:e])),
                "on_header_value": lambda d, s, e: self._events.append(("value", d[s:e])),
                "on_header_end": lambda: self._events.append(("header_end", b"")),
                "on_headers_finished": lambda: self._events.append(("headers", b"")),
                "on_part_data": lambda d, s, e: self._events.append(("data", d[s:e])),
                "on_part_end": lambda: self._events.append(("part_end", b"")),
                "on_end": lambda: self._events.append(("end", b"")),
            },
        )

    async def _next(self) -> tuple[str, bytes]:
        while not self._events:
            if self._ended:
                raise _malformed("the body ended in the middle of the form")
            chunk = await anext(self._body, None)
            try:
                if chunk is None:
                    self._ended = True
                    self._parser.finalize()
                elif chunk:
                    self._parser.write(chunk)
            except MultipartParseError as exc:
                raise _malformed(str(exc)) from None
        return self._events.popleft()

    async def next_part(self) -> Part | None:
        """The next part's name and filename (skipping what is left of the current part's
        data); None after the last part."""
        if self._in_part:
            async for _ in self.data():
                pass
        headers: dict[bytes, bytes] = {}
        field = value = b""
        seen = 0
        while True:
            kind, data = await self._next()
            if kind == "end":
                return None
            seen += len(data)
            if seen > HEADERS_MAX:
                raise _malformed("a part's headers are too long")
            if kind == "field":
                field += data
            elif kind == "value":
                value += data
            elif kind == "header_end":
                headers[field.strip().lower()] = value.strip()
                field = value = b""
            elif kind == "headers":
                break
        disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise _malformed("a part has no Content-Disposition form-data name")
        filename = options.get(b"filename")
        self._in_part = True
        return Part(
            name.decode("utf-8", "replace"),
            filename.decode("utf-8", "replace") if filename is not None else None,
        )

    async def data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, chunk by chunk."""
        while self._in_part:
            kind, data = await self._next()
            if kind == "data":
                if data:
                    yield data
            elif kind == "part_end":
                self._in_part = False

    async def field(self, name: str) -> str:
        """The current part read whole as a short text field."""
        value = b""
        async for chunk in self.data():
            value += chunk
            if len(value) > FIELD_MAX:
                raise bad_request(f"The form field {name!r} is too long.", param=name)
        return value.decode("utf-8", "replace")


def _malformed(detail: str) -> InvalidRequest:
    return bad_request(f"Malformed multipart/form-data body: {detail}.", code="invalid_multipart")
