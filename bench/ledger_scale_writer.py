"""The ledger writer's sustained insert rate (for bench/ledger_scale.py), two ways:

- `writer`: the gateway's own `LedgerWriter` on a `PgLedgerSink`, fed faster than it can
  write (requests recorded whenever its queue is under 40,000 rows), with the rollups'
  compactor running beside it as in the gateway (`RollupCompactor`, every
  FAREBOX_LEDGER_ROLLUP_INTERVAL_S, default 2 s). `attempts_per_s` is the honest figure:
  attempts committed / wall time from the first batch until the pending tables are empty
  again after the last one (the rollups caught up); `commit_attempts_per_s` is what the
  writer committed while fed (the rollups may lag), `pending_peak` the backlog's peak rows
  (requests + attempts pending), `drain_s` the time from the last commit to caught up.
  Before the compactor (issue 26), the writer upserted the rollups in each batch and
  `attempts_per_s` was the commit rate: 14,577/s on a quiet machine.
- `sink`: `PgLedgerSink.write_batch` alone with fixed batches of BATCH requests (default
  500), attempts per second spent in it (`attempts_per_s`: the batch statement only, the
  rollups left pending), then one flush of what it left pending, timed
  (`with_compaction_attempts_per_s`: attempts / (time in write_batch + the flush)).

    .venv/bin/python bench/ledger_scale_writer.py URL SECONDS [BATCH]   # prints one JSON line

Rows are stamped now (the partitions the gateway keeps ahead take them) and shaped like the
generated month's: 18 % of requests with a second or third attempt, prices and tokens set.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # type: ignore[import-untyped]

from gateway.ledger.pg import asyncpg_dsn
from gateway.ledger.pg_sink import PgLedgerSink
from gateway.ledger.rollup_compactor import RollupCompactor, flush
from gateway.ledger.spool import Spool
from gateway.ledger.writer import LedgerWriter
from gateway.ledger_rows import AttemptRow, RequestRow, new_row

BATCH = int(sys.argv[3]) if len(sys.argv) > 3 else 500
INTERVAL_S = 2.0  # the gateway's default FAREBOX_LEDGER_ROLLUP_INTERVAL_S
_PENDING = (
    "SELECT (SELECT count(*) FROM rollup_pending_requests) "
    "+ (SELECT count(*) FROM rollup_pending_attempts)"
)


RUN = uuid.uuid4().hex[:8]  # ids unique across runs on a kept ledger


def batch(n: int) -> tuple[list[RequestRow], list[AttemptRow]]:
    """BATCH requests and their attempts, built positionally as the gateway's meter builds
    them (gateway/core/metering.py: `new_row`, ids without a uuid call each)."""
    now = dt.datetime.now(dt.UTC)
    requests: list[RequestRow] = []
    attempts: list[AttemptRow] = []
    cost, zero = Decimal("0.0001234500"), Decimal(0)
    for k in range(BATCH):
        rid = f"wr-{RUN}-{n}-{k}"
        # As in the generated month: a key calls 3 routes, a route has its workload.
        route = ((k % 200) * 7 + (k // 200) % 3) % 20
        tries = 1 if k % 100 < 82 else (2 if k % 100 < 97 else 3)
        for a in range(1, tries + 1):
            last = a == tries
            values = (
                f"{rid}-{a}",  # id
                rid,  # request_id
                a,  # attempt_no
                "primary" if a == 1 else "fallback",  # role
                f"dep-{(k + a) % 12}",  # deployment
                "fireworks",  # provider
                "serverless",  # provider_kind
                f"model-{(k + a) % 12}",  # upstream_model
                None,  # provider_request_id
                now,  # started_at
                None,  # ttft_ms
                420.0 if last else 20.0,  # latency_ms
                200 if last else 429,  # http_status
                None if last else "http_429",  # error_class
                800 if last else 0,  # input_uncached_tokens
                0,  # cached_read_tokens
                0,  # cache_write_tokens
                200 if last else 0,  # output_tokens
                0,  # reasoning_tokens
                "provider",  # token_source
                cost if last else zero,  # cost_usd
                "p1-v1",  # price_version
                None,  # gate_outcome
                None,  # drill_id
                None,  # saved_usd
                None,  # units
                None,  # unit
            )
            attempts.append(new_row(AttemptRow, values))
        values = (
            rid,  # id
            now,  # received_at
            f"key-{k % 200}",  # key_id
            f"route-{route}",  # route
            f"route-{route}",  # requested_model
            "chat/completions",  # endpoint
            f"wl-{route % 8}",  # workload
            False,  # stream
            200,  # final_status
            None,  # error_class
            f"dep-{(k + tries) % 12}",  # final_deployment
            tries,  # attempts
            800,  # input_uncached_tokens
            0,  # cached_read_tokens
            0,  # cache_write_tokens
            200,  # output_tokens
            0,  # reasoning_tokens
            cost,  # cost_usd
            440.0,  # latency_ms
            None,  # ttft_ms
            None,  # gate_outcome
            None,  # decision
            f"team-{k % 12}",  # team
            None,  # segment
            None,  # consensus
            None,  # workflow_id
            None,  # batch_id
            None,  # guard
        )
        requests.append(new_row(RequestRow, values))
    return requests, attempts


async def sink_rate(url: str, seconds: float) -> dict[str, float]:
    """Fresh batches for `seconds` of time spent writing; attempts per second of
    `write_batch` (building the rows, the request path's work, is left out of the clock)."""
    sink = PgLedgerSink(url)
    n, rows = 0, 0
    times: list[float] = []
    try:
        await sink.write_batch(*batch(-1))  # connect and create the staging tables
        while sum(times) < seconds:
            requests, attempts = batch(n)
            t = time.perf_counter()
            await sink.write_batch(requests, attempts)
            times.append(time.perf_counter() - t)
            n += 1
            rows += len(attempts)
    finally:
        await sink.close()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        t = time.perf_counter()
        await flush(conn)
        flush_s = time.perf_counter() - t
    finally:
        await conn.close()
    return {
        "batch_requests": BATCH,
        "batches": n,
        "attempts": rows,
        "attempts_per_s": round(rows / sum(times)),
        "flush_s": round(flush_s, 2),
        "with_compaction_attempts_per_s": round(rows / (sum(times) + flush_s)),
        "batch_ms_p50": round(statistics.median(times) * 1e3, 1),
        "batch_ms_max": round(max(times) * 1e3, 1),
    }


class Counting:
    """The sink, counting what it committed and the batches' sizes."""

    def __init__(self, sink: PgLedgerSink) -> None:
        self.sink, self.attempts, self.sizes = sink, 0, [0]
        self.sizes.clear()

    async def write_batch(self, requests: list[RequestRow], attempts: list[AttemptRow]) -> None:
        await self.sink.write_batch(requests, attempts)
        self.attempts += len(attempts)
        self.sizes.append(len(requests))

    async def ping(self) -> None:
        await self.sink.ping()

    async def close(self) -> None:
        await self.sink.close()


async def writer_rate(url: str, seconds: float, spool: Path) -> dict[str, float]:
    """The gateway's LedgerWriter fed faster than it writes, for `seconds`, the compactor
    beside it: attempts committed per second until the rollups caught up (building the
    rows shares its event loop, as in the gateway; see the module docstring)."""
    sink = Counting(PgLedgerSink(url))
    writer = LedgerWriter(sink, Spool(spool), owns_sink=True)
    writer.start()
    compactor = RollupCompactor(url, interval_s=INTERVAL_S)
    probe = await asyncpg.connect(asyncpg_dsn(url))
    peak, n, closed = 0, 0, False
    try:
        await sink.write_batch(*batch(-2))  # connect first
        await flush(probe)  # start from nothing pending
        compactor.start()
        start_attempts, t0 = sink.attempts, time.perf_counter()
        next_probe = t0
        while time.perf_counter() - t0 < seconds:
            if writer.queued_rows < 40_000:
                requests, attempts = batch(n)
                n += 1
                by_request: dict[str, list[AttemptRow]] = {}
                for a in attempts:
                    by_request.setdefault(a.request_id, []).append(a)
                for r in requests:
                    writer.record(r, by_request[r.id])
            if time.perf_counter() >= next_probe:  # the backlog, twice a second
                peak = max(peak, await probe.fetchval(_PENDING))
                next_probe += 0.5
            # Let the writer run. With its queue full, the feeder waits a moment rather
            # than spinning through the event loop: a gateway's loop is idle between
            # requests, and a spinning feeder took most of a core from the database.
            await asyncio.sleep(0 if writer.queued_rows < 40_000 else 0.002)
        fed, fed_wall = sink.attempts - start_attempts, time.perf_counter() - t0
        closed = True
        await writer.close()  # what is queued goes in too, and counts
        committed = time.perf_counter()
        while (pending := await probe.fetchval(_PENDING)) > 0:  # the compactor catches up
            peak = max(peak, pending)
            await asyncio.sleep(0.05)
        done, wall = sink.attempts - start_attempts, time.perf_counter() - t0
        drain = time.perf_counter() - committed
    finally:
        if not closed:
            await writer.close()
        await compactor.close()
        await probe.close()
    return {
        "attempts": done,
        "attempts_per_s": round(done / wall),
        "commit_attempts_per_s": round(fed / fed_wall),
        "pending_peak": peak,
        "drain_s": round(drain, 2),
        "rollup_interval_s": INTERVAL_S,
        "batch_requests_p50": statistics.median(sink.sizes[1:] or [0]),
        "spooled_rows": writer.rows_spooled,
    }


async def run(url: str, seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as spool:
        writer = await writer_rate(url, seconds, Path(spool))
    return {"writer": writer, "sink": await sink_rate(url, seconds)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(sys.argv[1], float(sys.argv[2])))))
