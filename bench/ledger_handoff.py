"""Micro-benchmark: the metering hand-off of one request, start to finish.

    .venv/bin/python bench/ledger_handoff.py [--batches 25] [--batch 2000]

Times, per one-attempt request, what the meter does on the event loop from the call's start
to its end, with everything the production profile has switched on: `CallContext`, the
journal intent before the upstream call (`Meter.intent`), the attempt row
(`Meter.succeeded`, priced), and `Meter.finish` — the request row, the journal outcome line,
the ledger writer's queue, the buffered Prometheus series and the JSON request-log line.
The writer task runs on the same loop with a sink that writes nothing (the database's share
is not this benchmark's), and drains between batches, off the clock; its own cost per
request is reported beside the hot path's.

Figures are CPU time of the calling thread (`time.thread_time`), the median (and the
best) of per-batch means: the log and fsync threads are not counted. Only APIs that every
version of the meter has are used, so the same file measures an older checkout:

    PYTHONPATH=/path/to/older/checkout .venv/bin/python bench/ledger_handoff.py

On a shared machine compare the two back to back, several times; the best batch is the
steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

if not os.environ.get("PYTHONPATH"):  # else: the checkout PYTHONPATH names is measured
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.core.metering import CallContext, Meter
from gateway.ledger.journal import Journal
from gateway.ledger.pricing import LitellmPriceMap, PriceBook
from gateway.ledger.spool import Spool
from gateway.ledger.writer import LedgerWriter
from gateway.ledger_rows import AttemptRow, RequestRow
from gateway.observability import metrics, request_log
from routing.cost import TokenPrice
from routing.model import DeploymentSpec, Plan, PlannedAttempt, Timeouts

DEPLOYMENT = DeploymentSpec(
    "llama-70b@together", "together", "serverless", "openai", "meta-llama/Llama-3.3-70B-Instruct"
)
ATTEMPT = PlannedAttempt(DEPLOYMENT, "primary")
PLAN = Plan(route="chat", strategy="failover", attempts=(ATTEMPT,), timeouts=Timeouts(1, 1, 1))
USAGE = {"prompt_tokens": 812, "completion_tokens": 120, "total_tokens": 932}
PAYLOAD = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}


class NullSink:
    """The database's side of the writer, doing nothing: not what this measures."""

    async def write_batch(self, requests: list[RequestRow], attempts: list[AttemptRow]) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def one_request(meter: Meter, n: int) -> None:
    ctx = CallContext(f"req_{n}", "vk_0123456789", "chat/completions", "chat", False, PAYLOAD)
    ctx.route, ctx.workload, ctx.body_bytes = "chat", "support", 3_400
    meter.intent(ctx, ATTEMPT)
    started = time.perf_counter()
    meter.succeeded(ctx, ATTEMPT, USAGE, "chatcmpl-abc123def456", started)
    meter.finish(ctx, PLAN, 200, None, DEPLOYMENT.id)


async def measure(batches: int, batch: int, tmp: Path) -> tuple[float, float, float]:
    empty = tmp / "litellm.json"
    empty.write_text("{}")
    price = TokenPrice.of(input=Decimal("0.88"), output=Decimal("0.88"), version="bench")
    prices = PriceBook(overrides={DEPLOYMENT.id: price}, litellm=LitellmPriceMap(empty))
    journal = Journal(tmp / "journal", fsync_ms=1000)
    # Batches of 500 rows (the default), held at most 1 ms: drained between timed batches.
    writer = LedgerWriter(NullSink(), Spool(tmp / "spool"), journal=journal, max_delay_s=0.001)
    writer.start()
    meter = Meter(prices, writer, journal)
    hot: list[float] = []
    drain: list[float] = []
    n = 0
    for index in range(batches + 2):
        started = time.thread_time()
        for _ in range(batch):
            n += 1
            one_request(meter, n)
        elapsed = time.thread_time() - started
        started = time.thread_time()
        while writer.queued_rows:  # noqa: ASYNC110 - the writer task drains, off the clock
            await asyncio.sleep(0.001)  # asleep: no CPU counted but the writer's
        drained = time.thread_time() - started
        if index >= 2:  # warm-up: series, price memo, first segment
            hot.append(elapsed / batch * 1e6)
            drain.append(drained / batch * 1e6)
    await writer.close()
    return statistics.median(hot), min(hot), statistics.median(drain)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--batch", type=int, default=2_000)
    args = parser.parse_args()
    metrics.ENABLED = True
    # The request log on, written by its thread to a buffer nobody reads (not counted).
    request_log.configure(True, stream=io.StringIO())
    with tempfile.TemporaryDirectory() as tmp:
        hot, best, drain = asyncio.run(measure(args.batches, args.batch, Path(tmp)))
    request_log.close()
    print(
        f"metering hand-off, one-attempt request: {hot:.2f} µs hot path, best batch "
        f"{best:.2f} (intent + attempt row + finish: journal, queue, metrics, request log); "
        f"{drain:.2f} µs writer task per request; median of {args.batches} x {args.batch:,} "
        f"({Path(metrics.__file__).parents[2]})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
