"""Rollups (gateway/ledger/rollups.py) on both dialects: a generated month written through
the real writer sinks in batches, some replayed and some late, then every report read from
the rollups equals the same report read from the raw rows, cell by cell; the rollups' sums
equal the raw sums to the nano-dollar; a rebuild gives the same rollups; four concurrent
writers neither deadlock nor drift. Migration 0012 and `farebox ledger rollup --rebuild`
are in test_ledger_rollups_repair.py."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from gateway.ledger.migrate import upgrade
from gateway.ledger.models import attempts_table, requests_table
from gateway.ledger.models_batches import batches_table
from gateway.ledger.models_rollups import ROLLUP_TABLES
from gateway.ledger.pg_sink import PgLedgerSink
from gateway.ledger.repository import LedgerRepository
from gateway.ledger.rollups import flush_pending, rebuild
from gateway.ledger_rows import AttemptRow, RequestRow
from gateway.reports.segments import SEGMENTS
from gateway.reports.store import ReportStore
from routing.batch_paths import PATHS
from tests.integration.test_ledger_repository import with_repo
from tests.ledger_rows import attempt_row, request_row

MONTH = (datetime(2025, 11, 1, tzinfo=UTC), datetime(2025, 12, 1, tzinfo=UTC))
DAY = (datetime(2025, 11, 17, tzinfo=UTC), datetime(2025, 11, 18, tzinfo=UTC))
NANO = Decimal("1e-9")
# (deployment, provider, provider kind, upstream model)
DEPLOYMENTS = (
    ("fast@sim", "sim", "serverless", "m-fast"),
    ("big@gpu", "gpu", "dedicated", "m-big"),
    ("gpt@openai", "openai", "closed_api", "gpt-x"),
)
ROUTES = {"chat": ("fast@sim", "big@gpu"), "extract": ("gpt@openai", "fast@sim")}


def _cost(rng: random.Random, quantum: Decimal) -> Decimal:
    return Decimal(rng.randint(1, 5_000_000)) * quantum


def generate(n: int, quantum: Decimal, seed: int = 26) -> list[tuple[RequestRow, list[AttemptRow]]]:
    """`n` requests spread over November 2025 (a few run over into December): retries,
    fallbacks, hedges, repairs after a failed gate, response-cache hits, batch lines,
    rejected requests without attempts, broken streams, unpriced attempts, two price
    versions, NULL keys and workloads, attempts crossing hour and day boundaries. Costs are
    multiples of `quantum`: 1e-10 (the ledger's scale) on Postgres; 1e-9 on SQLite, which sums
    NUMERIC as REAL, so that its sums round to the nano-dollar without a tie."""
    rng = random.Random(seed)
    start, span = MONTH[0], (MONTH[1] - MONTH[0]).total_seconds() + 3 * 3600
    out = [
        _request(rng, i, start + timedelta(seconds=rng.uniform(0, span)), quantum) for i in range(n)
    ]
    out.sort(key=lambda item: item[0].received_at)
    return out


def _request(
    rng: random.Random, i: int, received: datetime, quantum: Decimal
) -> tuple[RequestRow, list[AttemptRow]]:
    route = rng.choice(tuple(ROUTES))
    rid = f"r{i:05d}"
    kind = rng.choices(
        ("ok", "retry", "fallback", "hedge", "gate", "hit", "batch", "rejected", "broken"),
        weights=(30, 10, 8, 4, 8, 6, 6, 4, 4),
    )[0]
    version = "v1" if received < datetime(2025, 11, 14, tzinfo=UTC) else "v2"
    at = received + timedelta(milliseconds=rng.randint(1, 900))
    attempts: list[AttemptRow] = []

    def attempt(dep: str, role: str, **kw: Any) -> None:
        nonlocal at
        _, provider, provider_kind, model = next(d for d in DEPLOYMENTS if d[0] == dep)
        priced = rng.random() > 0.1 and provider_kind != "dedicated"
        fields: dict[str, Any] = {
            "attempt_no": len(attempts) + 1,
            "role": role,
            "deployment": dep,
            "provider": provider,
            "provider_kind": provider_kind,
            "upstream_model": model,
            "started_at": at,
            # Eighths of a millisecond: exact in binary, so the raw float sums and the
            # rollups' NUMERIC sums agree to the last digit (with arbitrary floats the raw
            # SUM(double) is the inexact one, off in its 12th significant digit or so).
            "latency_ms": rng.randint(40, 4_000_000) / 8,
            "input_uncached_tokens": rng.randint(0, 4000),
            "cached_read_tokens": rng.choice((0, 0, rng.randint(1, 2000))),
            "cache_write_tokens": rng.choice((0, 0, 0, rng.randint(1, 500))),
            "output_tokens": rng.randint(0, 1500),
            "reasoning_tokens": rng.choice((0, rng.randint(0, 300))),
            "cost_usd": _cost(rng, quantum) if priced else None,
            "price_version": version if priced else None,
        }
        fields.update(kw)
        attempts.append(attempt_row(f"{rid}a{len(attempts) + 1}", rid, **fields))
        # The next attempt: usually seconds later, sometimes over an hour (a slow retry).
        at += timedelta(seconds=rng.choice((1, 2, 5, 30, 4000)))

    primary, other = ROUTES[route]
    final: str | None = primary
    status, error, gate = 200, None, None
    batch_id = None
    if kind == "ok":
        attempt(primary, "primary")
    elif kind == "retry":
        attempt(primary, "primary", error_class="http_500", http_status=500)
        attempt(primary, "retry")
    elif kind == "fallback":
        attempt(primary, "primary", error_class="timeout", http_status=None)
        attempt(primary, "retry", error_class="timeout", http_status=None)
        attempt(other, "fallback")
        if rng.random() < 0.3:
            attempt(other, "retry")
        final = other
    elif kind == "hedge":
        attempt(primary, "primary", error_class="cancelled")
        attempt(other, "hedge")
        final = other
    elif kind == "gate":
        attempt(primary, "primary", gate_outcome="json_schema")
        passed = rng.random() < 0.6
        attempt(primary, "repair", gate_outcome="pass" if passed else "json_schema")
        gate = "pass" if passed else "json_schema"
    elif kind == "hit":
        attempt(
            primary,
            "cache_hit",
            cost_usd=Decimal(0),
            saved_usd=_cost(rng, quantum),
            token_source="cache",
            latency_ms=0.0,
        )
    elif kind == "batch":
        batch_id = f"batch_{i % 7}"
        attempt(primary, "batch")
    elif kind == "rejected":
        final, status, error = None, 429, "rate_limited"
    else:  # broken mid-stream: 200 went out, the stream did not finish
        attempt(primary, "primary", error_class="stream_error")
        error = "stream_error"
    costs = [a.cost_usd for a in attempts if a.cost_usd is not None]
    key = rng.choice((None, "k1", "k2", "k3"))
    # Workflows: an agent's session of a few calls over three hours (so across hours, and
    # several calls in one hour), or a long one that lasts the month.
    tag = rng.random()
    workflow = None
    if tag < 0.3:
        workflow = f"wf-{key}-{int(received.timestamp()) // 10800}"
    elif tag < 0.4:
        workflow = f"wf-long-{rng.randint(0, 19)}"
    request = request_row(
        rid,
        received_at=received,
        route=route,
        requested_model=route,
        key_id=key,
        workload=rng.choice((None, "support", "etl")),
        workflow_id=workflow,
        final_status=status,
        error_class=error,
        gate_outcome=gate,
        final_deployment=final,
        attempts=len(attempts),
        cost_usd=sum(costs, Decimal(0)) if costs else None,
        batch_id=batch_id,
    )
    return request, attempts


def batch_rows() -> list[dict[str, Any]]:
    """The batches the generated batch lines belong to, through every path: reconciliation
    bills those through a provider's batch API apart."""
    return [
        {
            "id": f"batch_{n}",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-x",
            "completion_window": "24h",
            "status": "completed",
            "path": PATHS[n % len(PATHS)],
            "created_at": MONTH[0],
            "total": 0,
            "completed": 0,
            "failed": 0,
        }
        for n in range(7)
    ]


def batches(
    ledger: list[tuple[RequestRow, list[AttemptRow]]], seed: int = 7
) -> list[tuple[list[RequestRow], list[AttemptRow]]]:
    """Whole requests in batches, in a shuffled order (so many arrive hours after their
    hour), a fifth of them written twice. The first half of the month in consecutive runs
    of 150 requests; the second half interleaved (request i in batch i mod 8), so every
    hour's rollup rows are added to by several batches."""
    rng = random.Random(seed)
    half = len(ledger) // 2
    chunks = [ledger[lo : min(lo + 150, half)] for lo in range(0, half, 150)]
    chunks += [ledger[half:][j::8] for j in range(8)]
    out = [([r for r, _ in c], [a for _, atts in c for a in atts]) for c in chunks]
    rng.shuffle(out)
    return out + [b for b in out if rng.random() < 0.2]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        db = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        upgrade(db)
        return db
    return str(request.getfixturevalue("pg_url"))


async def write(url: str, repo: LedgerRepository, ledger: list[Any]) -> None:
    """Through the writers' own sinks: on Postgres the COPY sink (and, every other batch,
    the repository's COPY path); the last batch's requests as batch lines, in a caller's
    transaction (LedgerRepository.insert_on)."""
    todo = batches(ledger)
    # A batch exists before its lines are written (gateway/batch/store.py creates it).
    async with repo.engine.begin() as conn:
        await conn.execute(batches_table.insert(), batch_rows())
    sink = PgLedgerSink(url) if repo.engine.dialect.name == "postgresql" else None
    try:
        for n, (reqs, atts) in enumerate(todo[:-1]):
            if sink is not None and n % 2 == 0:
                await sink.write_batch(reqs, atts)
            else:
                await repo.write_batch(reqs, atts)
    finally:
        if sink is not None:
            await sink.close()
    reqs, atts = todo[-1]
    for _ in range(2):  # a replay in a caller's transaction adds nothing either
        async with repo.engine.begin() as conn:
            await repo.insert_on(conn, reqs, atts)


def _quantum(url: str) -> Decimal:
    return Decimal("1e-9") if url.startswith("sqlite") else Decimal("1e-10")


def _norm(value: Any, sqlite: bool) -> Any:
    """Exact on Postgres; on SQLite (which sums NUMERIC as REAL) to the nano-dollar."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return tuple(_norm(getattr(value, f.name), sqlite) for f in dataclasses.fields(value))
    if isinstance(value, Decimal):
        return value.quantize(NANO) if sqlite else value.normalize()
    if isinstance(value, list | tuple):
        return [_norm(v, sqlite) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v, sqlite) for k, v in value.items()}
    return value


async def reports(store: ReportStore, window: tuple[datetime, datetime]) -> dict[str, Any]:
    sqlite = not store._pg
    found: dict[str, Any] = {}
    for by in SEGMENTS:
        totals, daily = await store.segment_report(by, *window)
        found[f"lcpr {by}"] = sorted(_norm(totals, sqlite))
        found[f"daily {by}"] = sorted(_norm(daily, sqlite))
    found["ledger days"] = sorted(_norm(await store.ledger_days(*window), sqlite))
    found["provider batch days"] = sorted(
        _norm(await store.ledger_days(*window, provider_batch=True), sqlite)
    )
    found["spend by role"] = _norm(await store.spend_by_role(*window), sqlite)
    found["price versions"] = await store.price_versions(*window)
    found["dedicated use"] = sorted(_norm(await store.dedicated_use(*window), sqlite))
    found["answered"] = _norm(await store.answered_requests(*window), sqlite)
    found["request groups"] = sorted(_norm(await store.request_groups(*window), sqlite), key=repr)
    found["dedicated busy"] = sorted(_norm(await store.dedicated_busy(*window), sqlite))
    for deferrable in ([], ["support", "etl"]):
        spend = await store.spend_groups(*window, deferrable)
        found[f"spend groups {deferrable}"] = sorted(_norm(spend, sqlite), key=repr)
    for group in ("route", "workload"):
        found[f"workflows {group}"] = _norm(await store.workflow_buckets(group, *window), sqlite)
    return found


async def snapshot(repo: LedgerRepository) -> dict[str, list[Any]]:
    """Every rollup row, after a flush of what the Postgres writer left pending (a reader
    of the rollups, as the reports are)."""
    sqlite = repo.engine.dialect.name == "sqlite"
    async with repo.engine.connect() as conn:
        await flush_pending(conn)
        return {
            t.name: sorted(
                [
                    _norm(
                        tuple(
                            Decimal(str(v)) if c == "busy_ms" else v
                            for c, v in zip(t.columns.keys(), row, strict=True)
                        ),
                        sqlite,
                    )
                    for row in (await conn.execute(select(t))).all()
                ],
                key=repr,
            )
            for t in ROLLUP_TABLES
        }


def test_rollup_reports_equal_raw_reports(url: str) -> None:
    ledger = generate(2500, _quantum(url))

    async def main(repo: LedgerRepository) -> None:
        await write(url, repo, ledger)
        rolled, raw = ReportStore(repo.engine), ReportStore(repo.engine, rollups=False)
        # Whole days (rollup_requests_daily), one day, and whole hours with ragged days at
        # both ends (the days' rows and the hourly rows around them).
        ragged = (MONTH[0] + timedelta(hours=5), MONTH[1] - timedelta(hours=7))
        two_months = (MONTH[0], datetime(2026, 1, 1, tzinfo=UTC))  # workflows' months added
        for window in (MONTH, DAY, ragged, two_months):
            got, want = await reports(rolled, window), await reports(raw, window)
            for name in want:
                assert got[name] == want[name], f"{name} over {window[0]:%Y-%m-%d}"
            assert want["lcpr model"] and want["ledger days"] and want["dedicated use"]
            assert want["provider batch days"] and want["spend groups []"]
            assert any(b[1] > 1 for b in want["workflows route"])  # multi-call workflows
        sqlite = not rolled._pg
        for since in (MONTH[0], DAY[0] + timedelta(minutes=37)):  # whole hours; a ragged one
            for by in ("route", "key", "deployment"):
                lines = await repo.usage(since, by)
                assert lines == sorted(lines, key=lambda u: (-u.cost_usd, u.group is None))
                assert sorted(_norm(lines, sqlite), key=repr) == sorted(
                    _norm(await repo.usage(since, by, rollups=False), sqlite), key=repr
                ), f"usage by {by} since {since}"
        # Every generated row was written once, however many times its batch was.
        assert await repo.counts() == (len(ledger), sum(len(a) for _, a in ledger))
        await sums_match(repo)
        before = await snapshot(repo)
        # A day; whole months; ten days (workflows found by a join, not an array); hours
        # that are not whole days (each day's row from the raw rows); then all time.
        hours = (DAY[0] + timedelta(hours=5), DAY[1] + timedelta(hours=3))
        ten_days = (DAY[0] - timedelta(days=5), DAY[1] + timedelta(days=4))
        for window in (DAY, MONTH, ten_days, hours):
            async with repo.engine.begin() as conn:
                await rebuild(conn, *window)
            assert await snapshot(repo) == before, f"rebuilt {window}"
        async with repo.engine.begin() as conn:
            await rebuild(conn)
        assert await snapshot(repo) == before

    with_repo(url, main)


async def sums_match(repo: LedgerRepository) -> None:
    """Each rollup table's sums are the raw rows' sums (to the nano-dollar)."""
    sqlite = repo.engine.dialect.name == "sqlite"
    a, r = attempts_table.c, requests_table.c
    q = {t.name: t.c for t in ROLLUP_TABLES}
    async with repo.engine.connect() as conn:
        await flush_pending(conn)

        async def one(*columns: Any) -> list[Any]:
            row = (await conn.execute(select(*columns))).one()
            return [_norm(Decimal(str(v or 0)), sqlite) for v in row]

        raw_cost, raw_saved, n = await one(
            func.sum(a.cost_usd), func.sum(a.saved_usd), func.count(a.id)
        )
        assert raw_cost > 0
        for table in ("rollup_requests", "rollup_deployments", "rollup_attempts"):
            c = q[table]
            assert await one(func.sum(c.cost), func.sum(c.saved), func.sum(c.attempts)) == [
                raw_cost,
                raw_saved,
                n,
            ], table
        requests = await one(func.count(r.id))
        assert await one(func.sum(q["rollup_requests"].requests)) == requests
        tokens = a.input_uncached_tokens + a.cached_read_tokens + a.cache_write_tokens
        dedicated = await one(
            func.sum(tokens + a.output_tokens).filter(
                a.provider_kind == "dedicated", a.role != "cache_hit"
            )
        )
        assert await one(func.sum(q["rollup_dedicated"].tokens)) == dedicated


def test_concurrent_writers_keep_rollups_exact(pg_url: str) -> None:
    """Four Postgres sinks (four replicas) write a month at once. Every batch spans the whole
    month, so concurrent batches upsert the same rollup rows, and every batch is written
    twice, by two sinks: the rollups equal the raw rows and, because every writer upserts
    in the same order, the server saw no deadlock at all (not even one the retry hid)."""
    import asyncio

    ledger = generate(3000, _quantum(pg_url), seed=9)
    spread = [ledger[j::40] for j in range(40)]
    once = [([r for r, _ in b], [a for _, atts in b for a in atts]) for b in spread]
    todo = once + once[20:] + once[:20]

    async def main(repo: LedgerRepository) -> None:
        sinks = [PgLedgerSink(pg_url) for _ in range(4)]

        async def replica(n: int) -> None:
            for reqs, atts in todo[n::4]:
                await sinks[n].write_batch(reqs, atts)

        try:
            await asyncio.gather(*(replica(n) for n in range(4)))
        finally:
            for sink in sinks:
                await sink.close()
        assert await repo.counts() == (len(ledger), sum(len(a) for _, a in ledger))
        rolled, raw = ReportStore(repo.engine), ReportStore(repo.engine, rollups=False)
        assert await reports(rolled, MONTH) == await reports(raw, MONTH)
        await sums_match(repo)
        async with repo.engine.connect() as conn:
            deadlocks = await conn.scalar(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            )
        assert deadlocks == 0

    with_repo(pg_url, main)
