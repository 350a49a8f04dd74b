"""Time the monthly reports on a synthetic month of ledger rows in a throwaway Postgres.

    .venv/bin/python -m bench.reports_bench --attempts 1000000

Rows are generated inside Postgres (generate_series), spread over 30 days, 12 deployments on
4 providers (one dedicated), with ~8 % retries and ~3 % fallbacks. Then it times
`reconcile` (with a generic invoice for two providers) and `lcpr` by model and by route —
the same code paths as the CLI, aggregating in SQL. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from gateway.config.loading import parse_config
from gateway.ledger.migrate import upgrade
from gateway.ledger.pricing import load_price_book
from gateway.reports.importers import parse_bytes
from gateway.reports.lcpr import lcpr_report
from gateway.reports.reconcile import reconcile
from gateway.reports.store import ReportStore
from tests.services import start_postgres

CONFIG = """
auth: none
providers:
  together: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
  fireworks: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
  openai: {kind: closed_api, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
  gpu: {kind: dedicated, protocol: openai, api_base: "http://127.0.0.1:9/v1", hourly_usd: 3.99,
        max_concurrency: 32}
deployments:
%s
routes:
  chat: {targets: [d0@together]}
"""
PROVIDERS = ["together", "fireworks", "openai", "gpu"]
KINDS = {
    "together": "serverless",
    "fireworks": "serverless",
    "openai": "closed_api",
    "gpu": "dedicated",
}


def _deployments() -> list[tuple[str, str, str]]:
    return [(f"d{i}@{PROVIDERS[i % 4]}", PROVIDERS[i % 4], f"model-{i}") for i in range(12)]


async def _fill(store: ReportStore, attempts: int) -> None:
    deps = _deployments()
    dep_case = " ".join(f"WHEN {i} THEN '{d}'" for i, (d, _, _) in enumerate(deps))
    prov_case = " ".join(f"WHEN {i} THEN '{p}'" for i, (_, p, _) in enumerate(deps))
    kind_case = " ".join(f"WHEN {i} THEN '{KINDS[p]}'" for i, (_, p, _) in enumerate(deps))
    model_case = " ".join(f"WHEN {i} THEN '{m}'" for i, (_, _, m) in enumerate(deps))
    async with store.engine.begin() as conn:
        await conn.execute(
            text(f"""
            INSERT INTO attempts
            SELECT 'a' || g, 'r' || (g / 1.1)::bigint, 1,
                   CASE WHEN g % 12 = 0 THEN 'retry' WHEN g % 33 = 0 THEN 'fallback'
                        ELSE 'primary' END,
                   CASE g % 12 {dep_case} END, CASE g % 12 {prov_case} END,
                   CASE g % 12 {kind_case} END, CASE g % 12 {model_case} END, NULL,
                   timestamptz '2026-11-01' + (g % 2592000) * interval '1 second',
                   50, 400 + g % 300, 200, CASE WHEN g % 25 = 0 THEN 'http_500' END,
                   800 + g % 400, (g % 5) * 100, 0, 150 + g % 100, 0, 'provider',
                   ((800 + g % 400) * 0.00000088 + (150 + g % 100) * 0.00000088)::numeric(18,10),
                   'prices.yaml:x', CASE WHEN g % 7 = 0 THEN 'pass' END, NULL
            FROM generate_series(1, {attempts}) AS g""")
        )
        await conn.execute(
            text(f"""
            INSERT INTO requests (id, received_at, key_id, route, requested_model, endpoint,
                workload, stream, final_status, error_class, final_deployment, attempts,
                input_uncached_tokens, cached_read_tokens, cache_write_tokens, output_tokens,
                reasoning_tokens, cost_usd, latency_ms, ttft_ms, gate_outcome, decision)
            SELECT 'r' || g, timestamptz '2026-11-01' + (g * 1.1 % 2592000) * interval '1 second',
                   'k' || g % 20, 'route-' || g % 6, 'm', 'chat/completions', 'w' || g % 3,
                   false, CASE WHEN g % 40 = 0 THEN 502 ELSE 200 END, NULL, NULL, 1,
                   0, 0, 0, 0, 0, 0.001, 500, 50, NULL, NULL
            FROM generate_series(0, {int(attempts / 1.1)}) AS g""")
        )
        await conn.execute(text("ANALYZE attempts"))
        await conn.execute(text("ANALYZE requests"))


def _invoice() -> bytes:
    lines = ["provider,date,model,token_type,tokens,amount_usd"]
    for day in range(1, 31):
        for _, provider, model in _deployments():
            if provider in ("together", "fireworks"):
                for tt in ("input_uncached", "output"):
                    lines.append(f"{provider},2026-11-{day:02d},{model},{tt},1000000,0.88")
    return ("\n".join(lines) + "\n").encode()


async def main(attempts: int) -> None:
    server = start_postgres(Path(tempfile.mkdtemp()))
    try:
        server.create_database("bench")
        url = server.url("bench")
        upgrade(url)
        deps = "\n".join(f"  {d}: {{provider: {p}, model: {m}}}" for d, p, m in _deployments())
        config = parse_config(CONFIG % deps, "bench.yaml", {})
        book = load_price_book(config)
        store = ReportStore.create(url)
        t0 = time.perf_counter()
        await _fill(store, attempts)
        print(f"generated {attempts:,} attempts in {time.perf_counter() - t0:.1f} s")
        data = _invoice()
        files = [
            parse_bytes(
                p,
                b"\n".join(
                    [data.split(b"\n")[0]]
                    + [line for line in data.split(b"\n")[1:] if line.startswith(p.encode())]
                )
                + b"\n",
                f"{p}.csv",
            )
            for p in ("together", "fireworks")
        ]
        t0 = time.perf_counter()
        result = await reconcile(store, "2026-11", files, config, book)
        print(f"reconcile: {time.perf_counter() - t0:.2f} s ({len(result.cells):,} cells)")
        for by in ("model", "route", "key"):
            t0 = time.perf_counter()
            report = await lcpr_report(store, "2026-11", by, config, book)
            print(
                f"lcpr --by {by}: {time.perf_counter() - t0:.2f} s "
                f"({len(report.segments)} segments)"
            )
        await store.close()
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().attempts))
