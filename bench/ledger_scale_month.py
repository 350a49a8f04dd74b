"""The generated month of bench/ledger_scale.py: filled straight in Postgres with
`generate_series` (bench/ledger_scale_sql.py), topped up when a kept month is short of its
target, and counted.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import launch
import ledger_db
from ledger_scale_sql import ATTEMPTS_PER_REQUEST, attempts_sql, requests_sql

Row = dict[str, Any]
CHUNK_REQUESTS = 1_000_000
MARGIN = 1.002
# The pending tables (gateway/ledger/rollup_layout.PENDING) and their timestamp columns.
PENDING_REQUESTS = ("rollup_pending_requests", "received_at")
PENDING_ATTEMPTS = ("rollup_pending_attempts", "started_at")


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def generate(url: str, attempts: int, start: dt.datetime, end: dt.datetime) -> Row:
    """Fill the month: requests numbered 1..R spread evenly over it, in chunks."""
    # A hair over the mean, so a generated month reaches its target (its mix is random).
    requests = max(1, math.ceil(attempts / ATTEMPTS_PER_REQUEST * MARGIN))
    step_us = (end - start).total_seconds() * 1e6 / requests
    conn = await asyncpg.connect(dsn(url))
    t0 = time.perf_counter()
    try:
        await conn.execute("SET synchronous_commit = off")  # a bulk load, not the writer
        for lo in range(1, requests + 1, CHUNK_REQUESTS):
            hi = min(requests, lo + CHUNK_REQUESTS - 1)
            at = start.isoformat()
            await conn.execute(requests_sql(lo, hi, first=1, start=at, step_us=step_us))
            await conn.execute(attempts_sql(lo, hi, first=1, start=at, step_us=step_us))
            done = time.perf_counter() - t0
            print(f"ledger-scale: requests {hi:,}/{requests:,} ({done:.0f} s)", flush=True)
        load_s = time.perf_counter() - t0
        await conn.execute("VACUUM ANALYZE requests")
        await conn.execute("VACUUM ANALYZE attempts")
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM attempts)"
        )
    finally:
        await conn.close()
    return {
        "requests": counts[0],
        "attempts": counts[1],
        "load_s": round(load_s, 1),
        "analyze_s": round(time.perf_counter() - t0 - load_s, 1),
    }


async def top_up(url: str, loaded: Row, attempts: int, start: dt.datetime, end: dt.datetime) -> Row:
    """A kept month short of `attempts` (generated before ATTEMPTS_PER_REQUEST counted the
    cache hits' single attempts): the missing requests, numbered after the month's and
    spread over it, with their attempts, written as the gateway's writer writes them: raw
    rows and their pending rows in one transaction, then compacted into the rollups by the
    gateway's compactor (in a child process: the harness does not import the gateway)."""
    have_r, have_a = loaded["requests"], loaded["attempts"]
    extra = math.ceil((attempts - have_a) / ATTEMPTS_PER_REQUEST * MARGIN)
    lo, hi = have_r + 1, have_r + extra
    step_us = (end - start).total_seconds() * 1e6 / extra
    at = (start + dt.timedelta(microseconds=step_us / 2)).isoformat()
    conn = await asyncpg.connect(dsn(url))
    t0 = time.perf_counter()
    try:
        async with conn.transaction():
            txn = await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")
            for sql, (pending, ts) in (
                (requests_sql(lo, hi, first=lo, start=at, step_us=step_us), PENDING_REQUESTS),
                (attempts_sql(lo, hi, first=lo, start=at, step_us=step_us), PENDING_ATTEMPTS),
            ):
                await conn.execute(
                    f"WITH ins AS ({sql} RETURNING id, {ts}) "
                    f"INSERT INTO {pending} (txn, id, {ts}) SELECT {txn}, id, {ts} FROM ins"
                )
        load_s = time.perf_counter() - t0
        counts = await month_counts(conn, start, end)
    finally:
        await conn.close()
    t1 = time.perf_counter()
    if (err := ledger_db.compact(launch.python(), url, os.environ.copy())) is not None:
        raise SystemExit(f"ledger-scale: compaction of the top-up failed: {err}")
    topped = {"requests": counts[0] - have_r, "attempts": counts[1] - have_a}
    topped |= {"load_s": round(load_s, 1), "compact_s": round(time.perf_counter() - t1, 1)}
    return {**loaded, "requests": counts[0], "attempts": counts[1], "topped_up": topped}


async def month_counts(conn: Any, start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
    """The month's requests and attempts (not the rows a writer run added since, today)."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM requests WHERE received_at >= $1 AND received_at < $2), "
        "(SELECT count(*) FROM attempts WHERE started_at >= $1 AND started_at < $2)",
        start,
        end,
    )
    return int(row[0]), int(row[1])
