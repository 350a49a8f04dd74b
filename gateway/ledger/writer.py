"""The ledger writer: off the hot path, batched, and never losing a row.

`record()` is synchronous and cheap (a deque append). A background task drains the queue
in batches (by size or age) to the database. When a write fails, the batch goes to the
disk spool and the task probes the database until it is back, then replays the spool.
If the in-memory queue is full the row is spooled at once: nothing is dropped silently.

With a journal (gateway/ledger/journal.py) every recorded request is also appended to it
before it is queued, so a killed process loses nothing that was only in memory; the writer
tells the journal how far rows are durable (committed or spooled) so it can drop old segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from gateway.ledger.journal import Journal
from gateway.ledger.spool import Spool
from gateway.ledger_rows import AttemptRow, RequestRow
from gateway.observability import metrics

log = logging.getLogger("farebox.ledger")


class LedgerSink(Protocol):
    async def write_batch(self, requests: list[RequestRow], attempts: list[AttemptRow]) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class LedgerWriter:
    def __init__(
        self,
        sink: LedgerSink,
        spool: Spool,
        *,
        batch_rows: int = 500,
        max_batch_rows: int | None = None,
        max_delay_s: float = 0.2,
        max_queue_rows: int = 100_000,
        probe_interval_s: float = 1.0,
        journal: Journal | None = None,
        close_timeout_s: float = 10.0,
        owns_sink: bool = False,
    ) -> None:
        self._sink = sink
        # A sink only the writer uses (gateway/ledger/pg_sink.py) is closed with it; a shared
        # one (the SQLite repository) is closed by its owner.
        self._owns_sink = owns_sink
        self._spool = spool
        self._batch_rows = batch_rows
        # A backlog is written in bigger batches (up to 8x by default): each batch has a fixed
        # cost, and with rollups on most of a batch's work is per rollup row touched, which
        # grows far slower than the batch (bench/ledger_scale_writer.py: 500-request batches
        # ~12k attempts/s, 5,000-request ones ~22k on this machine). Without a backlog a
        # batch is what arrived within max_delay, as before.
        self._max_batch_rows = max(batch_rows, max_batch_rows or 8 * batch_rows)
        self._max_delay = max_delay_s
        self._max_queue_rows = max_queue_rows
        self._probe_interval = probe_interval_s
        self.journal = journal
        self._close_timeout = close_timeout_s
        # (journal sequence number or 0, request, its attempts), oldest first.
        self._queue: deque[tuple[int, RequestRow, list[AttemptRow]]] = deque()
        # The smallest sequence number of the batch being written right now (0: none).
        self._inflight_seq = 0
        self._inflight: tuple[list[RequestRow], list[AttemptRow]] | None = None
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.db_down = False
        self._needs_replay = bool(spool.pending() or spool.orphaned_claims())
        self._next_probe = 0.0
        self.rows_written = 0
        self.rows_spooled = 0

    # -- hot path ---------------------------------------------------------------------

    def record(self, request: RequestRow, attempts: list[AttemptRow]) -> None:
        seq = self.journal.outcome(request, attempts) if self.journal is not None else 0
        rows = 1 + len(attempts)
        if self._queued_rows + rows > self._max_queue_rows or self._task is None:
            # Overload (or no writer running): durability beats latency here.
            self._spill([request], attempts, "queue_full" if self._task else "not_running")
            return
        self._queue.append((seq, request, attempts))
        self._queued_rows += rows
        if self._queued_rows >= self._batch_rows:
            self._wake.set()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def close(self, timeout_s: float | None = None) -> None:
        """Flush everything queued (to the database, else to the spool), then stop.

        A database that hangs past `timeout_s` (or a close that is itself cancelled) gets
        the batch it was writing and everything still queued spooled to disk, so nothing is
        lost; rows that did commit are replayed harmlessly (ids are primary keys)."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        try:
            if task is not None:
                try:
                    await asyncio.wait_for(
                        asyncio.shield(task),
                        self._close_timeout if timeout_s is None else timeout_s,
                    )
                except TimeoutError:
                    log.error("ledger flush timed out; spooling what is left")
        finally:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(task), 1.0)
            if self._inflight is not None:
                requests, attempts = self._inflight
                self._inflight, self._inflight_seq = None, 0
                self._spill(requests, attempts, "shutdown")
            if self._queue:
                self._spill_queue("shutdown")
            self._spool.seal()
            if self.journal is not None:
                self.journal.close(self.durable_upto())
            if self._owns_sink:
                with contextlib.suppress(Exception):  # everything is durable by now
                    await asyncio.wait_for(self._sink.close(), 5.0)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def durable_upto(self) -> int:
        """Every journalled request with a sequence number up to this one is in the
        database or the spool (the queue is FIFO and at most one batch is in flight)."""
        if self.journal is None:
            return 0
        if self._inflight_seq:
            return self._inflight_seq - 1
        for seq, _, _ in self._queue:
            if seq:
                return seq - 1
        return self.journal.outcomes

    # -- background task --------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            timed_out = False
            if not self._closing and self._queued_rows < self._batch_rows:
                # Fill a batch, but hold no row longer than max_delay: every batch has a
                # fixed cost (checkout, transaction, COPY setup), so under load writing
                # whatever trickled in while the last batch was busy would be wasteful.
                try:
                    await asyncio.wait_for(self._wake.wait(), self._max_delay)
                except TimeoutError:
                    timed_out = True
            self._wake.clear()
            while self._queued_rows >= self._batch_rows:
                await self._write(self._take())
            if self._queue and (timed_out or self._closing):
                await self._write(self._take())
            metrics.LEDGER_QUEUE_DEPTH.set(self._queued_rows)
            if self.journal is not None:
                self.journal.maintain(self.durable_upto())
            if self._needs_replay and not self._closing:
                await self._maybe_replay()
            if self._closing and not self._queue:
                if self._needs_replay:
                    # Last chance before exit: probe now rather than at the next interval,
                    # so a database that came back is not left with a spool to replay.
                    self._next_probe = 0.0
                    await self._maybe_replay()
                return

    def _take(self) -> tuple[list[RequestRow], list[AttemptRow]]:
        requests: list[RequestRow] = []
        attempts: list[AttemptRow] = []
        rows = 0
        if self._queue:
            self._inflight_seq = self._queue[0][0]
        while self._queue and rows < self._max_batch_rows:
            _, request, its_attempts = self._queue.popleft()
            requests.append(request)
            attempts.extend(its_attempts)
            rows += 1 + len(its_attempts)
        self._queued_rows -= rows
        self._inflight = (requests, attempts)
        return requests, attempts

    async def _write(self, batch: tuple[list[RequestRow], list[AttemptRow]]) -> None:
        requests, attempts = batch
        if self.db_down:
            self._spill(requests, attempts, "database_down")
            self._inflight, self._inflight_seq = None, 0
            return
        try:
            await self._sink.write_batch(requests, attempts)
        except Exception as exc:  # background writer: any driver or network error spools
            metrics.LEDGER_WRITE_ERRORS.inc()
            log.warning("ledger write failed, spooling to disk: %s", _brief(exc))
            self.db_down = True
            self._next_probe = time.monotonic() + self._probe_interval
            self._spill(requests, attempts, "database_error")
            self._inflight, self._inflight_seq = None, 0
            return
        self._inflight, self._inflight_seq = None, 0
        self._count_written(requests, attempts)

    def _count_written(self, requests: list[RequestRow], attempts: list[AttemptRow]) -> None:
        self.rows_written += len(requests) + len(attempts)
        metrics.LEDGER_ROWS_WRITTEN.labels("requests").inc(len(requests))
        metrics.LEDGER_ROWS_WRITTEN.labels("attempts").inc(len(attempts))

    def _spill(self, requests: list[RequestRow], attempts: list[AttemptRow], reason: str) -> None:
        self._spool.append(requests, attempts)
        rows = len(requests) + len(attempts)
        self.rows_spooled += rows
        self._needs_replay = True
        metrics.LEDGER_ROWS_SPOOLED.labels(reason).inc(rows)

    def _spill_queue(self, reason: str) -> None:
        while self._queue:
            requests, attempts = self._take()
            self._spill(requests, attempts, reason)
            self._inflight, self._inflight_seq = None, 0

    async def _maybe_replay(self) -> None:
        if self.db_down:
            if time.monotonic() < self._next_probe:
                return
            try:
                await self._sink.ping()
            except Exception:  # probe of a background loop: still down
                self._next_probe = time.monotonic() + self._probe_interval
                return
            log.info("database is back; replaying the ledger spool")
            self.db_down = False
        self._spool.seal()
        segments = self._spool.orphaned_claims() + [
            c for s in self._spool.pending() if (c := self._spool.claim(s)) is not None
        ]
        for segment in segments:
            _report_lag(segment)
            if not await self._replay(segment):
                return
        self._needs_replay = bool(self._spool.pending())
        metrics.LEDGER_REPLAY_LAG.set(0)
        metrics.LEDGER_SPOOL_BYTES.set(self._spool.bytes_pending())

    async def _replay(self, segment: Path) -> bool:
        try:
            for requests, attempts in Spool.read(segment):
                await self._sink.write_batch(requests, attempts)
                self._count_written(requests, attempts)
                await asyncio.sleep(0)  # let the hot path breathe between batches
        except Exception as exc:  # background replay: any error means retry later
            metrics.LEDGER_WRITE_ERRORS.inc()
            log.warning("spool replay of %s failed, will retry: %s", segment.name, _brief(exc))
            self.db_down = True
            self._next_probe = time.monotonic() + self._probe_interval
            return False
        segment.unlink()  # noqa: ASYNC240 - a local unlink, not worth a thread hop
        return True


def _report_lag(segment: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        metrics.LEDGER_REPLAY_LAG.set(max(0.0, time.time() - segment.stat().st_mtime))


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"
