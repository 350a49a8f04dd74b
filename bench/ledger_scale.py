"""The ledger at fleet scale (issue 26): a month of attempts straight in Postgres, then every
report timed, the writer's sustained insert rate, and table and index sizes per million rows.

    .venv/bin/python bench/ledger_scale.py                    # 50M -> bench/LEDGER_SCALE.md
    .venv/bin/python bench/ledger_scale.py --attempts 200000  # a try-out -> bench/.work/

A private PostgreSQL (bench/ledger_db.py, durable, tuned as a ledger server would be: see
TUNING) is migrated to the schema of this checkout, then filled for `--month` with
`generate_series` (bench/ledger_scale_sql.py: the mix is described there). When the schema
has rollups (`farebox ledger rollup`), they are rebuilt for the month and the rebuild is
timed. Each report is the CLI a user runs (`farebox usage`, `farebox lcpr --by …`,
`farebox reconcile` against invoices generated from the ledger with one provider's output
tokens 8 % over), timed from spawn to exit, best and median of `--repeat`. The writer's rate
is the gateway's LedgerWriter on `PgLedgerSink` with the rollups' compactor beside it,
counted until the rollups caught up, and `PgLedgerSink.write_batch` alone with batches of
500 requests, for `--writer-seconds` each (bench/ledger_scale_writer.py).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import launch
import ledger_db
import ledger_scale_month
import ledger_scale_report
import report_meta
from ledger_scale_sql import (
    DEPLOYMENTS,
    PROVIDERS,
    ROUTES,
    invoice_sql,
)

BENCH = Path(__file__).resolve().parent
WORK = launch.WORK / "ledger_scale"
FULL = 50_000_000
# A ledger server's settings for this machine (24 GiB): the defaults (128 MB of shared
# buffers, 4 MB of work memory) are a laptop's.
TUNING = {
    "shared_buffers": "'4GB'",
    "work_mem": "'64MB'",
    "maintenance_work_mem": "'1GB'",
    "effective_cache_size": "'16GB'",
    "max_wal_size": "'16GB'",
    "checkpoint_timeout": "'30min'",
    "max_parallel_workers_per_gather": "2",
}
SKEWED = "fireworks"  # the provider whose invoice bills 8 % more output than metered


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--attempts", type=int, default=FULL, help="attempts in the month")
    p.add_argument("--month", default="2026-11", help="YYYY-MM (a past month)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each report")
    p.add_argument("--writer-seconds", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=None, help="default bench/ at full size")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the ledger server's data in this directory: a later run with the same\n"
        "--keep, --month and --attempts migrates it to this checkout's schema and times\n"
        "the reports without generating the month (or rebuilding its rollups) again",
    )
    p.add_argument("--rebuild", action="store_true", help="with --keep: rebuild the rollups")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = BENCH if args.attempts >= FULL else WORK
    return args


def month_bounds(month: str) -> tuple[dt.datetime, dt.datetime]:
    year, mon = (int(x) for x in month.split("-"))
    start = dt.datetime(year, mon, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def start_postgres(keep: Path | None) -> tuple[ledger_db.Postgres, bool]:
    """The ledger server, tuned; and whether it is new (a kept one may hold a month)."""
    if keep is not None:
        pg, fresh = ledger_db.start_kept(keep, durable=True)
    else:
        pg, fresh = ledger_db.start(WORK / "postgres", None, durable=True), True
    for key, value in TUNING.items():
        pg.server.psql(f"ALTER SYSTEM SET {key} = {value}")
    pg.server.stop()
    pg.server.start()
    return pg, fresh


Row = dict[str, Any]


def write_config(path: Path) -> None:
    """Routing YAML naming the generated providers, deployments and routes (reconcile and
    lcpr read the config for providers and GPU hours)."""
    lines = ["auth: none", "providers:"]
    for name, kind in PROVIDERS:
        extra = ", hourly_usd: 3.99, max_concurrency: 64" if kind == "dedicated" else ""
        lines.append(
            f"  {name}: {{kind: {kind}, protocol: openai, "
            f'api_base: "http://127.0.0.1:9/v1", api_key: none{extra}}}'
        )
    lines.append("deployments:")
    for d in range(DEPLOYMENTS):
        provider, kind = PROVIDERS[d % len(PROVIDERS)]
        price = "" if kind == "dedicated" else f", price: {{input: {0.1 * (d + 1):.2f}, "
        price += "" if kind == "dedicated" else f"output: {0.3 * (d + 1):.2f}}}"
        lines.append(f"  dep-{d}: {{provider: {provider}, model: model-{d}{price}}}")
    lines.append("routes:")
    for r in range(ROUTES):
        lines.append(f"  route-{r}: {{strategy: direct, targets: [dep-{r % DEPLOYMENTS}]}}")
    path.write_text("\n".join(lines) + "\n")


async def invoice_rows(url: str, start: dt.datetime, end: dt.datetime) -> list[Any]:
    conn = await asyncpg.connect(ledger_scale_month.dsn(url))
    try:
        return list(await conn.fetch(invoice_sql(start.isoformat(), end.isoformat())))
    finally:
        await conn.close()


def write_invoices(rows: list[Any], out: Path) -> list[str]:
    """One generic-CSV invoice per token-billing provider, priced as the config prices;
    `--invoice provider=file` arguments for reconcile."""
    files: dict[str, list[list[str]]] = {}
    million = Decimal(1_000_000)
    for provider, day, model, uncached, cached, output in rows:
        d = Decimal(int(model.rsplit("-", 1)[1]) + 1)
        if provider == SKEWED:
            output = int(output * 108 // 100)
        lines = files.setdefault(provider, [])
        for token_type, tokens, rate in (
            ("input_uncached", int(uncached), Decimal("0.10")),
            ("input_cached", int(cached), Decimal("0.05")),
            ("output", int(output), Decimal("0.30")),
        ):
            amount = (tokens * rate * d / million).quantize(Decimal("0.000001"))
            lines.append([provider, day, model, token_type, str(tokens), str(amount)])
    args = []
    out.mkdir(parents=True, exist_ok=True)
    for provider, lines in files.items():
        path = out / f"invoice-{provider}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["provider", "date", "model", "token_type", "tokens", "amount_usd"])
            writer.writerows(lines)
        args += ["--invoice", f"{provider}={path}"]
    return args


def farebox(args: list[str], env: dict[str, str], timeout: float = 1800) -> tuple[float, int, str]:
    """Run `farebox …`; (seconds from spawn to exit, exit code, output tail)."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(launch.ROOT / ".venv" / "bin" / "farebox"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=launch.ROOT,
    )
    seconds = time.perf_counter() - t0
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return seconds, done.returncode, " | ".join(tail)[-400:]


def has_command(env: dict[str, str], *words: str) -> bool:
    _, code, _ = farebox([*words, "--help"], env, timeout=60)
    return code == 0


def time_reports(args: argparse.Namespace, env: dict[str, str], invoices: list[str]) -> list[Row]:
    start, _ = month_bounds(args.month)
    since_days = (dt.datetime.now(dt.UTC) - start).days + 1
    reports: list[tuple[str, list[str], set[int]]] = [
        ("usage --by route", ["usage", "--since", f"{since_days}d", "--by", "route"], {0}),
        (
            "usage --by deployment",
            ["usage", "--since", f"{since_days}d", "--by", "deployment"],
            {0},
        ),
        ("usage --by key", ["usage", "--since", f"{since_days}d", "--by", "key"], {0}),
    ]
    for by in ("model", "route", "workload", "key", "workflow"):
        reports.append((f"lcpr --by {by}", ["lcpr", "--month", args.month, "--by", by], {0}))
    # Exit 3: the variance was flagged, as the skewed invoice means it to be.
    out = ["--out", str(WORK / "reconciliation")]  # not the current directory (the default)
    reports.append(("reconcile", ["reconcile", "--month", args.month, *invoices, *out], {0, 3}))
    rows = []
    for name, argv, ok_codes in reports:
        runs = []
        code, tail = 0, ""
        for _ in range(args.repeat):
            seconds, code, tail = farebox(argv, env)
            runs.append(seconds)
            if code not in ok_codes:
                break
        row: Row = {"report": name, "command": "farebox " + " ".join(argv[:4]), "exit": code}
        row |= {"best_s": round(min(runs), 2), "median_s": round(statistics.median(runs), 2)}
        if code not in ok_codes:
            row["error"] = tail
        print(f"ledger-scale: {name}: {row}", flush=True)
        rows.append(row)
    return rows


def writer_rate(url: str, seconds: float, env: dict[str, str]) -> Row:
    argv = [launch.python(), str(BENCH / "ledger_scale_writer.py"), url, str(seconds)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        return {"error": (done.stdout + done.stderr).strip()[-400:]}
    result: Row = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def sizes(url: str, million_attempts: float, million_requests: float) -> list[Row]:
    """Table, index and total size of each ledger table (partitions summed), per million rows
    of its own kind (rollups: per million attempts)."""
    conn = await asyncpg.connect(ledger_scale_month.dsn(url))
    try:
        tables = await conn.fetch(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND (c.relname IN ('requests', 'attempts') OR c.relname LIKE '%rollup%')
               ORDER BY 1"""
        )
        rows = []
        for (name,) in tables:
            heap, index = await conn.fetchrow(
                """SELECT COALESCE(SUM(pg_table_size(relid)), 0),
                          COALESCE(SUM(pg_indexes_size(relid)), 0)
                   FROM (SELECT relid FROM pg_partition_tree($1::regclass)
                         UNION SELECT $1::regclass) AS tree""",
                name,
            )
            heap, index = int(heap), int(index)
            count = await conn.fetchval(f"SELECT count(*) FROM {name}")
            # A kept ledger also holds earlier writer runs' rows: per its own rows.
            own = count / 1e6 if name in ("requests", "attempts") else 0.0
            per = own or (million_requests if name == "requests" else million_attempts)
            rows.append(
                {
                    "table": name,
                    "rows": count,
                    "table_mb": round(heap / 1e6, 1),
                    "index_mb": round(index / 1e6, 1),
                    "table_mb_per_m": round(heap / 1e6 / per, 1),
                    "index_mb_per_m": round(index / 1e6 / per, 1),
                }
            )
    finally:
        await conn.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.time()
    start, end = month_bounds(args.month)
    pg, fresh = start_postgres(args.keep)
    # What a kept server already holds: {"month", "attempts", "loaded", "rollup"}.
    held_file = args.keep / "month.json" if args.keep is not None else None
    held: Row = {}
    if held_file is not None and not fresh and held_file.exists():
        held = json.loads(held_file.read_text())
        if (held.get("month"), held.get("attempts")) != (args.month, args.attempts):
            raise SystemExit(
                f"ledger-scale: {args.keep} holds {held.get('attempts')} "
                f"attempts of {held.get('month')}: another --keep directory"
            )
    try:
        env = {**os.environ, "FAREBOX_DATABASE_URL": pg.url, "FAREBOX_CONFIG": str(WORK / "c.yaml")}
        write_config(WORK / "c.yaml")
        t0 = time.perf_counter()
        if (err := ledger_db.migrate(launch.python(), pg.url, env)) is not None:
            raise SystemExit(f"ledger-scale: migration failed: {err}")
        migrate_s = round(time.perf_counter() - t0, 1)
        print(f"ledger-scale: migrated in {migrate_s} s", flush=True)
        if has_command(env, "ledger", "maintain"):
            farebox(["ledger", "maintain"], env)
            # The month's own days, as a gateway running through it would have made them.
            last = (end - dt.timedelta(days=1)).date().isoformat()
            first = start.date().isoformat()
            if err := ledger_db.partition_days(launch.python(), pg.url, env, first, last):
                raise SystemExit(f"ledger-scale: partitions failed: {err}")
        if held:
            loaded = held["loaded"]
            print(f"ledger-scale: kept month {loaded}", flush=True)
            if loaded["attempts"] < args.attempts and held.get("rollup"):
                loaded = asyncio.run(
                    ledger_scale_month.top_up(pg.url, loaded, args.attempts, start, end)
                )
                print(f"ledger-scale: topped up: {loaded}", flush=True)
                held["loaded"] = loaded
                assert held_file is not None
                held_file.write_text(json.dumps(held))
        else:
            print(
                f"ledger-scale: generating {args.attempts:,} attempts for {args.month}", flush=True
            )
            loaded = asyncio.run(ledger_scale_month.generate(pg.url, args.attempts, start, end))
            print(f"ledger-scale: {loaded}", flush=True)
            if held_file is not None:  # kept before the rollups: a cut run resumes there
                month = {"month": args.month, "attempts": args.attempts}
                held_file.write_text(json.dumps({**month, "loaded": loaded, "rollup": None}))
        rollup: Row = {"available": has_command(env, "ledger", "rollup")}
        if held and held.get("rollup") and not args.rebuild:
            rollup = {**held["rollup"], "kept": True, "migrate_s": migrate_s}
        elif rollup["available"]:
            day = (end - dt.timedelta(days=1)).date().isoformat()
            argv = ["ledger", "rollup", "--rebuild", "--from", start.date().isoformat()]
            seconds, code, tail = farebox([*argv, "--to", day], env, timeout=7200)
            rollup |= {"rebuild_s": round(seconds, 1), "exit": code, "tail": tail}
            print(f"ledger-scale: rollup rebuild {rollup}", flush=True)
        if held_file is not None:
            month = {"month": args.month, "attempts": args.attempts}
            held_file.write_text(json.dumps({**month, "loaded": loaded, "rollup": rollup}))
        invoices = write_invoices(asyncio.run(invoice_rows(pg.url, start, end)), WORK / "inv")
        reports = time_reports(args, env, invoices)
        # Sizes of the generated month, before the writer's rows are added.
        table_sizes = asyncio.run(sizes(pg.url, loaded["attempts"] / 1e6, loaded["requests"] / 1e6))
        writer = writer_rate(pg.url, args.writer_seconds, env)
        print(f"ledger-scale: writer {writer}", flush=True)
        server = {"version": pg.version, "tuning": TUNING}
    finally:
        pg.close()
    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/ledger_scale.py", *sys.argv[1:]]),
        "machine": report_meta.machine(),
        "month": args.month,
        "postgres": server,
        "loaded": loaded,
        "rollup": rollup,
        "reports": reports,
        "writer": writer,
        "sizes": table_sizes,
        "seconds": round(time.time() - started),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ledger_scale.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    markdown = ledger_scale_report.markdown(results)
    (args.out / "LEDGER_SCALE.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
