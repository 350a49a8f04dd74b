"""LEDGER_SCALE.md from bench/ledger_scale.py's results: the budgets of issue 26 judged on
the figures of one run."""

from __future__ import annotations

from typing import Any

REPORT_BUDGET_S = 3.0
WRITER_BUDGET = 20_000  # attempts/s


def _ok(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def verdicts(res: dict[str, Any]) -> list[str]:
    lines = []
    full = res["loaded"]["attempts"] >= 50_000_000
    scale = "" if full else f" (at {res['loaded']['attempts']:,} attempts, not 50M: a try-out)"
    for row in res["reports"]:
        if "error" in row:
            lines.append(
                f"- **MISS** `{row['command']}`: failed (exit {row['exit']}): {row['error']}"
            )
            continue
        ok = row["median_s"] <= REPORT_BUDGET_S
        lines.append(
            f"- **{_ok(ok)}** `farebox {row['report']}`: {row['median_s']:.2f} s median, "
            f"{row['best_s']:.2f} s best (budget ≤ {REPORT_BUDGET_S:.0f} s){scale}"
        )
    writer = res["writer"]
    if "error" in writer:
        lines.append(f"- **MISS** writer: failed: {writer['error']}")
    else:
        gw, sink = writer["writer"], writer["sink"]
        ok = gw["attempts_per_s"] >= WRITER_BUDGET
        if "commit_attempts_per_s" in gw:  # the compactor beside the writer (revision 0013)
            lines.append(
                f"- **{_ok(ok)}** writer: {gw['attempts_per_s']:,} attempts/s committed by the "
                f"gateway's LedgerWriter fed faster than it writes, counted until the "
                f"rollups' compactor (every {gw['rollup_interval_s']:g} s) caught up "
                f"(batches of {gw['batch_requests_p50']:,.0f} requests, median; budget ≥ "
                f"{WRITER_BUDGET:,}/s); {gw['commit_attempts_per_s']:,}/s committed while fed, "
                f"pending backlog peak {gw['pending_peak']:,} rows, caught up "
                f"{gw['drain_s']} s after the last commit; the sink alone with "
                f"{sink['batch_requests']}-request batches: {sink['attempts_per_s']:,}/s in "
                f"its batch statement (p50 {sink['batch_ms_p50']} ms), "
                f"{sink['with_compaction_attempts_per_s']:,}/s with the compaction of its rows"
            )
        else:  # the rollups upserted in each batch
            lines.append(
                f"- **{_ok(ok)}** writer: {gw['attempts_per_s']:,} attempts/s committed by the "
                f"gateway's LedgerWriter fed faster than it writes (batches of "
                f"{gw['batch_requests_p50']:,.0f} requests, median; budget ≥ "
                f"{WRITER_BUDGET:,}/s); the sink alone with {sink['batch_requests']}-request "
                f"batches: {sink['attempts_per_s']:,}/s (batch p50 {sink['batch_ms_p50']} ms)"
            )
    return lines


def markdown(res: dict[str, Any]) -> str:
    loaded, rollup = res["loaded"], res["rollup"]
    tuning = ", ".join(f"{k} {v.strip(chr(39))}" for k, v in res["postgres"]["tuning"].items())
    out = [
        "# The ledger at fleet scale (issue 26)",
        "",
        f"- **Date:** {res['date']}; `{res['command']}` ({res['seconds']:,} s)",
        f"- **Machine:** {res['machine']}",
        f"- **PostgreSQL:** {res['postgres']['version']}, durable, tuned: {tuning}",
        f"- **Month:** {res['month']}: {loaded['requests']:,} requests, "
        f"{loaded['attempts']:,} attempts generated in SQL in {loaded['load_s']:,} s "
        f"(+ {loaded['analyze_s']} s VACUUM ANALYZE); the mix: bench/ledger_scale_sql.py",
    ]
    if top := loaded.get("topped_up"):
        out.append(
            f"- **Topped up:** the kept month was short of the target; {top['requests']:,} "
            f"requests ({top['attempts']:,} attempts) added over it in {top['load_s']} s with "
            f"their pending rows, as the writer writes them, then compacted into the rollups "
            f"in {top['compact_s']} s (the counts above include them)"
        )
    if rollup.get("available"):
        out.append(
            f"- **Rollups:** rebuilt for the month in {rollup.get('rebuild_s')} s "
            f"(exit {rollup.get('exit')})"
            + (", by an earlier run on this kept month" if rollup.get("kept") else "")
        )
    else:
        out.append("- **Rollups:** none in this schema; the reports read raw rows")
    out += ["", "## Budgets", "", *verdicts(res), "", "## Reports", ""]
    out += ["| report | median s | best s | exit |", "|---|---:|---:|---:|"]
    for row in res["reports"]:
        out.append(
            f"| `farebox {row['report']}` | {row['median_s']} | {row['best_s']} | {row['exit']} |"
        )
    out += ["", "## Sizes", ""]
    out += [
        "| table | rows | table MB | index MB | table MB per M rows | index MB per M rows |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in res["sizes"]:
        out.append(
            f"| {row['table']} | {row['rows']:,} | {row['table_mb']:,} | {row['index_mb']:,} | "
            f"{row['table_mb_per_m']} | {row['index_mb_per_m']} |"
        )
    out += [
        "",
        "Rollup tables' sizes are per million attempts; requests' per million requests.",
        "",
    ]
    return "\n".join(out)
