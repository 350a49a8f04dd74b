"""Repairing and creating rollups (gateway/ledger/rollups.py) on both dialects: migration
0012 fills them from a ledger populated at 0011, and `farebox ledger rollup --rebuild` puts
back spoiled rows but refuses hours whose raw rows retention dropped. The generated month
and the comparisons are test_ledger_rollups.py's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from gateway.ledger.migrate import upgrade
from gateway.ledger.models import attempts_table, requests_table
from gateway.ledger.models_batches import batches_table
from gateway.ledger.repository import LedgerRepository
from gateway.ledger_rows import ATTEMPT_FIELDS, REQUEST_FIELDS
from gateway.reports.store import ReportStore
from tests.integration.test_ledger_repository import with_repo
from tests.integration.test_ledger_rollups import (
    DAY,
    MONTH,
    _quantum,
    batch_rows,
    generate,
    reports,
    snapshot,
    sums_match,
    write,
)
from tests.services import PostgresServer


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        db = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        upgrade(db)
        return db
    return str(request.getfixturevalue("pg_url"))


def _plain_rows(rows: list[Any], fields: tuple[str, ...], sqlite: bool) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        item = dict(zip(fields, row, strict=True))
        for key in ("received_at", "started_at"):
            if key in item and sqlite:
                item[key] = item[key].astimezone(UTC).replace(tzinfo=None)
        out.append(item)
    return out


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_migrations_backfill_rollups_from_0011(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A ledger populated at 0011 (rows written as the 0011 writer wrote them: no rollups),
    upgraded to the head (0014 builds the rollups 0012 created): every rollup-based report
    equals the raw-row report."""
    if dialect == "sqlite":
        db = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        name = f"m_{uuid.uuid4().hex[:12]}"
        server.create_database(name)
        request.addfinalizer(lambda: server.drop_database(name))
        db = server.url(name)
    upgrade(db, "0011")
    ledger = generate(800, _quantum(db), seed=12)

    async def populate(repo: LedgerRepository) -> None:
        sqlite = repo.engine.dialect.name == "sqlite"
        async with repo.engine.begin() as conn:
            reqs = [r for r, _ in ledger]
            atts = [a for _, ats in ledger for a in ats]
            # Only the columns each table has at 0011 (fields added since hold None here).
            for table, rows, fields in (
                (requests_table, reqs, REQUEST_FIELDS),
                (attempts_table, atts, ATTEMPT_FIELDS),
            ):
                have = await conn.run_sync(
                    lambda c, t=table.name: {col["name"] for col in inspect(c).get_columns(t)}
                )
                plain = _plain_rows(rows, fields, sqlite)
                await conn.execute(
                    table.insert(), [{k: v for k, v in r.items() if k in have} for r in plain]
                )
            batches = batch_rows()
            if sqlite:
                for row in batches:
                    row["created_at"] = row["created_at"].replace(tzinfo=None)
            await conn.execute(batches_table.insert(), batches)
            assert "rollup_requests" not in await conn.run_sync(
                lambda c: inspect(c).get_table_names()
            )

    with_repo(db, populate)
    upgrade(db)

    async def check(repo: LedgerRepository) -> None:
        rolled, raw = ReportStore(repo.engine), ReportStore(repo.engine, rollups=False)
        got, want = await reports(rolled, MONTH), await reports(raw, MONTH)
        assert got == want
        await sums_match(repo)
        async with repo.engine.connect() as conn:
            n = (await conn.execute(text("SELECT count(*) FROM rollup_attempts"))).scalar()
        assert n and n > 0

    with_repo(db, check)


def test_cli_rebuild_repairs_a_window(url: str) -> None:
    """`farebox ledger rollup --rebuild --from DAY --to DAY` puts back rollup rows spoiled by
    hand (a day's costs changed, another day's rows deleted) and touches nothing else."""
    from typer.testing import CliRunner

    from gateway.cli.main import app

    ledger = generate(600, _quantum(url), seed=5)

    async def populate(repo: LedgerRepository) -> dict[str, list[Any]]:
        await write(url, repo, ledger)
        before = await snapshot(repo)
        async with repo.engine.begin() as conn:
            await conn.execute(
                text("UPDATE rollup_attempts SET cost = cost + 1 WHERE hour >= :lo AND hour < :hi"),
                {"lo": _bind(DAY[0], url), "hi": _bind(DAY[1], url)},
            )
            await conn.execute(
                text("DELETE FROM rollup_requests WHERE hour >= :lo"),
                {"lo": _bind(DAY[1], url)},
            )
        assert await snapshot(repo) != before
        return before

    before = with_repo(url, populate)
    for days in (["--from", "2025-11-17", "--to", "2025-11-17"], ["--from", "2025-11-18"]):
        result = CliRunner().invoke(
            app, ["ledger", "rollup", "--rebuild", *days, "--database-url", url]
        )
        assert result.exit_code == 0, result.output
        assert "rebuilt the rollups of 2025-11-1" in result.output
    assert with_repo(url, snapshot) == before

    # Retention drops a day of raw rows: its rollups are now its only record, so a rebuild
    # over it refuses and changes nothing; one that leaves it out still runs.
    async def drop_day(repo: LedgerRepository) -> None:
        lo, hi = _bind(DAY[0], url), _bind(DAY[1], url)
        async with repo.engine.begin() as conn:
            for table, column in (("attempts", "started_at"), ("requests", "received_at")):
                await conn.execute(
                    text(f"DELETE FROM {table} WHERE {column} >= :lo AND {column} < :hi"),
                    {"lo": lo, "hi": hi},
                )

    with_repo(url, drop_day)
    refused = CliRunner().invoke(app, ["ledger", "rollup", "--rebuild", "--database-url", url])
    assert refused.exit_code == 1
    assert "nothing rebuilt" in refused.output and "2025-11-17 00" in refused.output
    assert with_repo(url, snapshot) == before
    result = CliRunner().invoke(
        app, ["ledger", "rollup", "--rebuild", "--from", "2025-11-19", "--database-url", url]
    )
    assert result.exit_code == 0, result.output


def _bind(when: datetime, url: str) -> Any:
    # SQLite keeps timestamps as SQLAlchemy's offset-less text.
    return when.strftime("%Y-%m-%d %H:%M:%S.%f") if url.startswith("sqlite") else when
