"""The check a `batch` file's JSONL must pass, run line by line while the upload streams in.

Each non-blank line is a JSON object with a unique string `custom_id`, `method` "POST", a `url`
the Batch API runs, and a `body` object. The first bad line ends the upload with a 400 naming
its number (1-based) and what is wrong; so does a file with more lines than the limit or none.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest, bad_request, clip

BATCH_URLS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
CUSTOM_ID_MAX = 512


class BatchLines:
    """Feed the upload's chunks as they come; `finish` at the end."""

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self.lines = 0  # non-blank lines checked
        self._number = 0  # physical line number, for messages
        self._tail = b""
        self._ids: set[str] = set()

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            self._line(data[start:end])
            start = end + 1
        self._tail = data[start:]

    def finish(self) -> None:
        if self._tail:
            self._line(self._tail)
            self._tail = b""
        if self.lines == 0:
            raise _invalid("The batch file has no requests: expected one JSON object per line.")

    def _line(self, raw: bytes) -> None:
        self._number += 1
        if not raw.strip():
            return
        self.lines += 1
        if self.lines > self.max_lines:
            raise _invalid(
                f"The batch file has more than {self.max_lines} requests (line {self._number}); "
                "split it into smaller batches."
            )
        problem = self._problem(raw)
        if problem is not None:
            raise _invalid(f"Line {self._number} of the batch file: {problem}.")

    def _problem(self, raw: bytes) -> str | None:
        try:
            line: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return f"not valid JSON ({clip(str(exc), 120)})"
        if type(line) is not dict:
            return "expected a JSON object"
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return "'custom_id' must be a non-empty string"
        if len(custom_id) > CUSTOM_ID_MAX:
            # The batch's line records keep it (batch_lines.custom_id is 512 characters).
            return f"'custom_id' is longer than {CUSTOM_ID_MAX} characters"
        if custom_id in self._ids:
            return f"'custom_id' {clip(custom_id, 64)!r} is used by an earlier line"
        if line.get("method") != "POST":
            return "'method' must be \"POST\""
        url = line.get("url")
        if url not in BATCH_URLS:
            return f"'url' must be one of {', '.join(BATCH_URLS)}, got {clip(repr(url), 80)}"
        if type(line.get("body")) is not dict:
            return "'body' must be a JSON object"
        self._ids.add(custom_id)
        return None


def _invalid(message: str) -> InvalidRequest:
    return bad_request(message, param="file", code="invalid_file")
