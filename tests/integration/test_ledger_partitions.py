"""Day partitions of the Postgres ledger (migration 0011, gateway/ledger/partitions.py) on a
real PostgreSQL: the in-place migration of a populated ledger (every row, sum and report the
same, and back), the writers on partitioned tables (DEFAULT catches what has no day, replays
stay no-ops), partitions created ahead idempotently and concurrently with DEFAULT's rows
moved out, retention dropping exactly the days before a cutoff, and the keeper and CLI."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from inspect import signature
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.config.loading import parse_config
from gateway.ledger.migrate import current, downgrade, upgrade
from gateway.ledger.partitions import (
    AHEAD_DAYS,
    PartitionKeeper,
    create_ahead,
    drop_before,
    ensure_days,
    list_partitions,
    partition_name,
)
from gateway.ledger.pg import asyncpg_dsn
from gateway.ledger.pg_sink import PgLedgerSink
from gateway.ledger.repository import LedgerRepository
from gateway.ledger_rows import (
    ATTEMPT_FIELDS,
    ESTIMATED,
    PROVIDER,
    REQUEST_FIELDS,
    AttemptRow,
    RequestRow,
)
from gateway.reports.store import ReportStore
from gateway.settings import Settings
from gateway.state import build_state
from tests.ledger_rows import attempt_row, request_row
from tests.services import PostgresServer, free_port
from tests.waiting import until

T = TypeVar("T")
PLUS5 = timezone(timedelta(hours=5, minutes=30))
TODAY = datetime.now(UTC).date()
# The migration makes day partitions from the first of last month, month partitions before.
DAILY_FROM = (TODAY.replace(day=1) - timedelta(days=1)).replace(day=1)
# The generated ledger's ~70 days always straddle DAILY_FROM (which is 28 to 61 days back).
DATA_FROM = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC) - timedelta(days=75)
WINDOW = (DATA_FROM - timedelta(days=1), DATA_FROM + timedelta(days=71))
FAR = [datetime(2019, 3, 1, 8, 0, tzinfo=UTC), datetime(2031, 6, 30, 23, 59, 59, tzinfo=UTC)]
TABLES = ("requests", "attempts")


def run(fn: Callable[[Any], Awaitable[T]], url: str) -> T:
    """`fn` on a fresh asyncpg connection to `url`."""

    async def main() -> T:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


@pytest.fixture
def fresh_url(postgres: PostgresServer) -> Iterator[str]:
    """An empty database (no migration yet)."""
    name = f"p_{uuid.uuid4().hex[:16]}"
    postgres.create_database(name)
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)


def ledger(n: int, seed: int = 7) -> tuple[list[RequestRow], list[AttemptRow]]:
    """`n` requests over ~70 days up to 5 days ago (midnight edges included, some in
    another time zone), a few far outside, with one to three attempts each: every column
    type, NULLs, exact Decimal costs and units."""
    rnd = random.Random(seed)
    start = DATA_FROM
    requests: list[RequestRow] = []
    attempts: list[AttemptRow] = []
    for i in range(n):
        if i < len(FAR):
            at = FAR[i]
        elif i % 50 == 0:
            at = start + timedelta(days=rnd.randrange(70), microseconds=-1)  # 23:59:59.999999
        elif i % 50 == 1:
            at = start + timedelta(days=rnd.randrange(70))  # exactly midnight
        else:
            at = start + timedelta(seconds=rnd.randrange(70 * 86400), microseconds=i)
        if i % 7 == 0:
            at = at.astimezone(PLUS5)
        cost = None if i % 11 == 0 else Decimal(rnd.randrange(10**12)) / Decimal(10**10)
        requests.append(
            request_row(
                f"r{i:05d}",
                received_at=at,
                key_id=None if i % 9 == 0 else f"k{i % 4}",
                route=rnd.choice(["chat", "code", "émbed"]),
                workload=None if i % 3 else "batchy",
                stream=bool(i % 2),
                final_status=rnd.choice([200, 200, 429, 500]),
                error_class=None if i % 5 else "timeout",
                attempts=1 + i % 3,
                input_uncached_tokens=rnd.randrange(5000),
                cached_read_tokens=rnd.randrange(100),
                output_tokens=rnd.randrange(900),
                reasoning_tokens=i % 13,
                cost_usd=cost,
                latency_ms=rnd.random() * 1000,
                ttft_ms=None if i % 4 else rnd.random() * 100,
                team=None if i % 6 else "t1",
                segment="s1" if i % 2 else None,
                workflow_id=None if i % 8 else f"wf{i % 3}",
                batch_id=None if i % 10 else "batch_1",
            )
        )
        for n_att in range(1 + i % 3):
            attempts.append(
                attempt_row(
                    f"a{i:05d}-{n_att}",
                    f"r{i:05d}",
                    attempt_no=n_att + 1,
                    role="primary" if n_att == 0 else "retry",
                    deployment=rnd.choice(["fast@sim", "slow@sim"]),
                    provider_request_id=None if n_att else f"prov-{i}",
                    started_at=at + timedelta(milliseconds=150 * n_att),
                    ttft_ms=None if n_att else 12.5,
                    http_status=None if i % 17 == 0 else 200,
                    error_class=None if n_att == 0 else "http_5xx",
                    input_uncached_tokens=rnd.randrange(5000),
                    output_tokens=rnd.randrange(900),
                    token_source=ESTIMATED if n_att else PROVIDER,
                    cost_usd=None if cost is None else cost / (n_att + 1),
                    price_version="v1" if cost is not None else None,
                    gate_outcome=None if i % 4 else "pass",
                    drill_id=None if i % 19 else "drill-1",
                    saved_usd=None if i % 5 else Decimal("0.0000000001"),
                    units=None if i % 6 else Decimal("2.500001"),
                    unit=None if i % 6 else "image",
                )
            )
    return requests, attempts


def write(url: str, requests: list[RequestRow], attempts: list[AttemptRow]) -> None:
    """Through the writer's sink (a database at head: the sink also keeps the rollups)."""

    async def main() -> None:
        sink = PgLedgerSink(url)
        try:
            for i in range(0, max(len(requests), len(attempts)), 250):
                await sink.write_batch(requests[i : i + 250], attempts[i : i + 250])
        finally:
            await sink.close()

    asyncio.run(main())


def insert(url: str, requests: list[RequestRow], attempts: list[AttemptRow]) -> None:
    """Straight into the tables, as the writer's merge does (COPY, then a target-less
    `ON CONFLICT DO NOTHING`), for a database at 0010 or 0011 that has no rollups yet."""

    async def main(conn: Any) -> None:
        for table, fields, rows in (
            ("requests", REQUEST_FIELDS, requests),
            ("attempts", ATTEMPT_FIELDS, attempts),
        ):
            stage = f"stage_{table}"
            await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table})")
            # Only the columns the table has at its revision (later ones hold None here).
            have = {
                r[0]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                    table,
                )
            }
            keep = [i for i, name in enumerate(fields) if name in have]
            await conn.copy_records_to_table(
                stage,
                records=[tuple(row[i] for i in keep) for row in rows],
                columns=[fields[i] for i in keep],
            )
            await conn.execute(
                f"INSERT INTO {table} SELECT * FROM {stage} ON CONFLICT DO NOTHING; "
                f"TRUNCATE {stage}"
            )

    run(main, url)


async def snapshot(conn: Any) -> dict[str, Any]:
    """Every row, the sums, and the index names of both tables."""
    got: dict[str, Any] = {}
    for table in TABLES:
        got[table] = [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY id")]
        got[f"{table} indexes"] = {
            r[0]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = $1 AND indexname <> $2",
                table,
                f"pk_{table}",
            )
        }
    got["sums"] = tuple(
        await conn.fetchrow(
            "SELECT count(*), sum(cost_usd), sum(input_uncached_tokens), sum(output_tokens), "
            "sum(saved_usd), sum(units), count(ttft_ms) FROM attempts"
        )
    )
    got["request sums"] = tuple(
        await conn.fetchrow(
            # Floats summed as numeric: exact, so the order the rows are read in cannot show.
            "SELECT count(*), sum(cost_usd), sum(latency_ms::numeric), count(batch_id) "
            "FROM requests"
        )
    )
    return got


def reports(url: str) -> tuple[Any, ...]:
    async def main() -> tuple[Any, ...]:
        # At 0010 and 0011 there are no rollups yet: the reports read the raw rows.
        raw = {"rollups": False} if "rollups" in signature(ReportStore.create).parameters else {}
        store = ReportStore.create(url, **raw)
        try:
            days = await store.ledger_days(*WINDOW)
            segments = await store.segment_report("route", *WINDOW)
            keys = await store.segment_report("key", *WINDOW)
        finally:
            await store.close()
        # As sets of lines: the order of a GROUP BY's rows is the plan's, not the data's.
        return tuple(sorted(map(repr, lines)) for lines in (days, *segments, *keys))

    return asyncio.run(main())


async def shape(conn: Any) -> dict[str, Any]:
    """relkind ('p' partitioned, 'r' plain) and primary key columns of both tables."""
    got = {}
    for table in TABLES:
        kind = await conn.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", table
        )
        pk = await conn.fetchval(
            "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_constraint c "
            "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
            "WHERE c.conrelid = to_regclass($1) AND c.contype = 'p'",
            table,
        )
        got[table] = (kind, list(pk))
    return got


def test_migration_keeps_every_row_sum_and_report_and_downgrades(fresh_url: str) -> None:
    url = fresh_url
    upgrade(url, "0010")
    requests, attempts = ledger(600)
    insert(url, requests, attempts)
    before = run(snapshot, url)
    assert len(before["requests"]) == 600 and len(before["attempts"]) == len(attempts)
    report_before = reports(url)
    assert report_before[0] and report_before[1]  # the month has data to compare
    assert run(shape, url) == {
        "requests": ("r", ["id"]),
        "attempts": ("r", ["id"]),
    }

    upgrade(url, "0011")
    assert current(url) == "0011"
    assert run(shape, url) == {
        "requests": ("p", ["id", "received_at"]),
        "attempts": ("p", ["id", "started_at"]),
    }
    assert run(snapshot, url) == before
    assert reports(url) == report_before

    async def placement(conn: Any) -> dict[str, Any]:
        parts = {t: await list_partitions(conn, t) for t in TABLES}
        # Every row sits in the partition named for its UTC day (its month before
        # DAILY_FROM); none in DEFAULT.
        misplaced = 0
        for table, key in (("requests", "received_at"), ("attempts", "started_at")):
            day = f"({key} AT TIME ZONE 'UTC')"
            misplaced += await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE tableoid::regclass::text <> CASE "
                f"WHEN {day}::date >= $1 THEN '{table}_p' || to_char({day}, 'YYYYMMDD') "
                f"ELSE '{table}_m' || to_char({day}, 'YYYYMM') END",
                DAILY_FROM,
            )
        days = {
            table: {
                r[0]
                for r in await conn.fetch(
                    f"SELECT DISTINCT ({key} AT TIME ZONE 'UTC')::date FROM {table}"
                )
            }
            for table, key in (("requests", "received_at"), ("attempts", "started_at"))
        }
        today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
        return {"parts": parts, "misplaced": misplaced, "days": days, "today": today}

    placed = run(placement, url)
    assert placed["misplaced"] == 0
    assert placed["today"] == TODAY  # the test does not straddle midnight
    for table in TABLES:
        parts = placed["parts"][table]
        assert parts[-1].name == f"{table}_default" and parts[-1].rows == 0
        months = {p.day for p in parts if p.monthly}
        days = {p.day for p in parts if p.day is not None and not p.monthly}
        held: set[date] = placed["days"][table]
        # A month partition for each old month with rows (the 2019 one among them) ...
        assert months == {d.replace(day=1) for d in held if d < DAILY_FROM}
        assert date(2019, 3, 1) in months
        # ... and a day for every day from DAILY_FROM through a week ahead, plus far days.
        ahead = (TODAY - DAILY_FROM).days + 8
        assert days == {DAILY_FROM + timedelta(days=n) for n in range(ahead)} | {
            d for d in held if d >= DAILY_FROM
        }
        assert date(2031, 6, 30) in days

    # A row written after the migration lands in its day; replayed rows still conflict.
    late = request_row("late", received_at=datetime.now(UTC))
    insert(url, [late], [])
    insert(url, requests[:50], attempts[:50])  # a replay: nothing added
    assert run(lambda c: c.fetchval("SELECT count(*) FROM requests"), url) == 601

    downgrade(url, "0010")
    assert current(url) == "0010"
    assert run(shape, url) == {"requests": ("r", ["id"]), "attempts": ("r", ["id"])}
    after = run(snapshot, url)
    at_0010 = len(before["requests"][0])  # the columns of 0010: later fields aside
    assert sorted(after["requests"]) == sorted([*before["requests"], tuple(late)[:at_0010]])
    assert {k: v for k, v in after.items() if k not in ("requests", "request sums")} == {
        k: v for k, v in before.items() if k not in ("requests", "request sums")
    }
    assert (
        run(
            lambda c: c.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'requests_p%'"),
            url,
        )
        == 0
    )

    # And up again: the round trip leaves the same ledger.
    upgrade(url, "0011")
    assert run(shape, url)["attempts"] == ("p", ["id", "started_at"])
    assert run(snapshot, url) == after

    # Retention on the migrated history: a month partition goes only once its whole month
    # is before the cutoff; the month just before DAILY_FROM ends at it, so it stays.
    cutoff = DAILY_FROM - timedelta(days=1)
    old = [p for p in run(lambda c: list_partitions(c, "requests"), url) if p.monthly]
    dropped = run(lambda c: drop_before(c, cutoff), url)
    assert sorted(dropped) == sorted(
        p.name.replace("requests", t) for p in old[:-1] for t in TABLES
    )
    kept = old[-1]
    assert kept.day is not None and kept.end == DAILY_FROM
    since = datetime(kept.day.year, kept.day.month, 1, tzinfo=UTC)
    left = [r for r in after["requests"] if r[1] >= since]
    assert len(left) < len(after["requests"])  # the 2019 row and older months went
    count = run(lambda c: c.fetchval("SELECT count(*) FROM requests"), url)
    assert count == len(left)


def rows_for(days: list[datetime], prefix: str) -> tuple[list[RequestRow], list[AttemptRow]]:
    requests = [request_row(f"{prefix}r{i}", received_at=at) for i, at in enumerate(days)]
    attempts = [
        attempt_row(f"{prefix}a{i}", f"{prefix}r{i}", started_at=at, cost_usd=Decimal("0.1"))
        for i, at in enumerate(days)
    ]
    return requests, attempts


async def where(conn: Any) -> dict[str, str]:
    """id -> the partition holding it, for both tables."""
    found = await conn.fetch(
        "SELECT id, tableoid::regclass::text FROM requests UNION ALL "
        "SELECT id, tableoid::regclass::text FROM attempts"
    )
    return {r[0]: r[1] for r in found}


def test_writers_fill_partitions_default_catches_the_rest_and_replays_are_noops(
    pg_url: str,
) -> None:
    now = datetime.now(UTC)
    past, future = datetime(2001, 2, 3, tzinfo=UTC), datetime(2040, 5, 6, tzinfo=UTC)
    requests, attempts = rows_for([now, past, future], "w")

    write(pg_url, requests, attempts)
    write(pg_url, requests, attempts)  # a replay (spool, journal recovery): nothing added
    placed = run(where, pg_url)
    assert placed == {
        "wr0": partition_name("requests", now.date()),
        "wa0": partition_name("attempts", now.date()),
        "wr1": "requests_default",
        "wa1": "attempts_default",
        "wr2": "requests_default",
        "wa2": "attempts_default",
    }

    # The SQLAlchemy repository's two Postgres paths (COPY, and inside a caller's
    # transaction as batches do) replay the same rows harmlessly too, and add new ones.
    more_r, more_a = rows_for([now, past], "x")

    async def via_repository() -> None:
        repo = LedgerRepository.create(pg_url)
        try:
            await repo.write_batch(requests + more_r, attempts + more_a)
            async with repo.engine.begin() as conn:
                await repo.insert_on(conn, requests + more_r, attempts + more_a)
        finally:
            await repo.close()

    asyncio.run(via_repository())
    placed = run(where, pg_url)
    assert len(placed) == 10
    assert placed["xr1"] == "requests_default" and placed["xa0"].startswith("attempts_p")


def test_partitions_are_created_ahead_concurrently_and_take_rows_from_default(
    pg_url: str,
) -> None:
    today = date(2030, 1, 1)  # beyond what the migration made: nothing exists yet
    early = datetime(2030, 1, 3, 10, tzinfo=UTC)
    stray = datetime(2041, 1, 1, tzinfo=UTC)  # no partition will cover it
    requests, attempts = rows_for([early, early + timedelta(hours=1), stray], "d")
    write(pg_url, requests, attempts)
    assert set(run(where, pg_url).values()) == {"requests_default", "attempts_default"}

    async def twice_at_once() -> list[list[tuple[str, int]]]:
        conns = [await asyncpg.connect(asyncpg_dsn(pg_url)) for _ in range(2)]
        try:
            return list(await asyncio.gather(*(create_ahead(c, 3, today) for c in conns)))
        finally:
            for c in conns:
                await c.close()

    first, second = asyncio.run(twice_at_once())
    expected = [date(2029, 12, 31) + timedelta(days=n) for n in range(5)]
    created = sorted(first + second)
    # Each partition made exactly once between the two, and the two rows of Jan 3 moved.
    assert [name for name, _ in created] == sorted(
        partition_name(t, d) for t in TABLES for d in expected
    )
    assert dict(created) == {
        **{partition_name(t, d): 0 for t in TABLES for d in expected},
        "requests_p20300103": 2,
        "attempts_p20300103": 2,
    }
    placed = run(where, pg_url)
    assert placed["dr0"] == placed["dr1"] == "requests_p20300103"
    assert placed["da0"] == placed["da1"] == "attempts_p20300103"
    assert placed["dr2"] == "requests_default" and placed["da2"] == "attempts_default"
    # Again: nothing to do. And the moved partition has the parent's indexes.
    assert run(lambda c: create_ahead(c, 3, today), pg_url) == []

    async def indexes(conn: Any) -> int:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'requests_p20300103'"
            )
        )

    assert run(indexes, pg_url) == 8  # primary key + seven (the consensus and guard ones partial)

    # The same rows written again (a replay) stay single and in their day.
    write(pg_url, requests, attempts)
    assert (
        run(lambda c: c.fetchval("SELECT count(*) FROM requests WHERE id LIKE 'd%'"), pg_url) == 3
    )


def test_drop_before_removes_exactly_the_days_before_the_cutoff(pg_url: str) -> None:
    days = [date(2030, 3, d) for d in range(1, 6)]
    run(lambda c: ensure_days(c, days), pg_url)
    at = [datetime(d.year, d.month, d.day, 12, tzinfo=UTC) for d in days]
    old_stray, new_stray = datetime(2002, 1, 1, tzinfo=UTC), datetime(2042, 1, 1, tzinfo=UTC)
    requests, attempts = rows_for([*at, old_stray, new_stray], "k")
    write(pg_url, requests, attempts)

    async def listed(conn: Any) -> list[str]:
        return [p.name for t in TABLES for p in await list_partitions(conn, t)]

    before = run(listed, pg_url)
    dropped = run(lambda c: drop_before(c, date(2030, 3, 3)), pg_url)
    # Every day partition before the cutoff (the migration's ones included), nothing else.
    assert sorted(dropped) == sorted(
        n for n in before if not n.endswith("_default") and n[-8:] < "20300303"
    )
    assert sorted(run(listed, pg_url)) == sorted(set(before) - set(dropped))
    left = run(where, pg_url)
    assert sorted(left) == sorted(
        f"k{kind}{i}" for kind in "ra" for i in (2, 3, 4, 6)
    )  # Mar 1 and 2 gone, the old stray deleted from DEFAULT, the future one kept
    assert left["kr6"] == "requests_default"
    assert run(lambda c: drop_before(c, date(2030, 3, 3)), pg_url) == []


def test_keeper_survives_a_dead_database_and_creates_partitions(pg_url: str) -> None:
    dead = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/nothing"

    async def main() -> None:
        broken = PartitionKeeper(dead, retry_s=0.01)
        assert await broken.run_once() is False  # logged, not raised
        keeper = PartitionKeeper(pg_url, ahead_days=40)
        keeper.start()
        try:
            await until(lambda: keeper.runs >= 1, "the keeper's first run")
        finally:
            await keeper.close()

    asyncio.run(main())
    far = datetime.now(UTC).date() + timedelta(days=40)
    names = run(lambda c: list_partitions(c, "attempts"), pg_url)
    assert partition_name("attempts", far) in {p.name for p in names}


def test_cli_maintain_creates_and_lists(pg_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["ledger", "maintain", "--days", "30", "--database-url", pg_url])
    assert result.exit_code == 0, result.output
    far = datetime.now(UTC).date() + timedelta(days=30)
    assert f"created {partition_name('requests', far)}" in result.output
    assert "requests_default holds 0 rows" in result.output
    again = runner.invoke(app, ["ledger", "maintain", "--days", "30", "--database-url", pg_url])
    assert again.exit_code == 0 and "created" not in again.output
    assert "attempts:" in again.output


STATE_CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1", api_key: sim}
deployments:
  a@sim: {provider: sim, model: sim-a}
routes:
  chat: {targets: [a@sim]}
"""


def test_the_gateway_keeps_partitions_created_ahead(pg_url: str, tmp_path: Path) -> None:
    """The process that owns the ledger writer runs the keeper from start-up: a missing
    partition of the coming week is back without anyone running `farebox ledger maintain`,
    and a config reload carries the keeper over rather than starting a second one."""
    ahead = datetime.now(UTC).date() + timedelta(days=AHEAD_DAYS)
    names = {partition_name(t, ahead) for t in TABLES}

    async def drop(conn: Any) -> None:
        for name in names:
            await conn.execute(f"DROP TABLE {name}")

    run(drop, pg_url)

    async def present(conn: Any) -> set[str]:
        return {p.name for t in TABLES for p in await list_partitions(conn, t)} & names

    settings = Settings(database_url=pg_url, spool_dir=str(tmp_path / "spool"), master_key=None)

    async def scenario() -> None:
        state = build_state(settings, parse_config(STATE_CONFIG, "v1.yaml", {}))
        reloaded = None
        try:
            keeper = state.partitions
            assert keeper is not None
            await until(lambda: keeper.runs >= 1, "the keeper's first run at start-up")
            reloaded = build_state(
                settings, parse_config(STATE_CONFIG, "v2.yaml", {}), previous=state
            )
            assert reloaded.partitions is keeper
        finally:
            await state.close(keep=[reloaded] if reloaded is not None else [])
            if reloaded is not None:
                await reloaded.close()

    asyncio.run(scenario())
    assert run(present, pg_url) == names
