"""The Postgres rollups' compactor (gateway/ledger/rollup_compactor.py) against a real
PostgreSQL: the writer leaves exactly what it inserted pending, and every pending row is
added to the rollups exactly once — under replayed batches, two compactors at once, a
rebuild racing a live writer, a compaction killed before its commit, and through the
gateway's own background task. "Exact" is always the same check: the rollups equal a
rebuild of all time from the raw rows, to the nano-dollar (test_ledger_rollups.snapshot)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import text

from gateway.config.loading import parse_config
from gateway.ledger.models_batches import batches_table
from gateway.ledger.pg import asyncpg_dsn
from gateway.ledger.pg_sink import PgLedgerSink
from gateway.ledger.repository import LedgerRepository
from gateway.ledger.rollup_compactor import (
    LOCK_KEY,
    RollupCompactor,
    compact_once,
    compact_statement,
    flush,
)
from gateway.ledger.rollups import rebuild, rebuild_live
from gateway.settings import Settings
from gateway.state import build_state
from tests.integration.test_ledger_partitions import STATE_CONFIG
from tests.integration.test_ledger_repository import with_repo
from tests.integration.test_ledger_rollups import (
    DAY,
    MONTH,
    batch_rows,
    batches,
    generate,
    snapshot,
    sums_match,
)
from tests.waiting import until

QUANTUM = Decimal("1e-10")
PENDING_ROWS = (
    "SELECT (SELECT count(*) FROM rollup_pending_requests), "
    "(SELECT count(*) FROM rollup_pending_attempts)"
)


async def _pending(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return tuple(await conn.fetchrow(PENDING_ROWS))  # type: ignore[return-value]
    finally:
        await conn.close()


async def _batches_table(repo: LedgerRepository) -> None:
    async with repo.engine.begin() as conn:
        await conn.execute(batches_table.insert(), batch_rows())


async def _exact(repo: LedgerRepository, url: str) -> None:
    """The rollups (flushed) equal an all-time rebuild from the raw rows, and their sums the
    raw sums; nothing is left pending."""
    got = await snapshot(repo)
    await sums_match(repo)
    async with repo.engine.begin() as conn:
        await rebuild(conn)
    assert await snapshot(repo) == got, "the rollups differ from a rebuild from raw rows"
    assert await _pending(url) == (0, 0)


def _spread(ledger: list[Any], n: int) -> list[tuple[list[Any], list[Any]]]:
    """`n` batches of whole requests, each spread over the month."""
    parts = [ledger[j::n] for j in range(n)]
    return [([r for r, _ in p], [a for _, atts in p for a in atts]) for p in parts]


def _with(url: str, fn: Callable[[LedgerRepository], Awaitable[None]]) -> None:
    with_repo(url, fn)


def test_the_writer_leaves_what_it_inserted_pending_once(pg_url: str) -> None:
    """A batch written three times (and once more in part) leaves one pending row per row
    it inserted; compacted, each is added once."""
    ledger = generate(400, QUANTUM, seed=3)
    todo = batches(ledger)
    n_requests, n_attempts = len(ledger), sum(len(a) for _, a in ledger)

    async def main(repo: LedgerRepository) -> None:
        await _batches_table(repo)
        sink = PgLedgerSink(pg_url)
        try:
            for _ in range(3):
                for reqs, atts in todo:
                    await sink.write_batch(reqs, atts)
            reqs, atts = todo[0]
            await sink.write_batch(reqs[:5], atts[:7])  # a partial replay
        finally:
            await sink.close()
        assert await _pending(pg_url) == (n_requests, n_attempts)
        await _exact(repo, pg_url)

    _with(pg_url, main)


def test_two_compactors_add_each_pending_row_once(pg_url: str) -> None:
    """Two sessions compact the same backlog at once in small chunks, one waiting for the
    lock, one trying it (and skipping while the other holds it): the rollups are exact."""
    ledger = generate(1200, QUANTUM, seed=11)
    todo = [
        ([r for r, _ in ledger[j::30]], [a for _, x in ledger[j::30] for a in x]) for j in range(30)
    ]

    async def main(repo: LedgerRepository) -> None:
        await _batches_table(repo)
        sink = PgLedgerSink(pg_url)
        try:
            for reqs, atts in todo:
                await sink.write_batch(reqs, atts)
        finally:
            await sink.close()
        one = await asyncpg.connect(asyncpg_dsn(pg_url))
        two = await asyncpg.connect(asyncpg_dsn(pg_url))
        skipped = 0

        async def trying() -> None:
            nonlocal skipped
            while True:
                added, complete = await compact_once(two, wait=False, chunk_rows=150)
                if complete:
                    return
                if added == 0:
                    skipped += 1
                    await asyncio.sleep(0)

        try:
            await asyncio.gather(flush(one, chunk_rows=150), trying())
        finally:
            await one.close()
            await two.close()
        await _exact(repo, pg_url)

    _with(pg_url, main)


def test_a_rebuild_racing_a_live_writer_stays_exact(pg_url: str) -> None:
    """`rebuild_live` of a day and of the month, again and again, while a writer commits
    batches spread over the month and the background compactor runs: at the
    end the rollups are exactly a rebuild from the raw rows."""
    ledger = generate(2400, QUANTUM, seed=17)
    todo = [
        ([r for r, _ in ledger[j::60]], [a for _, x in ledger[j::60] for a in x]) for j in range(60)
    ]

    async def main(repo: LedgerRepository) -> None:
        await _batches_table(repo)
        compactor = RollupCompactor(pg_url, interval_s=0.01, chunk_rows=300)
        sink = PgLedgerSink(pg_url)
        writing = True

        async def writer() -> None:
            nonlocal writing
            try:
                for reqs, atts in todo:
                    await sink.write_batch(reqs, atts)
                    await asyncio.sleep(0)
            finally:
                writing = False

        async def rebuilder() -> int:
            n = 0
            while writing or n < 2:
                await rebuild_live(repo.engine, *(DAY if n % 2 else MONTH))
                n += 1
            return n

        compactor.start()
        try:
            _, rebuilds = await asyncio.gather(writer(), rebuilder())
        finally:
            await compactor.close()
            await sink.close()
        assert rebuilds >= 2
        await _exact(repo, pg_url)

    _with(pg_url, main)


def test_a_compaction_killed_before_its_commit_loses_nothing(pg_url: str) -> None:
    """Rows the writer committed stay pending with no compactor running; a compaction whose
    session dies after its statement but before its commit changes nothing (its lock goes
    with it), and the next one adds every row."""
    ledger = generate(300, QUANTUM, seed=23)
    todo = batches(ledger)

    async def main(repo: LedgerRepository) -> None:
        await _batches_table(repo)
        sink = PgLedgerSink(pg_url)
        try:
            for reqs, atts in todo:
                await sink.write_batch(reqs, atts)
        finally:
            await sink.close()
        before = await _pending(pg_url)
        assert before == (len(ledger), sum(len(a) for _, a in ledger))
        doomed = await asyncpg.connect(asyncpg_dsn(pg_url))
        tx = doomed.transaction()
        await tx.start()
        await doomed.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await doomed.fetchrow(compact_statement())  # done, not committed
        doomed.terminate()  # the process dies: the server rolls the transaction back
        assert await _pending(pg_url) == before
        async with repo.engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM rollup_requests"))).scalar() == 0
        await _exact(repo, pg_url)  # the flush waits for the lock: it is free again

    _with(pg_url, main)


def test_the_gateway_compacts_in_the_background(pg_url: str, tmp_path: Path) -> None:
    """The process that owns the ledger writer runs the compactor from start-up: rows
    recorded through the gateway's LedgerWriter reach the rollups with no report or flush
    asking, and a config reload carries the compactor over."""
    ledger = generate(200, QUANTUM, seed=29)
    settings = Settings(
        database_url=pg_url,
        spool_dir=str(tmp_path / "spool"),
        master_key=None,
        ledger_rollup_interval_s=0.05,
        ledger_max_delay_ms=10,
    )

    async def rolled_requests(conn: Any) -> int:
        return int(await conn.fetchval("SELECT COALESCE(sum(requests), 0) FROM rollup_requests"))

    async def scenario() -> None:
        state = build_state(settings, parse_config(STATE_CONFIG, "v1.yaml", {}))
        reloaded = None
        conn = await asyncpg.connect(asyncpg_dsn(pg_url))
        try:
            assert state.rollups is not None and state.writer is not None
            for request, attempts in ledger:
                state.writer.record(request, attempts)

            async def caught_up() -> bool:
                return await rolled_requests(conn) == len(ledger) and await conn.fetchrow(
                    PENDING_ROWS
                ) == (0, 0)

            await until(caught_up, "the background compactor to add every recorded row")
            assert state.rollups.rows == len(ledger) + sum(len(a) for _, a in ledger)
            reloaded = build_state(
                settings, parse_config(STATE_CONFIG, "v2.yaml", {}), previous=state
            )
            assert reloaded.rollups is state.rollups
        finally:
            await conn.close()
            await state.close(keep=[reloaded] if reloaded is not None else [])
            if reloaded is not None:
                await reloaded.close()

    async def batches_first(repo: LedgerRepository) -> None:
        await _batches_table(repo)

    _with(pg_url, batches_first)
    asyncio.run(scenario())

    async def exact(repo: LedgerRepository) -> None:
        await _exact(repo, pg_url)

    _with(pg_url, exact)
