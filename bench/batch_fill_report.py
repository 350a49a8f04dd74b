"""BATCH.md from batch_fill_bench.py's result: the windows table, the batch, the verdicts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

#: Added-latency p99 may exceed the no-batch windows by their own spread, and at least this.
NOISE_FLOOR_MS = 1.0


def _added(rows: dict[str, dict[str, Any]], name: str, key: str) -> float | None:
    if name not in rows or "direct" not in rows:
        return None
    return float(rows[name][key]) - float(rows["direct"][key])


def verdicts(result: dict[str, Any]) -> tuple[list[str], bool]:
    """PASS/MISS lines and whether all passed."""
    rows = {r["window"]: r for r in result["windows"]}
    lines: list[str] = []
    ok = True

    def say(passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        lines.append(f"- **{'PASS' if passed else 'MISS'}** {text}")

    before, after = _added(rows, "before", "p99_ms"), _added(rows, "after", "p99_ms")
    failed = sum(r["live_failed"] for r in result["windows"])
    say(failed == 0, f"live requests failed: {failed}")
    batch = result.get("batch")
    if batch is None or before is None or after is None:
        return lines, ok
    with_ = _added(rows, "with batch", "p99_ms")
    assert with_ is not None
    band = abs(before - after)
    limit = max(before, after) + max(band, NOISE_FLOOR_MS)
    say(
        with_ <= limit,
        f"live added latency p99 with the batch {with_:+.2f} ms vs without {before:+.2f} ms "
        f"(before) / {after:+.2f} ms (after): within the no-batch windows' spread "
        f"({band:.2f} ms, at least {NOISE_FLOOR_MS:g} ms) above the higher one (≤ {limit:+.2f} ms)",
    )
    queued = rows["with batch"]["gpu_queued"]
    say(
        queued == 0,
        f"requests that waited for a GPU slot while the batch ran: {queued} (peak slots in "
        f"use {rows['with batch']['gpu_peak_in_use']} of {result['config']['slots']})",
    )
    u_before, u_with = rows["before"]["gpu_utilization"], rows["with batch"]["gpu_utilization"]
    say(u_with > u_before, f"dedicated utilization {u_before:.1%} → {u_with:.1%} with the batch")
    say(
        batch["status"] == "completed" and batch["completed"] == batch["lines"],
        f"batch {batch['status']}: {batch['completed']:,} of {batch['lines']:,} lines completed "
        f"({batch['failed']} failed) in {batch['seconds']:.1f} s",
    )
    ledger = batch.get("ledger", {})
    cost = Decimal(str(ledger.get("cost_usd", "0")))
    say(
        ledger.get("path") == "dedicated_fill"
        and cost == 0
        and ledger.get("attempts_200") == batch["completed"],
        f"ledger: path `{ledger.get('path')}`, {ledger.get('attempts', 0):,} attempts with role "
        f"`batch` ({ledger.get('attempts_200', 0):,} answered 200, provider kinds "
        f"{', '.join(ledger.get('provider_kinds', [])) or 'none'}), cost ${cost:.6f}",
    )
    return lines, ok


def render(result: dict[str, Any]) -> str:
    cfg, m = result["config"], result["machine"]
    rows = {r["window"]: r for r in result["windows"]}
    out = [
        "# Batch fill on a dedicated GPU beside live traffic (issue 24, acceptance 2)",
        "",
        f"- **Date:** {result['date']}",
        f"- **Command:** `{result['command']}`",
        f"- **Machine:** {m['cpus']} logical CPUs, shared; load average "
        f"{m['loadavg_start'][0]:.2f} before the run, {m['loadavg_end'][0]:.2f} after; other "
        f"processes used {m['other_processes_cores']:.2f} cores on average during it",
        f"- **GPU (simulator):** `{result['upstream_model']}`: {cfg['slots']} slots, "
        f"{cfg['service_ms']:g} ms per request, FIFO beyond the slots (simulator/gpu.py)",
        f"- **Gateway:** 1 Farebox worker, provider `kind: dedicated`, `max_concurrency: "
        f"{cfg['slots']}`, `hourly_usd: 3.99`, `batch.fill_headroom: {cfg['headroom']}`; "
        f"ledger in {'PostgreSQL ' + str(result['postgres']) if result['postgres'] else 'SQLite'}",
        f"- **CPU layout:** simulator (and Postgres) on CPU {m['pinning']['simulator+postgres']}, "
        f"gateway on CPU {m['pinning']['gateway']}, the load generator floating",
        f"- **Live load:** closed loop, {cfg['clients']} clients = {cfg['load']:.0%} of "
        f"max_concurrency, each sends its next chat request (16 tokens) as soon as the last "
        f"answered; never stopped between windows. An open loop at the same mean rate would "
        f"put more than {cfg['slots']} requests in flight by chance (Poisson arrivals), "
        f"queueing at the GPU with or without a batch; the closed loop holds the 70 % the "
        f"acceptance names, and every request's latency still counts on its own.",
        f"- **Windows:** `direct` = the same load straight to the simulator (the baseline), then "
        f"through Farebox `before` ({cfg['window']:g} s), `with batch` (a {cfg['lines']:,}-line "
        f"batch submitted with the OpenAI SDK `files.create` + `batches.create`, until it "
        f"completes), `after` ({cfg['window']:g} s); {cfg['warmup']:g} s of load before each. "
        f"Added latency = Farebox − direct, same percentile. GPU figures from the simulator's "
        f"`/_stats` (counters restarted at each window's start).",
        "",
        "| window | seconds | live requests | live p50 / p99 (ms) | added p50 / p99 (ms) "
        "| GPU utilization | GPU peak slots in use | requests queued at the GPU "
        "| GPU queue wait p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        a50, a99 = _added(rows, name, "p50_ms"), _added(rows, name, "p99_ms")
        added = "0 (baseline)" if name == "direct" else f"{a50:+.2f} / {a99:+.2f}"
        out.append(
            f"| {name} | {r['seconds']:g} | {r['live_requests']:,} | {r['p50_ms']:.2f} / "
            f"{r['p99_ms']:.2f} | {added} | {r['gpu_utilization']:.1%} | "
            f"{r['gpu_peak_in_use']} of {cfg['slots']} | {r['gpu_queued']} | "
            f"{r['gpu_queue_wait_p99_ms']} |"
        )
    batch = result.get("batch")
    out.append("")
    if batch is not None:
        before, with_ = _added(rows, "before", "p99_ms"), _added(rows, "with batch", "p99_ms")
        after = _added(rows, "after", "p99_ms")
        assert before is not None and with_ is not None and after is not None
        ratio = rows["with batch"]["p99_ms"] / (
            (rows["before"]["p99_ms"] + rows["after"]["p99_ms"]) / 2
        )
        ledger = batch.get("ledger", {})
        out += [
            f"**Batch:** `{batch['id']}`, {batch['status']}, {batch['completed']:,} of "
            f"{batch['lines']:,} lines in {batch['seconds']:.1f} s "
            f"({batch['completed'] / max(batch['seconds'], 1e-9):.0f} lines/s on the GPU's idle "
            f"slots), path `{ledger.get('path')}`; ledger: {ledger.get('attempts', 0):,} "
            f"attempts with role `batch`, cost **${Decimal(str(ledger.get('cost_usd', 0))):.2f}**.",
            "",
            f"**Live p99 with / without the batch:** {rows['with batch']['p99_ms']:.2f} ms vs "
            f"{rows['before']['p99_ms']:.2f} (before) and {rows['after']['p99_ms']:.2f} (after): "
            f"ratio {ratio:.3f} to their mean; added p99 {with_:+.2f} ms vs {before:+.2f} / "
            f"{after:+.2f} ms.",
            "",
        ]
    lines, _ok = verdicts(result)
    out += ["**Verdicts:**", "", *lines, ""]
    out += [
        "Reading it: the batch only runs on slots live traffic leaves free (max_concurrency "
        "minus live in flight minus the headroom, re-read before each line), so with live at "
        f"{cfg['load']:.0%} it gets the rest of the GPU minus the headroom and the utilization "
        "rises by that share. No request waiting for a slot at the simulator means the GPU "
        "never had more work than slots, which is what keeps live latency where it was; when "
        "some did wait, the batch held slots that live requests needed back: a line keeps its "
        "slot for a whole service time, so it must not start in a momentary dip of live "
        "in-flight (closed-loop clients are between two requests for a few ms each). The "
        "batch's attempts cost $0 because a dedicated GPU is paid by the hour (`hourly_usd`, "
        "charged in the reports whether busy or idle).",
        "",
    ]
    return "\n".join(out)
