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
from gateway.ledger.repository import LedgerRepository
from gateway.ledger.responses_pg import COLUMNS, PgResponsesRepository
from gateway.ledger.serving_ledger import ServingLedger
from tests.ledger_rows import T0, attempt_row, request_row

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


def test_the_budget_seed_and_gate_history_match_the_repository(pg_url: str) -> None:
    """Same rows, same answers: ServingLedger (asyncpg) against LedgerRepository (SQLAlchemy)."""
    day = timedelta(days=1)
    requests = [
        request_row("r1", key_id="k1", cost_usd=Decimal("0.0000036000")),
        request_row("r2", key_id="k1", cost_usd=Decimal("1.25"), received_at=T0 + day),
        request_row("r3", key_id="k2", cost_usd=Decimal("7"), route="other"),
        request_row("r4", key_id="k1", cost_usd=None, received_at=T0 - day),
    ]
    attempts = [
        attempt_row("a1", "r1", gate_outcome="pass", input_uncached_tokens=50),
        attempt_row("a2", "r2", gate_outcome="fail", cached_read_tokens=500, started_at=T0 + day),
        attempt_row("a3", "r3", gate_outcome="pass", cache_write_tokens=5000, deployment="b@sim"),
        attempt_row("a4", "r3", gate_outcome=None, attempt_no=2),
        attempt_row("a5", "r4", gate_outcome="pass", started_at=T0 - day),
    ]
    edges, names = [100, 1000], ["short", "medium", "long"]

    async def main() -> None:
        sql = LedgerRepository.create(pg_url)
        ledger = ServingLedger(pg_url, PgPool(pg_url))
        try:
            await sql.write_batch(requests, attempts)
            for key, since in (("k1", T0), ("k1", T0 - day), ("k2", T0), ("k3", T0)):
                spend = await ledger.key_spend_since(key, since)
                assert spend == await sql.key_spend_since(key, since)
            assert await ledger.key_spend_since("k1", T0) == Decimal("1.2500036")
            got = sorted(await ledger.gate_history(T0, edges, names))
            assert got == sorted(await sql.gate_history(T0, edges, names))
            assert [(g[1], g[2], g[3]) for g in got] == [
                ("fast@sim", "medium", False),  # route chat
                ("fast@sim", "short", True),
                ("b@sim", "long", True),  # route other
            ]
            assert not ledger.loaded
        finally:
            await ledger.close()
            await sql.close()

    asyncio.run(main())
