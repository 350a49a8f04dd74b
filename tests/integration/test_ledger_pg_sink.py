"""The ledger writer's Postgres sink (gateway/ledger/pg_sink.py) against a real PostgreSQL:
every column as the SQLAlchemy repository writes it, replays skipped by id, and an outage
that fails the batch (so the writer spools it) and heals on the next ping."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from gateway.ledger.pg import asyncpg_dsn
from gateway.ledger.pg_sink import PgLedgerSink, writer_sink
from gateway.ledger.repository import LedgerRepository
from gateway.ledger_rows import ATTEMPT_FIELDS, ESTIMATED, REQUEST_FIELDS
from tests.ledger_rows import attempt_row, request_row
from tests.services import PostgresServer

LOCAL = timezone(timedelta(hours=2))


def rows(n: int) -> tuple[list[Any], list[Any]]:
    requests = [
        request_row(
            f"r{i}",
            received_at=datetime(2025, 1, 15, 14, 30, 1, 123456, tzinfo=LOCAL),
            cost_usd=Decimal("0.0000012345"),
            team="t",
            workflow_id="wf",
            batch_id="batch_1",
        )
        for i in range(n)
    ]
    attempts = [
        attempt_row(
            f"a{i}",
            f"r{i}",
            cost_usd=Decimal("0.0000012345"),
            saved_usd=Decimal("0.5"),
            units=Decimal("2.5"),
            unit="image",
            ttft_ms=12.5,
            http_status=None,
            error_class="timeout",
            token_source=ESTIMATED,
            drill_id="drill-1",
            gate_outcome="pass",
        )
        for i in range(n)
    ]
    return requests, attempts


async def _fetch(url: str, table: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        found = await conn.fetch(f"SELECT {', '.join(columns)} FROM {table} ORDER BY id")
    finally:
        await conn.close()
    return [tuple(row) for row in found]


def test_every_column_lands_as_written_and_replays_are_skipped(pg_url: str) -> None:
    requests, attempts = rows(3)

    async def main() -> tuple[list[Any], list[Any]]:
        sink = PgLedgerSink(pg_url)
        try:
            await sink.write_batch(requests, attempts)
            # A replayed batch (spool, journal recovery) plus one new row: only it is added.
            more_requests, more_attempts = rows(4)
            await sink.write_batch(more_requests, more_attempts)
            await sink.write_batch([], [])
        finally:
            await sink.close()
        return (
            await _fetch(pg_url, "requests", REQUEST_FIELDS),
            await _fetch(pg_url, "attempts", ATTEMPT_FIELDS),
        )

    stored_requests, stored_attempts = asyncio.run(main())
    expected_requests, expected_attempts = rows(4)
    # Same instants (Postgres hands back UTC), same exact decimals, every column.
    assert stored_requests == [tuple(r) for r in expected_requests]
    assert stored_attempts == [tuple(a) for a in expected_attempts]
    assert stored_attempts[0][ATTEMPT_FIELDS.index("started_at")].tzinfo is not None


def test_writes_what_the_repository_writes(pg_url: str) -> None:
    """The sink and the SQLAlchemy repository (still the SQLite path) store equal rows."""
    requests, attempts = rows(2)

    async def main() -> tuple[int, int]:
        sink = PgLedgerSink(pg_url)
        try:
            await sink.write_batch(requests[:1], attempts[:1])
        finally:
            await sink.close()
        repo = LedgerRepository.create(pg_url)
        try:
            await repo.write_batch(requests[1:], attempts[1:])
            return await repo.counts()
        finally:
            await repo.close()

    assert asyncio.run(main()) == (2, 2)
    for table, fields in (("requests", REQUEST_FIELDS), ("attempts", ATTEMPT_FIELDS)):
        by_sink, by_repo = asyncio.run(_fetch(pg_url, table, fields))
        # Everything but the ids (and an attempt's request id) is the same.
        assert by_sink[0] != by_repo[0]
        assert by_sink[2:] == by_repo[2:]
        assert by_sink[1] == by_repo[1] if table == "requests" else by_sink[1] != by_repo[1]


def test_an_outage_fails_the_batch_then_ping_reconnects(
    postgres: PostgresServer, pg_url: str
) -> None:
    requests, attempts = rows(2)

    async def main() -> list[Any]:
        sink = PgLedgerSink(pg_url, connect_timeout_s=2)
        try:
            await sink.write_batch(requests[:1], attempts[:1])
            await asyncio.to_thread(postgres.stop)
            with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                await sink.write_batch(requests[1:], attempts[1:])
            with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                await sink.ping()
            await asyncio.to_thread(postgres.start)
            await sink.ping()
            await sink.write_batch(requests, attempts)  # the writer's replay: both again
        finally:
            await sink.close()
        return await _fetch(pg_url, "attempts", ("id",))

    assert asyncio.run(main()) == [("a0",), ("a1",)]


def test_postgres_urls_get_the_sink_sqlite_keeps_the_repository() -> None:
    repository = object()
    sink, owned = writer_sink("postgresql+asyncpg://u:p@localhost:5432/farebox", repository)
    assert isinstance(sink, PgLedgerSink) and owned
    assert sink.dsn == "postgresql://u:p@localhost:5432/farebox"
    assert writer_sink("sqlite+aiosqlite:///var/ledger.db", repository) == (repository, False)


def test_received_at_is_stored_as_the_same_instant(pg_url: str) -> None:
    requests, attempts = rows(1)

    async def main() -> list[Any]:
        sink = PgLedgerSink(pg_url)
        try:
            await sink.write_batch(requests, attempts)
        finally:
            await sink.close()
        return await _fetch(pg_url, "requests", ("received_at",))

    (stored,) = asyncio.run(main())
    assert stored[0] == requests[0].received_at
    assert stored[0].astimezone(UTC).hour == 12


def test_new_rows_are_copied_straight_and_a_replay_takes_the_staging_path(pg_url: str) -> None:
    """A batch of new rows goes straight to the raw tables and the pending ones (no staging
    table is made); a batch that repeats a row falls back to the staging upsert, and each
    row is written, and pending, exactly once."""
    requests, attempts = rows(5)

    async def main() -> tuple[bool, bool, list[Any], list[Any]]:
        sink = PgLedgerSink(pg_url)
        try:
            await sink.write_batch(requests[:2], attempts[:2])
            staged_after_fresh = sink._staged
            await sink.write_batch(requests[1:], attempts[1:])  # r1 and a1 again
            staged_after_replay = sink._staged
        finally:
            await sink.close()
        conn = await asyncpg.connect(asyncpg_dsn(pg_url))
        try:
            pending = [
                sorted(r[0] for r in await conn.fetch(f"SELECT id FROM {table}"))
                for table in ("rollup_pending_requests", "rollup_pending_attempts")
            ]
            raw = [
                sorted(r[0] for r in await conn.fetch(f"SELECT id FROM {table}"))
                for table in ("requests", "attempts")
            ]
        finally:
            await conn.close()
        return staged_after_fresh, staged_after_replay, pending, raw

    fresh, replay, pending, raw = asyncio.run(main())
    assert not fresh and replay
    assert raw == [[f"r{i}" for i in range(5)], [f"a{i}" for i in range(5)]]
    assert pending == raw
