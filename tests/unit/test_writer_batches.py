"""The ledger writer's batch sizes: what arrived within max_delay when there is no backlog,
bigger batches (up to max_batch_rows) from a backlog, and never a request split from its
attempts (the rollups count a request with all of its attempts, gateway/ledger/rollups.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.ledger.spool import Spool
from gateway.ledger.writer import LedgerWriter
from gateway.ledger_rows import AttemptRow, RequestRow
from tests.ledger_rows import attempt_row, request_row


class GatedSink:
    """Holds every write until released, recording each batch's (requests, attempts)."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[RequestRow], list[AttemptRow]]] = []
        self.release = asyncio.Event()
        self.writing = asyncio.Event()
        self.written = asyncio.Event()  # set after each batch

    async def write_batch(self, requests: list[RequestRow], attempts: list[AttemptRow]) -> None:
        self.writing.set()
        await self.release.wait()
        self.batches.append((list(requests), list(attempts)))
        self.written.set()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _record(writer: LedgerWriter, first: int, count: int) -> None:
    for n in range(first, first + count):
        request = request_row(f"r{n}")
        writer.record(request, [attempt_row(f"a{n}", f"r{n}")])  # 2 rows per request


def test_a_backlog_goes_in_bigger_batches_of_whole_requests(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[int, int]]:
        sink = GatedSink()
        writer = LedgerWriter(
            sink, Spool(tmp_path), batch_rows=10, max_batch_rows=40, max_delay_s=0.01
        )
        writer.start()
        _record(writer, 0, 5)  # 10 rows: one batch, which the sink holds
        await asyncio.wait_for(sink.writing.wait(), 5)
        _record(writer, 5, 100)  # 200 rows queue up behind it
        sink.release.set()
        await writer.close()
        return [(len(r), len(a)) for r, a in sink.batches]

    sizes = asyncio.run(scenario())
    assert sizes[0] == (5, 5)
    assert sum(r for r, _ in sizes) == 105
    assert all(r == a for r, a in sizes)  # every request with its attempt
    # The backlog in batches of the cap (40 rows = 20 requests), not of batch_rows.
    assert sizes[1:] == [(20, 20)] * 5


def test_without_a_backlog_a_batch_is_what_arrived(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[int, int]]:
        sink = GatedSink()
        sink.release.set()
        writer = LedgerWriter(
            sink, Spool(tmp_path), batch_rows=10, max_batch_rows=40, max_delay_s=0.01
        )
        writer.start()
        for first in range(0, 9, 3):
            sink.written.clear()
            _record(writer, first, 3)  # 6 rows: under a batch, written after max_delay
            await asyncio.wait_for(sink.written.wait(), 5)
        await writer.close()
        return [(len(r), len(a)) for r, a in sink.batches]

    assert asyncio.run(scenario()) == [(3, 3)] * 3
