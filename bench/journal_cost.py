"""Micro-benchmark: what the crash-safe ledger journal adds to one request's hot path.

    .venv/bin/python bench/journal_cost.py [--out bench/JOURNAL.md]

Per request the gateway writes one intent line before the upstream call
(`Meter.intent`: an id, a small dict, orjson, one `write()`) and one outcome line when the
request ends (`Journal.outcome`: the request and attempt rows, orjson, one `write()`); fsync
runs in a background thread. This times exactly those calls for a one-attempt request, with
the fsync thread on (10 ms, the default) and off, against the same loop without a journal,
and reports µs per request as the median of per-batch means (batches of 2,000; 25 batches),
in CPU time of the calling thread (the event loop's): what the journal takes from request
throughput, steadier than wall time on a shared machine; the fsync thread is not counted.
Budget (issue 21): a few µs per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.core.metering import CallContext, Meter, NullLedger, new_attempt_id
from gateway.ledger.journal import Journal
from gateway.ledger.pricing import PriceBook
from gateway.ledger_rows import AttemptRow, RequestRow, new_row
from routing.model import DeploymentSpec, PlannedAttempt

BATCH = 2_000
BATCHES = 25

DEPLOYMENT = DeploymentSpec(
    id="llama-70b@together",
    provider="together",
    provider_kind="serverless",
    protocol="openai",
    upstream_model="meta-llama/Llama-3.3-70B-Instruct",
)
ATTEMPT = PlannedAttempt(DEPLOYMENT, "primary")
NOW = datetime.now(UTC)


def rows(ctx: CallContext, attempt_id: str) -> tuple[RequestRow, list[AttemptRow]]:
    attempt = AttemptRow(
        id=attempt_id,
        request_id=ctx.request_id,
        attempt_no=1,
        role="primary",
        deployment=DEPLOYMENT.id,
        provider=DEPLOYMENT.provider,
        provider_kind=DEPLOYMENT.provider_kind,
        upstream_model=DEPLOYMENT.upstream_model,
        provider_request_id="chatcmpl-abc123def456",
        started_at=NOW,
        ttft_ms=None,
        latency_ms=51.2,
        http_status=200,
        error_class=None,
        input_uncached_tokens=812,
        cached_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=120,
        reasoning_tokens=0,
        token_source="provider",
        cost_usd=Decimal("0.0007132000"),
        price_version="prices.yaml@2026-11-01",
    )
    request = RequestRow(
        id=ctx.request_id,
        received_at=NOW,
        key_id="vk_0123456789",
        route="chat",
        requested_model="chat",
        endpoint="chat/completions",
        workload="support",
        stream=False,
        final_status=200,
        error_class=None,
        final_deployment=DEPLOYMENT.id,
        attempts=1,
        input_uncached_tokens=812,
        cached_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=120,
        reasoning_tokens=0,
        cost_usd=Decimal("0.0007132000"),
        latency_ms=52.0,
        ttft_ms=None,
        decision="cheapest",
        team="support",
    )
    return request, [attempt]


def per_request_us(journal: Journal | None) -> float:
    meter = Meter(PriceBook.__new__(PriceBook), NullLedger(), journal)
    means = []
    for batch in range(BATCHES + 2):
        contexts = [
            CallContext(
                request_id=f"req_{batch}_{n}",
                key_id="vk_0123456789",
                endpoint="chat/completions",
                requested_model="chat",
                stream=False,
                payload={},
                route="chat",
                workload="support",
                body_bytes=3_400,
            )
            for n in range(BATCH)
        ]
        prepared = [rows(ctx, new_attempt_id()) for ctx in contexts]
        started = time.thread_time()
        for ctx, (request, attempts) in zip(contexts, prepared, strict=True):
            meter.intent(ctx, ATTEMPT)
            attempt_id = ctx.intents.pop(id(ATTEMPT), None)  # what Meter._add does
            # The row takes the intent's id, as Meter._add builds it (with and without a
            # journal, so the subtraction leaves the journal's own cost).
            row = new_row(AttemptRow, (attempt_id or "", *attempts[0][1:]))
            if journal is not None:
                journal.outcome(request, [row])
        elapsed = time.thread_time() - started
        if batch >= 2:  # warm-up
            means.append(elapsed / BATCH * 1e6)
        if journal is not None:
            journal.maintain(journal.outcomes)  # the writer's housekeeping, off the clock
    return statistics.median(means)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write a Markdown summary here")
    args = parser.parse_args()
    base = per_request_us(None)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, fsync_ms in (("fsync every 1 s (default)", 1000.0), ("no fsync", 0.0)):
            journal = Journal(Path(tmp) / label.split()[0], fsync_ms=fsync_ms)
            results[label] = per_request_us(journal) - base
            journal.close(journal.outcomes)
    lines = [
        "# Ledger journal: hot-path cost per request",
        "",
        f"- **Date:** {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "- **Command:** `.venv/bin/python bench/journal_cost.py --out bench/JOURNAL.md`",
        "- **What:** one intent line before the upstream call + one outcome line (request "
        "row + attempt row) at the end, for a one-attempt request; the loop without a journal "
        f"({base:.2f} µs) subtracted. Event-loop thread CPU time; median of {BATCHES} batches "
        f"of {BATCH:,}.",
        "",
        "| journal | added µs per request |",
        "|---|---|",
        *[f"| {label} | {us:.2f} |" for label, us in results.items()],
        "",
        "Budget (issue 21): a few µs per request on the hot path.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
