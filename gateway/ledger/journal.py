"""The attempt journal: what makes the ledger survive a killed process.

Every upstream call is appended here twice: an *intent* line right before the call goes out
and, when the client call ends, an *outcome* line holding the request row and all its attempt
rows (the very rows the writer's queue gets). A plain `write()` reaches the kernel's page
cache, so a `kill -9` loses nothing already written; a background thread `fsync`s every few
milliseconds (`journal_fsync_ms`, 0 = never) against a lost machine.

Files, in the journal directory:

    owner-<ident>.lock              held with flock(LOCK_EX) for the life of the process
    journal-<ident>-<seq>.jsonl     segments, rotated by the ledger writer

A segment is deleted once every outcome in it is durable elsewhere (committed to the
database or in the fsync'd spool): the writer tells the journal how far that is
(`release(upto)`). Intents still open when a segment is rotated are copied into the next
one, so an old segment never holds the only copy of anything still needed.

At start-up `recover()` takes over the journals of dead processes (their lock can be taken):
outcomes become ledger rows again, and an intent with no outcome becomes an attempt with
error class `gateway_crashed` and estimated input tokens — the provider may have billed it —
plus a request row if its request never finished. Everything is handed over as spool batches;
ids are primary keys, so replaying a row that did reach the database is harmless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from gateway.ledger.events import ESTIMATED, AttemptRow, RequestRow
from gateway.ledger.spool import decode_row, encode_default

log = logging.getLogger("farebox.ledger")

CRASHED = "gateway_crashed"
# What a client of a crashed gateway saw: a dropped connection, reported as a server error.
CRASHED_STATUS = 500
# Four bytes of request body per input token: the estimate used when all that survived a
# crash is the body's size (DESIGN: failed attempts carry estimated input tokens).
BYTES_PER_TOKEN = 4

Batch = tuple[list[RequestRow], list[AttemptRow]]

# Outcome lines hold rows as arrays of field values (attrgetter + orjson: a third of the cost
# of serializing slotted dataclasses); each segment starts with a header naming the fields,
# so a journal written by another version still decodes by name.
_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRow))
_ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(AttemptRow))
_request_values = operator.attrgetter(*_REQUEST_FIELDS)
_attempt_values = operator.attrgetter(*_ATTEMPT_FIELDS)
# An intent line is ["i", attempt id, *these], in this order (Meter.intent builds it).
INTENT_FIELDS = (
    "request_id",
    "attempt_no",
    "role",
    "deployment",
    "provider",
    "provider_kind",
    "upstream_model",
    "started_at",  # epoch seconds
    "body_bytes",
    "received_at",
    "route",
    "requested_model",
    "endpoint",
    "stream",
    "key_id",
    "workload",
    "team",
    "segment",
    "drill_id",
)
_HEADER = (
    orjson.dumps({"h": {"r": _REQUEST_FIELDS, "a": _ATTEMPT_FIELDS, "i": INTENT_FIELDS}}) + b"\n"
)
# (deployment, upstream model, provider kind, when, input tokens) -> (cost, price version)
Pricer = Callable[[str, str, str, datetime, int], tuple[Decimal | None, str | None]]


@dataclass(slots=True)
class _Segment:
    path: Path
    last_seq: int  # outcomes appended up to the moment it was sealed


class Journal:
    """Append-only, crash-safe record of attempts for one process (see module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync_ms: float = 10.0,
        rotate_s: float = 2.0,
        rotate_bytes: int = 16 << 20,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ident = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._lock_fd = os.open(self.dir / f"owner-{self._ident}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._rotate_s = rotate_s
        self._rotate_bytes = rotate_bytes
        self._seq = 0
        self._fd = -1
        self._path: Path | None = None
        self._opened_at = 0.0
        self._bytes = 0
        self._sealed: list[_Segment] = []
        # Intents whose outcome has not been written yet: attempt id -> its journal line.
        self._open: dict[str, bytes] = {}
        self.outcomes = 0  # outcome lines appended so far (the writer's sequence numbers)
        self._dirty = False
        self._syncer: _Syncer | None = None
        self._recovered: list[tuple[Path, int]] = []
        self._new_segment()
        if fsync_ms > 0:
            self._syncer = _Syncer(self, fsync_ms / 1000)

    # -- hot path -----------------------------------------------------------------------

    def intent(self, attempt_id: str, record: tuple[Any, ...]) -> None:
        """`record`: ("i", attempt_id, *values in INTENT_FIELDS order)."""
        line = orjson.dumps(record) + b"\n"
        self._open[attempt_id] = line
        self._append(line)

    def outcome(self, request: RequestRow, attempts: list[AttemptRow]) -> int:
        """Journal a finished request; returns its sequence number (1, 2, …)."""
        line = orjson.dumps(
            (_request_values(request), [_attempt_values(a) for a in attempts]),
            default=encode_default,
        )
        self._append(line + b"\n")
        pending = self._open
        if pending:
            for attempt in attempts:
                pending.pop(attempt.id, None)
        self.outcomes += 1
        return self.outcomes

    def forget(self, attempt_ids: Iterator[str] | list[str]) -> None:
        """Close intents that will never get an outcome line (a bug upstream of here)."""
        for attempt_id in attempt_ids:
            self._open.pop(attempt_id, None)

    def _append(self, line: bytes) -> None:
        # One write() per line: the kernel has it once this returns, whatever happens to us.
        os.write(self._fd, line)
        self._bytes += len(line)
        self._dirty = True

    # -- housekeeping (the writer's task, never the hot path) ----------------------------

    def maintain(self, durable_upto: int) -> None:
        """Rotate the current segment when it is old or big, and delete sealed segments
        whose outcomes are all durable elsewhere (seq <= durable_upto)."""
        if self._bytes and (
            self._bytes >= self._rotate_bytes
            or time.monotonic() - self._opened_at >= self._rotate_s
        ):
            self._rotate()
        while self._sealed and self._sealed[0].last_seq <= durable_upto:
            segment = self._sealed.pop(0)
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()

    def open_intents(self) -> int:
        return len(self._open)

    def segments(self) -> int:
        return len(self._sealed) + 1

    def _new_segment(self) -> None:
        self._seq += 1
        self._path = self.dir / f"journal-{self._ident}-{self._seq:06d}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._opened_at = time.monotonic()
        self._bytes = 0
        self._append(_HEADER)
        self._bytes = 0
        if self._open:  # carried over, so the old segment is not their only copy
            self._append(b"".join(self._open.values()))

    def _rotate(self) -> None:
        assert self._path is not None
        old_fd, old_path = self._fd, self._path
        self._new_segment()
        self._sealed.append(_Segment(old_path, self.outcomes))
        if self._syncer is not None:
            self._syncer.retire(old_fd)
        else:
            os.close(old_fd)

    def close(self, durable_upto: int) -> None:
        """At shutdown: delete what is durable; keep the rest for the next start-up."""
        if self._syncer is not None:
            self._syncer.stop()
        if self._fd >= 0:
            if self._syncer is not None:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        assert self._path is not None
        self._sealed.append(_Segment(self._path, self.outcomes))
        complete = not self._open and durable_upto >= self.outcomes
        self.maintain(durable_upto)
        if complete:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"owner-{self._ident}.lock").unlink()
        else:
            log.warning(
                "ledger journal kept for the next start-up: %d open intents, %d of %d "
                "outcomes durable",
                len(self._open),
                durable_upto,
                self.outcomes,
            )
        os.close(self._lock_fd)

    # -- recovery -----------------------------------------------------------------------

    def recover(self, pricer: Pricer) -> list[Batch]:
        """Take over the journals of dead processes; returns their rows as batches.

        The caller must make the batches durable (spool them) before `finish_recovery()`
        deletes the journals they came from."""
        batches: list[Batch] = []
        for lock in sorted(self.dir.glob("owner-*.lock")):
            ident = lock.name[len("owner-") : -len(".lock")]
            if ident == self._ident:
                continue
            fd = _take_lock(lock)
            if fd is None:
                continue  # its process is alive
            segments = sorted(self.dir.glob(f"journal-{ident}-*.jsonl"))
            batches.extend(_rebuild(segments, pricer))
            self._recovered.append((lock, fd))
        return batches

    def finish_recovery(self) -> None:
        for lock, fd in self._recovered:
            ident = lock.name[len("owner-") : -len(".lock")]
            for segment in self.dir.glob(f"journal-{ident}-*.jsonl"):
                segment.unlink()
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            os.close(fd)
        self._recovered = []

    # -- fsync --------------------------------------------------------------------------

    def _sync_now(self) -> None:
        if self._dirty and self._fd >= 0:
            self._dirty = False
            with contextlib.suppress(OSError):  # closed under us by rotate/close: retired
                os.fsync(self._fd)


class _Syncer:
    """fsync off the event loop: the journal's current segment every `interval` seconds
    when something was written, and each rotated segment once before it is closed."""

    def __init__(self, journal: Journal, interval: float) -> None:
        self._journal = journal
        self._interval = interval
        self._retired: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-journal-fsync", daemon=True)
        self._thread.start()

    def retire(self, fd: int) -> None:
        self._retired.append(fd)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._drain()

    def _drain(self) -> None:
        while self._retired:
            fd = self._retired.pop(0)
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)
        self._journal._sync_now()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._drain()


def _take_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lines(segments: list[Path]) -> Iterator[bytes]:
    for segment in segments:
        with contextlib.suppress(FileNotFoundError), segment.open("rb") as fh:
            for line in fh:
                if line.endswith(b"\n"):  # a torn last line never finished its write
                    yield line


def open_calls(directory: str | os.PathLike[str]) -> set[str]:
    """Attempt ids journalled as started with no outcome yet, across every journal in
    `directory` (for operators and the crash tests; reads files, so never on the hot path)."""
    started: set[str] = set()
    finished: set[str] = set()
    for line in _lines(sorted(Path(directory).glob("journal-*.jsonl"))):
        if line.startswith(b'["i",'):
            started.add(orjson.loads(line)[1])
        elif line.startswith(b"[["):
            finished.update(a[_ATTEMPT_FIELDS.index("id")] for a in orjson.loads(line)[1])
    return started - finished


def _decode_outcome(line: bytes, header: dict[str, list[str]]) -> Batch:
    request, attempts = orjson.loads(line)
    return (
        [decode_row(RequestRow, dict(zip(header["r"], request, strict=True)))],
        [decode_row(AttemptRow, dict(zip(header["a"], a, strict=True))) for a in attempts],
    )


def _rebuild(segments: list[Path], pricer: Pricer) -> list[Batch]:
    batches: list[Batch] = []
    intents: dict[str, dict[str, Any]] = {}
    finished: set[str] = set()
    recorded_requests: set[str] = set()
    header: dict[str, list[str]] = {
        "r": list(_REQUEST_FIELDS),
        "a": list(_ATTEMPT_FIELDS),
        "i": list(INTENT_FIELDS),
    }
    for line in _lines(segments):
        try:
            if line.startswith(b'["i",'):
                values = orjson.loads(line)
                intents[values[1]] = {
                    "i": values[1],
                    **dict(zip(header["i"], values[2:], strict=True)),
                }
                continue
            if line.startswith(b'{"h":'):
                header = orjson.loads(line)["h"]
                continue
            batch = _decode_outcome(line, header)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error("skipping an unreadable ledger journal line: %s", exc)
            continue
        batches.append(batch)
        recorded_requests.update(r.id for r in batch[0])
        finished.update(a.id for a in batch[1])
    crashed: dict[str, list[AttemptRow]] = {}
    for attempt_id, intent in intents.items():
        if attempt_id not in finished:
            crashed.setdefault(intent["request_id"], []).append(_crashed(intent, pricer))
    for request_id, attempts in crashed.items():
        requests = []
        if request_id not in recorded_requests:
            requests.append(_crashed_request(intents, attempts))
        batches.append((requests, attempts))
    if crashed:
        log.warning(
            "ledger journal: %d upstream calls of a crashed process had no outcome; "
            "recorded as %s with estimated tokens",
            sum(len(a) for a in crashed.values()),
            CRASHED,
        )
    return batches


def _crashed(intent: dict[str, Any], pricer: Pricer) -> AttemptRow:
    started_at = datetime.fromtimestamp(float(intent["started_at"]), UTC)
    tokens = max(1, -(-int(intent.get("body_bytes") or 0) // BYTES_PER_TOKEN))
    cost, version = pricer(
        intent["deployment"], intent["upstream_model"], intent["provider_kind"], started_at, tokens
    )
    return AttemptRow(
        id=intent["i"],
        request_id=intent["request_id"],
        attempt_no=int(intent["attempt_no"]),
        role=intent["role"],
        deployment=intent["deployment"],
        provider=intent["provider"],
        provider_kind=intent["provider_kind"],
        upstream_model=intent["upstream_model"],
        provider_request_id=None,
        started_at=started_at,
        ttft_ms=None,
        latency_ms=0.0,
        http_status=None,
        error_class=CRASHED,
        input_uncached_tokens=tokens,
        cached_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        token_source=ESTIMATED,
        cost_usd=cost,
        price_version=version,
        drill_id=intent.get("drill_id"),
    )


def _crashed_request(intents: dict[str, dict[str, Any]], attempts: list[AttemptRow]) -> RequestRow:
    first = intents[attempts[0].id]
    costs = [a.cost_usd for a in attempts]
    total = None
    if all(c is not None for c in costs):
        total = sum((c for c in costs if c is not None), Decimal(0))
    return RequestRow(
        id=first["request_id"],
        received_at=datetime.fromisoformat(first["received_at"]),
        key_id=first.get("key_id"),
        route=first.get("route") or first.get("requested_model") or "",
        requested_model=first.get("requested_model") or "",
        endpoint=first.get("endpoint") or "",
        workload=first.get("workload"),
        stream=bool(first.get("stream")),
        final_status=CRASHED_STATUS,
        error_class=CRASHED,
        final_deployment=None,
        attempts=len(attempts),
        input_uncached_tokens=sum(a.input_uncached_tokens for a in attempts),
        cached_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        cost_usd=total,
        latency_ms=0.0,
        ttft_ms=None,
        team=first.get("team"),
        segment=first.get("segment"),
    )
