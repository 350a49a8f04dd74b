"""The asyncpg reads and writes a serving worker makes on a Postgres ledger (issue #25: no
SQLAlchemy in the serving process) answer as the SQLAlchemy repositories do on the same rows:
key lookups and the change poll, drill reads, stored Responses, the budget seed, the ping and
the missing-tables check."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway.ledger.drills_repository import DrillsRepository
from gateway.ledger.drills_serving import ServingDrills
from gateway.ledger.keys_reads import PgKeyReads
from gateway.ledger.keys_repository import KeysRepository
from gateway.ledger.models_responses import responses_table
from gateway.ledger.pg import PgPool, asyncpg_dsn, is_postgres
from gateway.ledger.responses_pg import COLUMNS, PgResponsesRepository
from gateway.ledger.serving_ledger import ServingLedger

NOW = datetime.now(UTC).replace(microsecond=0)


def test_the_dsn_drops_the_driver_and_sqlalchemy_only_options() -> None:
    url = "postgresql+asyncpg://u:p@db:5433/ledger?prepared_statement_cache_size=0&sslmode=require"
    assert is_postgres(url) and not is_postgres("sqlite+aiosqlite:///x.db")
    assert asyncpg_dsn(url) == "postgresql://u:p@db:5433/ledger?sslmode=require"


def test_the_responses_columns_are_the_tables() -> None:
    assert tuple(c.name for c in responses_table.c) == COLUMNS


def test_key_reads_match_the_repository(pg_url: str) -> None:
    async def main() -> None:
        admin = KeysRepository.connect(pg_url)
        pool = PgPool(pg_url)
        reads = PgKeyReads(pool)
        try:
            assert await reads.ready()
            assert await reads.latest_change() is None
            fields: dict[str, Any] = {
                "name": "a",
                "routes": ["chat"],
                "budget_usd": Decimal("12.34"),
            }
            fields |= {"tags": {"team": "x"}, "expires_at": NOW + timedelta(days=1)}
            key, _secret = await admin.create(fields, actor="test")
            revoked, _ = await admin.create({"name": "b", "routes": None}, actor="test")
            revoked = await admin.revoke(revoked.id, actor="test")
            for k in (key, revoked):
                assert await reads.by_hash(k.key_hash) == await admin.by_hash(k.key_hash)
            assert (await reads.by_hash(key.key_hash)).budget_usd == Decimal("12.34")  # type: ignore[union-attr]
            assert await reads.by_hash("0" * 64) is None
            assert await reads.changes_since(None) == await admin.changes_since(None)
            since = key.updated_at
            assert [c.id for c in await reads.changes_since(since)] == [revoked.id]
            assert await reads.latest_change() == await admin.latest_change()
        finally:
            await pool.close()
            await admin.close()

    asyncio.run(main())


def test_drill_reads_match_the_repository(pg_url: str) -> None:
    async def main() -> None:
        sql = DrillsRepository.create(pg_url)
        pool = PgPool(pg_url)
        drills = ServingDrills(pg_url, pool)
        try:
            one = await sql.start("chat", "alt@sim", 10, 5, schedule="nightly", now=NOW)
            two = await sql.start("other", "alt@sim", 10, 5, now=NOW + timedelta(seconds=1))
            await sql.move(two.id, ("running",), "stopping")
            await sql.finish(one.id, "completed", "PASS", {"reasons": []}, "# report")
            assert await drills.get(one.id) == await sql.get(one.id)
            assert await drills.recent() == await sql.recent()
            assert await drills.unfinished() == await sql.unfinished()
            assert [d.id for d in await drills.unfinished()] == [two.id]
            assert await drills.active() == []
            assert await drills.last_started("nightly") == NOW
            assert await drills.last_started("never") is None
            assert not hasattr(drills, "_repository") or drills._repository is None  # reads only
            # Anything else is the SQLAlchemy repository's, opened on first use.
            assert await drills.move(two.id, ("stopping",), "stopped")
        finally:
            await drills.close()
            await pool.close()
            await sql.close()

    asyncio.run(main())


def row(id: str, key_id: str | None = "key_a", expires_in: float = 60.0) -> dict[str, Any]:
    return {
        "id": id,
        "request_id": f"req_{id}",
        "key_id": key_id,
        "workflow_id": None,
        "previous_response_id": None,
        "model": "chat",
        "status": "completed",
        "created_at": NOW,
        "expires_at": NOW + timedelta(seconds=expires_in),
        "input_items": '[{"role":"user","content":"hi"}]',
        "response": f'{{"id":"{id}"}}',
    }


def test_stored_responses_on_asyncpg(pg_url: str) -> None:
    async def main() -> None:
        pool = PgPool(pg_url)
        repo = PgResponsesRepository(pool)
        try:
            assert await repo.insert_many([row("resp_1"), row("resp_2", key_id=None)]) == 2
            assert not await repo.insert(row("resp_1"))  # a replayed save leaves the row
            got = await repo.fetch("resp_1", "key_a", NOW)
            assert got is not None and got["response"] == '{"id":"resp_1"}'  # json keeps the text
            assert got["expires_at"] == NOW + timedelta(seconds=60)
            assert await repo.fetch("resp_1", "key_b", NOW) is None  # another key's
            assert await repo.fetch("resp_2", None, NOW) is not None
            assert await repo.fetch("resp_1", "key_a", NOW + timedelta(minutes=2)) is None
            assert not await repo.delete("resp_1", "key_b", NOW)
            assert await repo.delete("resp_1", "key_a", NOW)
            await repo.insert_many([row(f"old_{n}", expires_in=-1) for n in range(3)])
            assert await repo.purge_batch(NOW, 2) == 2
            assert await repo.purge_batch(NOW, 2) == 1
            assert await repo.fetch("resp_2", None, NOW) is not None
        finally:
            await pool.close()

    asyncio.run(main())


def test_the_serving_ledger_reads_without_sqlalchemy(pg_url: str) -> None:
    async def main() -> None:
        ledger = ServingLedger(pg_url, PgPool(pg_url))
        try:
            await ledger.ping()
            assert await ledger.missing_tables() == []
            assert await ledger.key_spend_since("key_a", NOW) == Decimal(0)
            assert await ledger.gate_history(NOW, [100, 1000], ["s", "m", "l"]) == []
            assert not ledger.loaded
        finally:
            await ledger.close()

    asyncio.run(main())
