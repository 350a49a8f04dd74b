"""Server-sent-event framing: split a byte stream into `data:` payloads."""

from __future__ import annotations


class SSEDecoder:
    """Incremental decoder: feed raw chunks, get the complete events' data payloads.

    Works on arbitrary chunk boundaries and on both LF and CRLF line endings; multi-line
    data is joined with newlines and comment-only events are skipped. Returning a list per
    chunk lets callers forward everything one network read brought in a single write.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if buffer.find(b"\r") >= 0:
            buffer = buffer.replace(b"\r\n", b"\n")
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        out = []
        for block in blocks:
            data = event_data(block)
            if data is not None:
                out.append(data)
        return out

    @property
    def pending(self) -> bool:
        """Whether part of an event is waiting for the rest."""
        return bool(self._buffer)

    def finish(self) -> list[bytes]:
        """Events left in the buffer when the stream ended without a blank line."""
        rest, self._buffer = self._buffer, b""
        data = event_data(rest) if rest.strip() else None
        return [data] if data is not None else []


def event_data(block: bytes) -> bytes | None:
    """The data of one event (its lines joined), None for a comment-only event."""
    if block.startswith(b"data:") and block.find(b"\n") < 0:
        return block[6:] if block[5:6] == b" " else block[5:]
    parts = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            parts.append(line[6:] if line[5:6] == b" " else line[5:])
    return b"\n".join(parts) if parts else None
