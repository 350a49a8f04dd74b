"""Aggregation (medians over interleaved rounds) and the RESULTS.md / results.json output."""

from __future__ import annotations

import statistics
from typing import Any

import report_prod
from report_meta import dist_version, meta, postgres_meta
from report_table import LABEL, fmt, table
from targets import Target

__all__ = ["build", "dist_version", "markdown", "meta", "postgres_meta"]

ORDER = [
    "direct",
    "passthrough",
    "farebox-off",
    "farebox-pg",
    "farebox-sqlite",
    "farebox-prod",
    "farebox-prod-2w",
    "farebox-prod-exact",
    "litellm",
]
BARE = ["direct", "passthrough", "farebox-off", "farebox-pg", "farebox-sqlite", "litellm"]
FAREBOX = ["farebox-off", "farebox-pg", "farebox-sqlite"]
LEDGER_ON = ["farebox-pg", "farebox-sqlite"]
MIB = 1024 * 1024


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def _summary(rows: list[dict[str, Any]], direct: list[dict[str, Any]]) -> dict[str, Any]:
    by_round = {r["round"]: r for r in direct}
    for r in rows:  # added latency is paired with direct's run of the same round
        d = by_round.get(r["round"])
        r["added_p50_ms"] = round(r["p50_ms"] - d["p50_ms"], 3) if d else None
        r["added_p99_ms"] = round(r["p99_ms"] - d["p99_ms"], 3) if d else None
    keys = [
        "ok_rps",
        "p50_ms",
        "p99_ms",
        "cpu_us_per_req",
        "sim_cpu_us_per_req",
        "db_cpu_us_per_req",
        "redis_cpu_us_per_req",
        "added_p50_ms",
        "added_p99_ms",
    ]
    out: dict[str, Any] = {k: _median(rows, k) for k in keys}
    out["requests"] = sum(r["requests"] for r in rows)
    out["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in rows)
    return out


def build(
    meta: dict[str, Any],
    targets: list[Target],
    raw: dict[str, dict[str, list[Any]]],
    scenarios: list[dict[str, Any]],
) -> dict[str, Any]:
    direct_raw = raw.get("direct", {})
    out_targets: dict[str, Any] = {}
    for t in sorted(targets, key=lambda t: ORDER.index(t.name)):
        scen = {}
        for key, rows in raw.get(t.name, {}).items():
            scen[key] = {"summary": _summary(rows, direct_raw.get(key, [])), "rounds": rows}
        out_targets[t.name] = {
            "available": t.available,
            "note": t.note,
            "remark": t.remark,
            "version": t.version,
            "startup_s": None if t.startup_s is None else round(t.startup_s, 3),
            "idle_rss_mib": None if t.idle_rss is None else round(t.idle_rss / MIB, 1),
            "loaded_rss_mib": None if t.loaded_rss is None else round(t.loaded_rss / MIB, 1),
            "ledger": t.ledger or None,
            "ledger_check": t.ledger_check,
            "workers": t.workers,
            "idle_rss_by_process_mib": [
                [pid, cmd, round(rss / MIB, 1)] for pid, cmd, rss in t.idle_rss_procs or []
            ],
            "redis": bool(t.redis_pid),
            "burst": t.burst,
            "scenarios": scen,
        }
    meta["versions"]["litellm"] = out_targets.get("litellm", {}).get("version") or "skipped"
    other = [r["other_cores"] for rows in raw.values() for rs in rows.values() for r in rs]
    meta["noise"] = {
        "other_cores_median": round(statistics.median(other), 2) if other else None,
        "other_cores_max": max(other) if other else None,
    }
    return {
        "meta": meta,
        "scenarios": scenarios,
        "targets": out_targets,
        "ratios": {**_ratios(out_targets), **report_prod.ratios(out_targets)},
    }


def _rps(targets: dict[str, Any], name: str, key: str) -> float | None:
    """The median, also for a target that died in a later scenario (its note says so)."""
    t = targets.get(name)
    if not t or key not in t["scenarios"]:
        return None
    value: float | None = t["scenarios"][key]["summary"]["ok_rps"]
    return value


def _ratios(targets: dict[str, Any]) -> dict[str, Any]:
    """Every Farebox target vs LiteLLM and vs the passthrough; ledger cost = 1 − rps(ledger
    on) / rps(ledger off), from the medians and, paired, per interleaved round."""
    out: dict[str, Any] = {}
    for fb in (n for n in FAREBOX if n in targets):
        for key in ("rps", "rps_stream"):
            mine = _rps(targets, fb, key)
            for other in ("litellm", "passthrough"):
                o = _rps(targets, other, key)
                out[f"{fb}_vs_{other}_{key}"] = round(mine / o, 3) if mine and o else None
    for on in (n for n in LEDGER_ON if n in targets and "farebox-off" in targets):
        for key in ("rps", "rps_stream"):
            rps_on, rps_off = _rps(targets, on, key), _rps(targets, "farebox-off", key)
            cost = round(1 - rps_on / rps_off, 4) if rps_on and rps_off else None
            out[f"ledger_cost_{on}_{key}"] = cost
            out[f"ledger_cost_{on}_{key}_rounds"] = _paired_costs(targets, on, key)
            # The gateway saturates its one pinned CPU, so its throughput goes as
            # 1 / (CPU per request): this estimate is much less sensitive to noise.
            cpu_on, cpu_off = _cpu(targets, on, key), _cpu(targets, "farebox-off", key)
            by_cpu = round(1 - cpu_off / cpu_on, 4) if cpu_on and cpu_off else None
            out[f"ledger_cost_{on}_{key}_by_cpu"] = by_cpu
    return out


def _cpu(targets: dict[str, Any], name: str, key: str) -> float | None:
    t = targets.get(name)
    if not t or key not in t["scenarios"]:
        return None
    value: float | None = t["scenarios"][key]["summary"]["cpu_us_per_req"]
    return value


def _paired_costs(targets: dict[str, Any], on: str, key: str) -> list[float]:
    def by_round(name: str) -> dict[int, float]:
        rows = targets[name]["scenarios"].get(key, {}).get("rounds", [])
        return {r["round"]: r["ok_rps"] for r in rows}

    on_rounds, off_rounds = by_round(on), by_round("farebox-off")
    return [
        round(1 - on_rounds[r] / off_rounds[r], 4) for r in sorted(on_rounds) if off_rounds.get(r)
    ]


def _ratio_lines(res: dict[str, Any]) -> list[str]:
    targets, r = res["targets"], res["ratios"]
    fbs = [n for n in FAREBOX if n in targets]
    if not fbs:
        return []

    def pair(name: str, other: str) -> str:
        ns = fmt(r.get(f"{name}_vs_{other}_rps"), ".2f", "×")
        st = fmt(r.get(f"{name}_vs_{other}_rps_stream"), ".2f", "×")
        return f"vs {LABEL[other]}: non-stream {ns}, stream {st}"

    lines = ["**Ratios (requests/s):**", ""]
    for fb in fbs:
        # LiteLLM is compared with a metering Farebox (or the only one run).
        others = ["litellm", "passthrough"] if fb in LEDGER_ON or len(fbs) == 1 else []
        others = [o for o in others or ["passthrough"] if o in targets]
        if others:
            lines.append(f"- {LABEL[fb]} " + "; ".join(pair(fb, o) for o in others) + ".")
    for on in (n for n in LEDGER_ON if n in targets and "farebox-off" in targets):
        cost = [r.get(f"ledger_cost_{on}_{k}") for k in ("rps", "rps_stream")]
        if cost == [None, None]:
            down = [n for n in (on, "farebox-off") if not targets[n]["available"]]
            why = "; ".join(f"{LABEL[n]} unavailable: {targets[n]['note']}" for n in down)
            lines.append(f"- **{LABEL[on]}: ledger cost: not measured** ({why or 'no data'}).")
            continue
        rounds = [r.get(f"ledger_cost_{on}_{k}_rounds") or [] for k in ("rps", "rps_stream")]

        def pct(v: float | None) -> str:
            return fmt(None if v is None else v * 100, ".1f", " %")

        def per_round(vals: list[float]) -> str:
            if not vals:
                return "—"
            listed = ", ".join(f"{v * 100:.1f}" for v in vals)
            return f"{listed} (median {statistics.median(vals) * 100:.1f})"

        lines.append(
            f"- **{LABEL[on]}: ledger cost: {pct(cost[0])} of throughput (non-stream) / "
            f"{pct(cost[1])} (stream)** = 1 − requests/s(ledger on) ÷ requests/s(ledger off), "
            f"medians; paired per round, in %: non-stream {per_round(rounds[0])}; stream "
            f"{per_round(rounds[1])}. " + _cpu_cost(targets, on)
        )
        by_cpu = [r.get(f"ledger_cost_{on}_{k}_by_cpu") for k in ("rps", "rps_stream")]
        lines.append(
            f"- {LABEL[on]}: the same cost from the gateway's CPU per request (it saturates "
            f"its one pinned CPU, so req/s ∝ 1 ÷ CPU/request; less sensitive to noise on the "
            f"other CPU), 1 − µs(ledger off) ÷ µs(ledger on): {pct(by_cpu[0])} (non-stream) / "
            f"{pct(by_cpu[1])} (stream)."
        )
    return [*lines, ""]


def _cpu_cost(targets: dict[str, Any], on: str) -> str:
    def cpu(name: str, key: str, field: str) -> float | None:
        t = targets[name]
        value: float | None = t["scenarios"].get(key, {}).get("summary", {}).get(field)
        return value

    parts = []
    for key, what in (("rps", "non-stream"), ("rps_stream", "stream")):
        a, b = cpu(on, key, "cpu_us_per_req"), cpu("farebox-off", key, "cpu_us_per_req")
        if a is not None and b is not None:
            db = cpu(on, key, "db_cpu_us_per_req")
            extra = f", Postgres {db:+,.0f} µs" if db is not None else ""
            parts.append(f"gateway {a - b:+,.0f} µs{extra} ({what})")
    return ("CPU per request, ledger on − off: " + "; ".join(parts) + ".") if parts else ""


def _ledger_check_lines(res: dict[str, Any]) -> list[str]:
    out = []
    for name in (n for n in LEDGER_ON if n in res["targets"]):
        c = res["targets"][name].get("ledger_check")
        if not c:
            continue
        rows = c["requests_rows"]
        if rows is None:
            out.append(f"- {LABEL[name]}: ledger rows could not be counted: {c['error']}")
            continue
        gap = rows - c["served"]
        spool = (
            f"{c['spool_files']} spool file(s), {c['spool_bytes']:,} bytes, left unwritten"
            if c["spool_files"]
            else "nothing left in the spool"
        )
        if 0 <= gap <= c["abandoned_max"]:
            why = (
                "within the requests wrk abandoned in flight when its runs ended (at most "
                f"{c['abandoned_max']:,} in all), which the gateway completes and records"
            )
        elif gap < 0:
            why = f"**{-gap:,} served requests have no row**"
        else:
            why = f"**more rows than wrk could have left in flight ({c['abandoned_max']:,})**"
        out.append(
            f"- {LABEL[name]}: **ledger rows written: {rows:,} requests** ({c['attempts_rows']:,} "
            f"attempts), counted after stopping the process (SIGTERM: the writer flushes). "
            f"It served {c['served']:,} responses: those wrk counted (warm-ups included) and "
            f"the 3 functional checks; rows − served = {gap:+,}: {why}; {spool}."
        )
    return ["**Ledger check:**", "", *out, ""] if out else []


def markdown(res: dict[str, Any]) -> str:
    m, targets = res["meta"], res["targets"]
    cfg, v, mach, pin = m["config"], m["versions"], m["machine"], m["cpu_pinning"]
    noise, pg = m["noise"], m.get("postgres")

    remarks = [
        f"{LABEL[n]}: {targets[n]['remark']}" for n in FAREBOX if targets.get(n, {}).get("remark")
    ]
    farebox_remark = "; ".join(remarks) or "not run"
    pg_layout = " (and the ledger's PostgreSQL: postmaster and backends)" if pg else ""
    if m.get("redis"):
        pg_layout = pg_layout.replace(")", "; Redis)")
    prod = report_prod.present(targets)
    bare = any(n in targets for n in FAREBOX) or not prod
    two = (
        " (Farebox production, 2 workers: both CPUs, shared with the simulator, its Postgres "
        "and Redis, and wrk: on 2 cores nothing can be kept off a 2-worker gateway's CPUs)"
        if "farebox-prod-2w" in targets
        else ""
    )
    pg_notes = []
    if pg:
        durability = (
            "durability on as in production (fsync, synchronous_commit, full_page_writes; "
            "`--pg-durability off` for the tests' settings)"
            if pg["durable"]
            else "durability off (fsync, synchronous_commit, full_page_writes), as in the tests"
        )
        pg_notes.append(
            f"- Ledger PostgreSQL {pg['version']}: a private cluster started by the harness "
            "with `tests/services.py` (free port, data in a temp dir, run as the postgres "
            f"user), {durability}; schema from `gateway.ledger.migrate.upgrade` before Farebox "
            f"starts. Its processes are pinned to the simulator's CPU (Cpus_allowed_list "
            f"{pg['cpus_allowed']}), not the gateways'. Its CPU is not in the gateway's "
            "figure: it has its own row. Farebox writes the ledger from a background task in "
            "batches (500 rows or every 200 ms)."
        )
    litellm_notes = []
    if "litellm" in targets:
        litellm_notes.append(
            f"- LiteLLM {v['litellm']}: `litellm[proxy]` from a hash-locked requirements file "
            "in its own venv, `--num_workers 1`, no database, `LITELLM_LOG=ERROR` (no access "
            "log), local cost map. Its dependency set has no httptools, so its uvicorn parses "
            "HTTP with h11. At the latency concurrency it is CPU-bound, so its added latency "
            "is mostly queueing. The same LiteLLM process is compared with both profiles: "
            "its Postgres spend logging could not be switched on here, because it needs the "
            "Prisma client, and `prisma generate` downloads Prisma's query-engine binaries "
            "from binaries.prisma.sh, which this machine cannot reach (it reaches only "
            "PyPI, Debian's and npm's registries; no registry package ships those engines): "
            "`Error: request to https://binaries.prisma.sh/…/debian-openssl-3.0.x/"
            "query-engine.gz.sha256 failed, reason: getaddrinfo ENOTFOUND`. With spend "
            "logging on it could only be slower."
        )

    out = [
        "# Farebox load benchmark",
        "",
        f"- **Date:** {m['date']}",
        f"- **Command:** `{m['command']}`",
        f"- **Machine:** {mach['cpu']}, {mach['logical_cpus']} logical CPUs, {mach['mem_gib']} "
        f"GiB RAM, Linux {mach['kernel']}; shared and noisy: other processes used "
        f"{fmt(noise['other_cores_median'], '.2f')} cores (median; max "
        f"{fmt(noise['other_cores_max'], '.2f')}) during the measured runs",
        f"- **Versions:** Farebox {v['farebox']}, LiteLLM {v['litellm']}, Python {v['python']}, "
        f"aiohttp {v['aiohttp']}, uvicorn {v['uvicorn']}, uvloop {v['uvloop']}, "
        f"orjson {v['orjson']}, wrk {v['wrk']}",
        f"- **Method:** wrk ({cfg['wrk_threads']} thread, `--latency`, Lua POST body), loopback "
        f"only. Per scenario: {cfg['warmup_s']:g} s warm-up per target, then "
        f"interleaved rounds over all targets (order rotated each round, and reversed every "
        f"other round): {cfg['rounds']} of {cfg['duration_s']:g} s for requests/s, "
        f"{cfg.get('latency_rounds', cfg['rounds'])} of {cfg['latency_duration_s']:g} s for "
        "latency; medians shown. Added latency = target − direct percentile of the same round.",
        "- **CPU layout:** the 2 cores are shared by simulator, gateway and wrk: simulator"
        f"{pg_layout} pinned to CPU {pin['simulator']}, gateways to CPU {pin['gateways']}{two}, "
        + (
            "wrk floating. "
            if pin.get("wrk", "unpinned") == "unpinned"
            else f"wrk pinned to CPU {pin['wrk']} with the simulator. "
        )
        + "All gateways stay up for the whole run (idle while another is measured). "
        f"Simulator: `{m['simulator']['kind']}`, one process.",
        f"- **Accounting:** 1 worker per gateway{two.replace('both CPUs', '2')}. CPU = "
        "utime+stime (+ reaped children) of "
        "the gateway's process tree from /proc/<pid>/stat over the run ÷ requests completed. "
        "RSS = VmRSS summed over the tree; idle = 2 s after startup, before any request.",
        "- **Other benchmarks:** [RESPONSES.md](RESPONSES.md) (the Responses API beside chat), "
        "[BATCH.md](BATCH.md) (a 5,000-line batch filling a dedicated GPU beside 70 % live "
        "load: live p99 with / without, utilization, the batch's ledger cost), "
        "[SOAK.md](SOAK.md) (15 minutes of steady load).",
        "",
        *(["## Production profile", "", *report_prod.lines(res)] if prod else []),
        *(["## Bare profile", ""] if prod and bare else []),
        *([*table(res, BARE), ""] if bare else []),
        *_ratio_lines(res),
        *_ledger_check_lines(res),
        "## Setup notes" if prod else "**Setup notes:**",
        "",
        "- Every target runs from precompiled bytecode (this environment sets "
        "PYTHONDONTWRITEBYTECODE=1; the harness runs compileall on the project venv and "
        "installs LiteLLM with `--compile-bytecode`).",
        *litellm_notes,
        "- The passthrough (`bench/passthrough.py`) logs nothing. Farebox runs "
        f"`bench/farebox.yaml` as is, each variant its own process with a fresh spool dir "
        f"under bench/.work/. {farebox_remark}.",
        *pg_notes,
        *report_prod.notes(res),
        "- wrk abandons in-flight requests when a run ends; the harness waits for the "
        "gateway and simulator to go idle before the next run. For a slow target the "
        "CPU/request figure can be off by about in-flight ÷ completed requests.",
        "",
    ]
    notes = [f"- {LABEL[n]}: {targets[n]['note']}" for n in ORDER if targets.get(n, {}).get("note")]
    if notes:
        out += ["**Unavailable targets:**", "", *notes, ""]
    out += [
        f"Benchmark time {m['bench_s']:.0f} s (plus {m['install_s']:.0f} s of install checks)."
        " Per-round numbers are in results.json next to this file.",
        "",
    ]
    return "\n".join(out)
