"""The attempt journal: what makes the ledger survive a killed process.

Every upstream call is appended here twice: an *intent* line right before the call goes out
and, when the client call ends, an *outcome* line holding the request row and all its attempt
rows (the very rows the writer's queue gets). Written lines are in the kernel's page cache,
so a `kill -9` loses nothing already written; a background thread `fsync`s it at a set
interval (`journal_fsync_ms`, default 1 s, 0 = never) against a lost machine.

The lines are copied into a shared memory map of the segment file rather than written with
`write()`: the page cache holds them all the same (a killed process's mapped pages stay
dirty in the kernel and reach the file), but the hot path makes no system call and pays no
filesystem bookkeeping per line (on this machine's disk, `write()` per line cost ~15 µs of
gateway CPU per request end to end; the map, a few: bench/JOURNAL.md). Segment files are
sized up front (sparse); the unused tail reads as NUL bytes, which readers skip.

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
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.ledger.journal_files import Spares, _MappedFile
from gateway.ledger.journal_replay import (
    ATTEMPT_FIELDS,
    REQUEST_FIELDS,
    Batch,
    Pricer,
    rebuild,
    take_lock,
)

# Re-exported: callers have always imported these from here.
from gateway.ledger.journal_replay import BYTES_PER_TOKEN as BYTES_PER_TOKEN
from gateway.ledger.journal_replay import CRASHED as CRASHED
from gateway.ledger.journal_replay import CRASHED_STATUS as CRASHED_STATUS
from gateway.ledger.journal_replay import INTENT_FIELDS as INTENT_FIELDS
from gateway.ledger.journal_replay import open_calls as open_calls
from gateway.ledger.spool import encode_default
from gateway.ledger_rows import AttemptRow, RequestRow

log = logging.getLogger("farebox.ledger")

_HEADER = (
    orjson.dumps({"h": {"r": REQUEST_FIELDS, "a": ATTEMPT_FIELDS, "i": INTENT_FIELDS}}) + b"\n"
)


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
        fsync_ms: float = 1000.0,
        rotate_s: float = 2.0,
        segment_bytes: int = 8 << 20,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ident = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._lock_fd = os.open(self.dir / f"owner-{self._ident}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._rotate_s = rotate_s
        self._segment_bytes = segment_bytes
        self._seq = 0
        self._file: _MappedFile | None = None
        self._pos = 0  # where the next line goes in the current segment
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
        # Later segments come ready-made from a thread (gateway/ledger/journal_files.py).
        self._spares: Spares | None = Spares(self.dir, self._ident, segment_bytes)
        if fsync_ms > 0:
            self._syncer = _Syncer(self, fsync_ms / 1000)

    @property
    def spare_ready(self) -> bool:
        """Whether the next segment is ready-made (gateway/ledger/journal_files.py)."""
        return self._spares is not None and self._spares.ready

    # -- hot path -----------------------------------------------------------------------

    def intent(self, attempt_id: str, record: tuple[Any, ...]) -> None:
        """`record`: ("i", attempt_id, *values in INTENT_FIELDS order)."""
        line = orjson.dumps(record) + b"\n"
        self._open[attempt_id] = line
        self._append(line)

    def outcome(self, request: RequestRow, attempts: list[AttemptRow]) -> int:
        """Journal a finished request; returns its sequence number (1, 2, …)."""
        # The rows are tuples in field order already; `tuple()` makes them plain tuples,
        # which orjson writes as arrays natively (it does not take tuple subclasses).
        line = orjson.dumps(
            (tuple(request), list(map(tuple, attempts))),
            default=encode_default,
        )
        self._append(line + b"\n")
        pending = self._open
        if pending:
            for attempt in attempts:
                pending.pop(attempt.id, None)
        self.outcomes += 1
        return self.outcomes

    def forget(self, attempt_ids: Iterable[str]) -> None:
        """Close intents that will never get an outcome line (a bug upstream of here)."""
        for attempt_id in attempt_ids:
            self._open.pop(attempt_id, None)

    def _append(self, line: bytes) -> None:
        # A copy into the shared map: the kernel has it once this returns, whatever
        # happens to the process next.
        end = self._pos + len(line)
        file = self._file
        assert file is not None
        if end > file.size:  # full: start the next segment now (rare: sized for seconds)
            self._rotate(len(line))
            self._append(line)
            return
        file.map[self._pos : end] = line
        self._pos = end
        self._bytes += len(line)
        self._dirty = True

    # -- housekeeping (the writer's task, never the hot path) ----------------------------

    def maintain(self, durable_upto: int) -> None:
        """Rotate the current segment when it is old or big, and delete sealed segments
        whose outcomes are all durable elsewhere (seq <= durable_upto)."""
        if self._bytes and time.monotonic() - self._opened_at >= self._rotate_s:
            self._rotate()
        self._drop_durable(durable_upto)

    def _drop_durable(self, durable_upto: int) -> None:
        while self._sealed and self._sealed[0].last_seq <= durable_upto:
            segment = self._sealed.pop(0)
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()

    def _new_segment(self, at_least: int = 0) -> None:
        self._seq += 1
        self._path = self.dir / f"journal-{self._ident}-{self._seq:06d}.jsonl"
        carried = b"".join(self._open.values())  # so the old segment is not their only copy
        needed = 2 * (len(_HEADER) + len(carried) + at_least)
        spares = getattr(self, "_spares", None)  # None while __init__ makes the first
        file = spares.take(self._path, needed, self._bytes) if spares is not None else None
        if file is None:
            file = _MappedFile(self._path, max(self._segment_bytes, needed))
        self._file = file
        self._pos = 0
        self._opened_at = time.monotonic()
        self._append(_HEADER + carried)
        self._bytes = 0

    def _rotate(self, at_least: int = 0) -> None:
        assert self._path is not None and self._file is not None
        old_file, old_path = self._file, self._path
        self._new_segment(at_least)
        self._sealed.append(_Segment(old_path, self.outcomes))
        if self._syncer is not None:
            self._syncer.retire(old_file)
        else:
            old_file.close()

    def close(self, durable_upto: int) -> None:
        """At shutdown: delete what is durable; keep the rest for the next start-up."""
        if self._syncer is not None:
            self._syncer.stop()
        if self._spares is not None:
            self._spares.close()
            self._spares = None
        if self._file is not None:
            if self._syncer is not None:
                self._file.sync()
            self._file.close()
            self._file = None
        assert self._path is not None
        complete = not self._open and durable_upto >= self.outcomes
        # The last segment holds the open intents (carried into it): never drop it then.
        self._sealed.append(_Segment(self._path, self.outcomes if not self._open else 1 << 62))
        self._drop_durable(durable_upto)
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
            fd = take_lock(lock)
            if fd is None:
                continue  # its process is alive
            segments = sorted(self.dir.glob(f"journal-{ident}-*.jsonl"))
            batches.extend(rebuild(segments, pricer))
            self._recovered.append((lock, fd))
        return batches

    def finish_recovery(self) -> None:
        for lock, fd in self._recovered:
            ident = lock.name[len("owner-") : -len(".lock")]
            for segment in self.dir.glob(f"journal-{ident}-*.jsonl"):
                segment.unlink()
            for spare in self.dir.glob(f"spare-{ident}-*.tmp"):  # never written to
                spare.unlink()
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            os.close(fd)
        self._recovered = []

    # -- fsync --------------------------------------------------------------------------

    def _sync_now(self) -> None:
        file = self._file
        if self._dirty and file is not None:
            self._dirty = False
            with contextlib.suppress(OSError, ValueError):  # closed under us at close()
                file.sync()


class _Syncer:
    """fsync off the event loop: the journal's current segment every `interval` seconds
    when something was written, and each rotated segment once before it is closed."""

    def __init__(self, journal: Journal, interval: float) -> None:
        self._journal = journal
        self._interval = interval
        self._retired: list[_MappedFile] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-journal-fsync", daemon=True)
        self._thread.start()

    def retire(self, file: _MappedFile) -> None:
        self._retired.append(file)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._drain()

    def _drain(self) -> None:
        while self._retired:
            file = self._retired.pop(0)
            with contextlib.suppress(OSError):
                file.sync()
            file.close()
        self._journal._sync_now()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._drain()
