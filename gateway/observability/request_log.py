"""One JSON line per request on the `farebox.requests` logger.

Written from Meter.finish, from the request row the ledger gets: request id, route,
deployment, attempts, status, tokens, cost, latency, Farebox's own overhead and the client
(the key's name, never its secret). Never a prompt or a completion: those go to
`farebox.payloads`, and only for routes that opt in (`log_payloads`).

Cost on the hot path is one orjson call and a deque append of its bytes; a thread joins and
writes the lines to stdout's binary buffer in batches every FLUSH_S (no decode and re-encode
per line), so the event loop never waits on a pipe or a disk. An
operator who configures handlers for `farebox.requests` (a logging config) gets the same
records through them instead. FAREBOX_REQUEST_LOG=false turns the log off.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from collections import deque
from collections.abc import Sequence
from typing import IO, Any

import orjson

from gateway.ledger_rows import AttemptRow, RequestRow

LOGGER_NAME = "farebox.requests"
log = logging.getLogger(LOGGER_NAME)

ENABLED = False
_INFO = logging.INFO
# How long a line may wait before it is written.
FLUSH_S = 0.05
_writer: _LineWriter | None = None


class _LineWriter(logging.Handler):
    """Collects finished lines; a daemon thread writes them out every FLUSH_S, many per write.

    Appending to a deque wakes nobody: a thread woken per line would cost a GIL hand-off per
    request, which under load was most of the log's price.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(_INFO)
        self._stream = stream
        # The text stream's binary buffer when it has one (stdout does; a StringIO not).
        self._binary: IO[bytes] | None = getattr(stream, "buffer", None)
        self._lines: deque[bytes] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="farebox-request-log", daemon=True)
        self._thread.start()

    def add(self, line: bytes) -> None:
        self._lines.append(line)

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock and no formatting: the message is the finished JSON line.
        self._lines.append(record.getMessage().encode())
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() covers it
        self._lines.append(record.getMessage().encode())

    def _drain(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self._write()
        self._write()

    def _write(self) -> None:
        lines = self._lines
        batch = [lines.popleft() for _ in range(len(lines))]
        if not batch:
            return
        data = b"\n".join(batch) + b"\n"
        try:
            if self._binary is not None:
                self._stream.flush()  # anything written to the text layer goes first
                self._binary.write(data)
                self._binary.flush()
            else:
                self._stream.write(data.decode())
                self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed at exit: nothing left to tell

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=5)
        super().close()


def configure(enabled: bool, stream: IO[str] | None = None) -> None:
    """Switch the log on or off. With no handler of the operator's on the logger, lines go
    to `stream` (stdout) through `_LineWriter`."""
    global ENABLED, _writer
    if not enabled:
        ENABLED = False
        return
    if _writer is not None and (stream is None or _writer._stream is stream):
        ENABLED = True
        return
    if _writer is not None:
        log.removeHandler(_writer)
        _writer.close()
        _writer = None
    if not log.handlers:
        _writer = _LineWriter(stream or sys.stdout)
        log.addHandler(_writer)
        log.propagate = False
        atexit.register(_writer.close)
    if log.level == logging.NOTSET or log.level > _INFO:
        log.setLevel(_INFO)
    ENABLED = True


def close() -> None:
    """Flush the queued lines (worker shutdown)."""
    global _writer
    if _writer is not None:
        log.removeHandler(_writer)
        _writer.close()
        _writer = None


def line(row: RequestRow, attempts: Sequence[AttemptRow], overhead_s: float) -> bytes:
    # One unpack of the row tuple (its fields in order, gateway/ledger_rows.py) instead of
    # twenty attribute lookups: this runs for every request.
    (
        request_id,
        received_at,
        key_id,
        route,
        _requested_model,
        endpoint,
        workload,
        stream,
        status,
        error_class,
        deployment,
        n_attempts,
        uncached,
        cached,
        written,
        output,
        reasoning,
        cost,
        latency_ms,
        ttft_ms,
        gate,
        _decision,
        team,
        *_,
    ) = row
    entry: dict[str, Any] = {
        "ts": received_at,
        "request_id": request_id,
        "route": route,
        "deployment": deployment,
        "attempts": n_attempts,
        "status": status,
        "error_class": error_class,
        "stream": stream,
        "endpoint": endpoint,
        "tokens": {
            "input_uncached": uncached,
            "cached_read": cached,
            "cache_write": written,
            "output": output,
            "reasoning": reasoning,
        },
        # A string keeps the ledger's exact decimal; null means unpriced, never $0.
        "cost_usd": None if cost is None else f"{cost:f}",
        "latency_ms": round(latency_ms, 3),
        "ttft_ms": None if ttft_ms is None else round(ttft_ms, 3),
        "overhead_ms": round(overhead_s * 1000, 3),
        "client_id": key_id,
    }
    if team is not None:
        entry["team"] = team
    if workload is not None:
        entry["workload"] = workload
    if gate is not None:
        entry["gate"] = gate
    if len(attempts) > 1:  # the path only when there was one: retries, fallbacks, hedges
        entry["tried"] = [f"{a.deployment}:{a.role}:{a.error_class or 'ok'}" for a in attempts]
    for attempt in attempts:  # a loop, not next(generator): this runs per request
        if attempt.drill_id:
            entry["drill_id"] = attempt.drill_id
            break
    return orjson.dumps(entry)


def write(row: RequestRow, attempts: Sequence[AttemptRow], overhead_s: float) -> None:
    writer = _writer
    handlers = log.handlers
    if (
        writer is not None
        and len(handlers) == 1
        and handlers[0] is writer
        and not log.filters
        and log.level == _INFO
    ):
        # Only our own writer would see the record: hand it the line, skip the LogRecord.
        writer.add(line(row, attempts, overhead_s))
        return
    if not log.isEnabledFor(_INFO):
        return
    # makeRecord + handle skips Logger._log's stack walk (findCaller): the caller is known.
    record = log.makeRecord(
        LOGGER_NAME, _INFO, __file__, 0, line(row, attempts, overhead_s).decode(), (), None
    )
    log.handle(record)
