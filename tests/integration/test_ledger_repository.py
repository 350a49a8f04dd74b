"""Ledger schema, migrations and repository against real SQLite files and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from gateway.ledger.migrate import current, downgrade, upgrade
from gateway.ledger.models import Base, attempts_table, requests_table
from gateway.ledger.partitions import is_partition
from gateway.ledger.repository import LedgerRepository
from gateway.ledger.usage import UsageLine
from gateway.ledger_rows import ESTIMATED, AttemptRow, RequestRow
from tests.ledger_rows import T0, attempt_row, request_row
from tests.services import PostgresServer

T = TypeVar("T")
SINCE = T0 - timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        upgrade(url)
        return url
    return str(request.getfixturevalue("pg_url"))


def with_repo(url: str, fn: Callable[[LedgerRepository], Awaitable[T]]) -> T:
    async def main() -> T:
        repo = LedgerRepository.create(url)
        try:
            return await fn(repo)
        finally:
            await repo.close()

    return asyncio.run(main())


def on_connection(url: str, fn: Callable[[Connection], T]) -> T:
    async def main(repo: LedgerRepository) -> T:
        async with repo.engine.connect() as conn:
            return await conn.run_sync(fn)

    return with_repo(url, main)


def req(id: str, **kw: Any) -> RequestRow:
    return request_row(id, **kw)


def att(id: str, request_id: str, **kw: Any) -> AttemptRow:
    return attempt_row(id, request_id, **kw)


def tokens(*counts: int) -> dict[str, Any]:
    """uncached input, cached read, cache write, output, reasoning — the ledger's order."""
    names = [name for name in AttemptRow._fields if name.endswith("_tokens")]
    return dict(zip(names, counts, strict=True))


# --- schema and migrations -------------------------------------------------------------------


def test_model_columns_are_the_row_fields() -> None:
    for table, row in ((requests_table, RequestRow), (attempts_table, AttemptRow)):
        assert [c.name for c in table.columns] == list(row._fields)
    assert not attempts_table.foreign_keys


def _schema(conn: Connection) -> dict[str, set[str]]:
    insp = inspect(conn)
    return {t: {ix["name"] or "" for ix in insp.get_indexes(t)} for t in insp.get_table_names()}


HEAD = "0017"


def _request_columns(conn: Connection) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns("requests")}


def _attempt_columns(conn: Connection) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns("attempts")}


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    expected = {
        "requests": {
            "ix_requests_received_at",
            "ix_requests_key_id_received_at",
            "ix_requests_route_received_at",
            "ix_requests_workflow_id_received_at",
            "ix_requests_batch_id",
            "ix_requests_consensus_received_at",
            "ix_requests_guard_received_at",
        },
        "responses": {"ix_responses_expires_at"},
        "files": {"ix_files_key_id_created_at", "ix_files_expires_at"},
        "batches": {"ix_batches_key_id_created_at", "ix_batches_status"},
        "batch_lines": set(),
        "attempts": {
            "ix_attempts_request_id",
            "ix_attempts_started_at",
            "ix_attempts_deployment_started_at",
            "ix_attempts_provider_started_at",
        },
    }
    schema = on_connection(db_url, _schema)
    assert {t: schema[t] for t in expected} == expected
    assert current(db_url) == HEAD
    assert "decision" in on_connection(db_url, _request_columns)
    assert {"team", "segment"} <= on_connection(db_url, _request_columns)
    keys_indexes = {"ix_api_keys_key_hash", "ix_api_keys_updated_at"}
    assert on_connection(db_url, _schema)["api_keys"] == keys_indexes
    assert on_connection(db_url, _schema)["admin_audit"] == {"ix_admin_audit_at"}

    def drill_columns(conn: Connection) -> set[str]:
        return {c["name"] for c in inspect(conn).get_columns("drills")}

    assert "guard" in on_connection(db_url, drill_columns)
    downgrade(db_url, "0016")  # one step: the drills' trial checks go, nothing else
    assert "guard" not in on_connection(db_url, drill_columns)
    assert {t: on_connection(db_url, _schema)[t] for t in expected} == expected
    assert "guard" in on_connection(db_url, _request_columns)
    downgrade(db_url, "0015")  # one step: the guard column and its index go, nothing else
    assert current(db_url) == "0015"
    assert "guard" not in on_connection(db_url, _request_columns)
    at_0015 = {t: set(v) for t, v in expected.items()}
    at_0015["requests"].discard("ix_requests_guard_received_at")
    assert {t: on_connection(db_url, _schema)[t] for t in at_0015} == at_0015

    assert {"batch_id"} <= on_connection(db_url, _request_columns)
    assert {"units", "unit"} <= on_connection(db_url, _attempt_columns)
    downgrade(db_url, "0009")  # one step: batches and their columns go, nothing else
    assert current(db_url) == "0009"
    assert not {"batches", "batch_lines"} & set(on_connection(db_url, _schema))
    assert "batch_id" not in on_connection(db_url, _request_columns)
    assert not {"units", "unit"} & on_connection(db_url, _attempt_columns)
    at_head = expected
    expected = {t: set(v) for t, v in at_head.items() if t not in ("batches", "batch_lines")}
    expected["requests"].discard("ix_requests_batch_id")
    expected["requests"].discard("ix_requests_consensus_received_at")  # 0015's
    expected["requests"].discard("ix_requests_guard_received_at")  # 0016's
    expected["files"].discard("ix_files_expires_at")
    assert {t: on_connection(db_url, _schema)[t] for t in expected} == expected

    downgrade(db_url, "0008")  # one step: the files table goes, nothing else
    assert current(db_url) == "0008"
    assert "files" not in set(on_connection(db_url, _schema))
    expected = {t: set(v) for t, v in expected.items() if t != "files"}
    assert {t: on_connection(db_url, _schema)[t] for t in expected} == expected

    assert "workflow_id" in on_connection(db_url, _request_columns)
    downgrade(db_url, "0007")  # one step: stored responses and the workflow column go
    assert current(db_url) == "0007"
    assert "workflow_id" not in on_connection(db_url, _request_columns)
    assert "responses" not in set(on_connection(db_url, _schema))
    expected = {t: set(v) for t, v in expected.items() if t != "responses"}
    expected["requests"].discard("ix_requests_workflow_id_received_at")
    assert {t: on_connection(db_url, _schema)[t] for t in expected} == expected

    assert "consensus" in on_connection(db_url, _request_columns)
    downgrade(db_url, "0006")  # one step: the consensus outcome column goes, nothing else
    assert current(db_url) == "0006"
    assert "consensus" not in on_connection(db_url, _request_columns)
    assert {t: on_connection(db_url, _schema)[t] for t in expected} == expected

    assert "saved_usd" in on_connection(db_url, _attempt_columns)
    downgrade(db_url, "0005")  # one step: the cache savings column goes, nothing else
    assert current(db_url) == "0005"
    assert "saved_usd" not in on_connection(db_url, _attempt_columns)
    assert {t: on_connection(db_url, _schema)[t] for t in expected} == expected

    drills_indexes = {"ix_drills_status", "ix_drills_route_started_at", "ix_drills_updated_at"}
    assert on_connection(db_url, _schema)["drills"] == drills_indexes
    downgrade(db_url, "0004")  # one step: the drills table goes
    assert current(db_url) == "0004"
    assert "drills" not in set(on_connection(db_url, _schema))

    reports = {"invoice_lines", "reconciliations"}
    assert reports <= set(on_connection(db_url, _schema))
    downgrade(db_url, "0003")  # one step: the invoice and reconciliation tables go
    assert current(db_url) == "0003"
    assert not reports & set(on_connection(db_url, _schema))

    downgrade(db_url, "0002")  # one step: key tables and the team/segment columns go
    assert current(db_url) == "0002"
    assert not {"team", "segment"} & on_connection(db_url, _request_columns)
    assert not {"api_keys", "admin_audit"} & set(on_connection(db_url, _schema))
    assert {t: on_connection(db_url, _schema)[t] for t in expected} == expected

    downgrade(db_url, "0001")  # one step: the routing decision column goes, nothing else
    assert current(db_url) == "0001"
    assert "decision" not in on_connection(db_url, _request_columns)
    assert {t: on_connection(db_url, _schema)[t] for t in expected} == expected

    downgrade(db_url, "base")
    assert set(on_connection(db_url, _schema)) <= {"alembic_version"}
    assert current(db_url) is None

    upgrade(db_url)
    assert {t: on_connection(db_url, _schema)[t] for t in at_head} == at_head
    assert current(db_url) == HEAD


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    return not (type_ == "table" and name is not None and is_partition(name))


def test_models_match_migrations(db_url: str) -> None:
    def diff(conn: Connection) -> list[Any]:
        # A Postgres ledger's day partitions are not in the models (migrations/env.py
        # leaves them out of autogenerate the same way).
        opts = {"compare_type": True, "include_name": include_name}
        context = MigrationContext.configure(conn, opts=opts)
        return list(compare_metadata(context, Base.metadata))

    assert on_connection(db_url, diff) == []


def test_migrate_creates_sqlite_directory_from_any_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    upgrade("sqlite+aiosqlite:///nested/dir/ledger.db")
    assert (tmp_path / "nested" / "dir" / "ledger.db").is_file()
    assert current("sqlite+aiosqlite:///nested/dir/ledger.db") == HEAD


# --- writes ----------------------------------------------------------------------------------


def test_write_batch_is_idempotent(db_url: str) -> None:
    requests = [req("r1"), req("r2")]
    attempts = [att("a1", "r1"), att("a2", "r1", attempt_no=2), att("a3", "r2")]

    async def main(repo: LedgerRepository) -> list[tuple[int, int]]:
        await repo.ping()
        seen = [await repo.counts()]
        await repo.write_batch(requests, attempts)
        seen.append(await repo.counts())
        await repo.write_batch(requests, attempts)
        seen.append(await repo.counts())
        # A replay that overlaps, repeats an id inside the batch, and brings one new attempt
        # whose request row has not been written yet (no foreign key: order must not matter).
        await repo.write_batch(requests[:1], [attempts[0], attempts[0], att("a9", "r-later")])
        seen.append(await repo.counts())
        await repo.write_batch([], [])
        seen.append(await repo.counts())
        return seen

    assert with_repo(db_url, main) == [(0, 0), (2, 3), (2, 3), (2, 4), (2, 4)]


def test_values_round_trip_exactly(db_url: str) -> None:
    local = timezone(timedelta(hours=2))
    row = att(
        "a1",
        "r1",
        started_at=datetime(2025, 1, 15, 14, 30, 1, 123456, tzinfo=local),
        cost_usd=Decimal("0.0000012345"),
        provider_request_id="chatcmpl-" + "x" * 200,
        ttft_ms=12.5,
        http_status=None,
        error_class="timeout",
        token_source=ESTIMATED,
        drill_id="drill-1",
    )

    async def main(repo: LedgerRepository) -> Any:
        await repo.write_batch([], [row])
        async with repo.engine.connect() as conn:
            return (await conn.execute(select(attempts_table))).one()

    stored = with_repo(db_url, main)
    assert stored.cost_usd == Decimal("0.0000012345")
    started = stored.started_at
    # SQLite hands back naive UTC; Postgres an aware value. Both must be the same instant.
    started = started if started.tzinfo else started.replace(tzinfo=UTC)
    assert started == row.started_at
    assert stored.provider_request_id == row.provider_request_id
    assert (stored.http_status, stored.error_class, stored.drill_id) == (None, "timeout", "drill-1")


def test_write_to_unmigrated_database_raises(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/empty.db"

    async def main(repo: LedgerRepository) -> None:
        await repo.write_batch([req("r1")], [])

    with pytest.raises(SQLAlchemyError):
        with_repo(url, main)


def test_postgres_outage_raises_then_recovers(postgres: PostgresServer, pg_url: str) -> None:
    async def main(repo: LedgerRepository) -> tuple[int, int]:
        await repo.write_batch([req("r1")], [att("a1", "r1")])
        await asyncio.to_thread(postgres.stop)
        with pytest.raises((SQLAlchemyError, OSError)):
            await repo.write_batch([req("r2")], [att("a2", "r2")])
        with pytest.raises((SQLAlchemyError, OSError)):
            await repo.ping()
        await asyncio.to_thread(postgres.start)
        # Same repository, same pool: stale connections are detected and replaced.
        await repo.ping()
        await repo.write_batch([req("r2")], [att("a2", "r2")])
        return await repo.counts()

    assert with_repo(pg_url, main) == (2, 2)


# --- reports ---------------------------------------------------------------------------------


LEDGER_REQUESTS = [
    # Answered by its fallback on slow@other.
    req("r1", route="chat", key_id="k1", attempts=2, final_deployment="slow@other"),
    req("r2", route="chat", key_id="k2", received_at=T0 + timedelta(minutes=1)),
    req(
        "r3",
        route="extract",
        key_id="k1",
        received_at=T0 + timedelta(minutes=2),
        final_deployment="slow@other",
    ),
    # Rejected before any upstream call: counts as a request with no attempts.
    req("r4", route="chat", key_id=None, attempts=0, final_status=429, final_deployment=None),
    req("r-old", route="chat", key_id="k1", received_at=T0 - timedelta(days=2)),
]
SLOW: dict[str, Any] = {"deployment": "slow@other", "provider": "other", "upstream_model": "m-slow"}
LEDGER_ATTEMPTS = [
    att("a1", "r1", cost_usd=Decimal("0.0010"), **tokens(100, 20, 5, 30, 10)),
    # No known price: excluded from the cost sum, counted as unpriced.
    att(
        "a2", "r1", attempt_no=2, role="fallback", cost_usd=None, **SLOW, **tokens(100, 0, 0, 40, 0)
    ),
    att(
        "a3",
        "r2",
        started_at=T0 + timedelta(minutes=1),
        token_source=ESTIMATED,
        cost_usd=Decimal("0.0020"),
        **tokens(50, 50, 0, 10, 2),
    ),
    att("a4", "r3", cost_usd=Decimal("0.0000001234"), **SLOW, **tokens(7, 0, 0, 3, 0)),
    att(
        "a-old",
        "r-old",
        started_at=T0 - timedelta(days=2),
        cost_usd=Decimal("1"),
        **tokens(1000, 0, 0, 500, 0),
    ),
]


def line(
    group: str | None,
    requests: int,
    attempts: int,
    toks: tuple[int, ...],
    cost: str,
    unpriced: int,
    successful: int,
) -> UsageLine:
    uncached, cached, write, out, reasoning = toks
    return UsageLine(
        group,
        requests,
        attempts,
        uncached,
        cached,
        write,
        out,
        reasoning,
        Decimal(cost),
        unpriced,
        successful,
    )


def _usage(db_url: str, by: str) -> list[UsageLine]:
    async def main(repo: LedgerRepository) -> list[UsageLine]:
        await repo.write_batch(LEDGER_REQUESTS, LEDGER_ATTEMPTS)
        return await repo.usage(SINCE, by)

    return with_repo(db_url, main)


def test_usage_by_route(db_url: str) -> None:
    assert _usage(db_url, "route") == [
        line("chat", 3, 3, (250, 70, 5, 80, 12), "0.0030", 1, 2),
        line("extract", 1, 1, (7, 0, 0, 3, 0), "0.0000001234", 0, 1),
    ]


def test_usage_by_key_keeps_keyless_requests(db_url: str) -> None:
    assert _usage(db_url, "key") == [
        line("k2", 1, 1, (50, 50, 0, 10, 2), "0.0020", 0, 1),
        line("k1", 2, 3, (207, 20, 5, 73, 10), "0.0010001234", 1, 2),
        line(None, 1, 0, (0, 0, 0, 0, 0), "0", 0, 0),
    ]


def test_usage_by_deployment(db_url: str) -> None:
    # Attempts, tokens and cost where they were spent; requests and successes where they were
    # answered (final deployment), so they add up to the by-route totals (4 and 3).
    assert _usage(db_url, "deployment") == [
        line("fast@sim", 1, 2, (150, 70, 5, 40, 12), "0.0030", 0, 1),
        line("slow@other", 2, 2, (107, 0, 0, 43, 0), "0.0000001234", 1, 2),
        line(None, 1, 0, (0, 0, 0, 0, 0), "0", 0, 0),
    ]


def test_usage_with_only_unpriced_attempts_costs_zero_not_null(db_url: str) -> None:
    async def main(repo: LedgerRepository) -> list[UsageLine]:
        await repo.write_batch([req("r1")], [att("a1", "r1"), att("a2", "r1", attempt_no=2)])
        return await repo.usage(SINCE, "deployment")

    assert with_repo(db_url, main) == [line("fast@sim", 1, 2, (0, 0, 0, 0, 0), "0", 2, 1)]


def test_usage_counts_only_answers_that_passed_the_gate_as_successful(db_url: str) -> None:
    async def main(repo: LedgerRepository) -> list[UsageLine]:
        requests = [
            req("ok", route="x", gate_outcome="pass"),
            req("bad", route="x", gate_outcome="schema"),
            req("plain", route="x"),
        ]
        attempts = [
            att("a1", "ok", cost_usd=Decimal("0.003")),
            att("a2", "bad", cost_usd=Decimal("0.002")),
            att("a3", "plain", cost_usd=Decimal("0.001")),
        ]
        await repo.write_batch(requests, attempts)
        return await repo.usage(SINCE, "route")

    [usage] = with_repo(db_url, main)
    assert (usage.requests, usage.successful) == (3, 2)
    assert usage.cost_per_success == Decimal("0.003")  # $0.006 spent for two good answers


def test_usage_since_is_compared_as_an_instant(db_url: str) -> None:
    # 13:00+02:00 is 11:00 UTC: every row at T0 (12:00 UTC) and later is in the window.
    since = datetime(2025, 1, 15, 13, 0, tzinfo=timezone(timedelta(hours=2)))

    async def main(repo: LedgerRepository) -> list[int]:
        await repo.write_batch(LEDGER_REQUESTS, LEDGER_ATTEMPTS)
        lines = await repo.usage(since, "route")
        late = await repo.usage(T0 + timedelta(seconds=30), "route")
        return [sum(x.requests for x in lines), sum(x.requests for x in late)]

    assert with_repo(db_url, main) == [4, 2]


def test_usage_rejects_bad_arguments(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/l.db"
    upgrade(url)

    async def naive(repo: LedgerRepository) -> None:
        await repo.usage(datetime(2025, 1, 1), "route")

    async def bad_by(repo: LedgerRepository) -> None:
        await repo.usage(SINCE, "model")

    with pytest.raises(ValueError, match="timezone"):
        with_repo(url, naive)
    with pytest.raises(ValueError, match="route, key or deployment"):
        with_repo(url, bad_by)


def test_token_sums_by_model_counts_only_provider_reported_tokens(db_url: str) -> None:
    async def main(repo: LedgerRepository) -> dict[str, dict[str, int]]:
        await repo.write_batch(LEDGER_REQUESTS, LEDGER_ATTEMPTS)
        return await repo.token_sums_by_model()

    # a3 (m-fast, estimated) is left out; a-old is outside any window but sums are all-time.
    assert with_repo(db_url, main) == {
        "m-fast": {
            "prompt": 1125,
            "cached": 20,
            "cache_write": 5,
            "completion": 530,
            "reasoning": 10,
        },
        "m-slow": {"prompt": 107, "cached": 0, "cache_write": 0, "completion": 43, "reasoning": 0},
    }
