"""Aggregation (medians over interleaved rounds) and the RESULTS.md / results.json output."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wrk
from targets import Target

ORDER = ["direct", "passthrough", "farebox", "litellm"]
LABEL = {
    "direct": "direct (no gateway)",
    "passthrough": "bare passthrough",
    "farebox": "Farebox",
    "litellm": "LiteLLM proxy",
}
MIB = 1024 * 1024


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def meta(
    args: argparse.Namespace,
    argv: list[str],
    sim: dict[str, Any],
    pinning: tuple[set[int] | None, set[int] | None],
    t_begin: float,
    t_installed: float,
) -> dict[str, Any]:
    sim_cpus, gw_cpus = pinning
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/run.py", *argv[1:]]),
        "machine": {
            "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(),
            "mem_gib": _mem_total_gib(),
            "kernel": platform.release(),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "python": platform.python_version(),
            "farebox": dist_version("farebox"),
            "aiohttp": dist_version("aiohttp"),
            "uvicorn": dist_version("uvicorn"),
            "uvloop": dist_version("uvloop"),
            "orjson": dist_version("orjson"),
            "wrk": wrk.wrk_version(),
        },
        "config": {
            "duration_s": args.duration,
            "latency_duration_s": args.latency_duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "latency_connections": args.latency_connections,
            "wrk_threads": args.threads,
            "upstream_latency_ms": 50,
            "quick": args.quick,
        },
        "cpu_pinning": {
            "simulator": sorted(sim_cpus) if sim_cpus else "unpinned",
            "gateways": sorted(gw_cpus) if gw_cpus else "unpinned",
            "wrk": "unpinned",
        },
        "simulator": {
            "kind": sim["kind"],
            "startup_s": round(sim["startup_s"], 3),
            "rss_mib_end": round(sim["rss"] / MIB, 1),
        },
        "install_s": round(t_installed - t_begin, 1),
        "bench_s": round(time.time() - t_installed, 1),
    }


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
        "ratios": _ratios(out_targets),
    }


def _rps(targets: dict[str, Any], name: str, key: str) -> float | None:
    t = targets.get(name)
    if not t or not t["available"] or key not in t["scenarios"]:
        return None
    value: float | None = t["scenarios"][key]["summary"]["ok_rps"]
    return value


def _ratios(targets: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("rps", "rps_stream"):
        fb = _rps(targets, "farebox", key)
        for other in ("litellm", "passthrough"):
            o = _rps(targets, other, key)
            out[f"farebox_vs_{other}_{key}"] = round(fb / o, 3) if fb and o else None
    return out


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def _table(res: dict[str, Any]) -> list[str]:
    targets, cfg = res["targets"], res["meta"]["config"]
    names = [n for n in ORDER if n in targets]

    def cell(name: str, key: str, field: str, spec: str, direct: str | None = None) -> str:
        t = targets[name]
        if name == "direct" and direct is not None:
            return direct
        if not t["available"] and not t["scenarios"].get(key):
            return "unavailable"
        return _fmt(t["scenarios"].get(key, {}).get("summary", {}).get(field), spec)

    def attr(name: str, field: str, spec: str) -> str:
        if name == "direct":
            return "n/a"
        if not targets[name]["available"] and targets[name][field] is None:
            return "unavailable"
        return _fmt(targets[name][field], spec)

    def abs_latency(name: str) -> str:
        p50, p99 = cell(name, "latency", "p50_ms", ".2f"), cell(name, "latency", "p99_ms", ".2f")
        return p50 if p50 == "unavailable" else f"{p50} / {p99}"

    def errors(name: str) -> str:
        return str(sum(s["summary"]["errors"] for s in targets[name]["scenarios"].values()))

    c, lc = cfg["connections"], cfg["latency_connections"]
    base = "0 (baseline)"
    rows: list[tuple[str, Callable[[str], str]]] = [
        (f"requests/s, c{c}, non-stream", lambda n: cell(n, "rps", "ok_rps", ",.0f")),
        (f"requests/s, c{c}, stream (SSE)", lambda n: cell(n, "rps_stream", "ok_rps", ",.0f")),
        (f"added latency p50, c{lc}, 50 ms upstream (ms)",
         lambda n: cell(n, "latency", "added_p50_ms", "+.2f", base)),
        (f"added latency p99, c{lc}, 50 ms upstream (ms)",
         lambda n: cell(n, "latency", "added_p99_ms", "+.2f", base)),
        ("absolute latency p50 / p99 (ms)", abs_latency),
        ("gateway CPU µs/request, non-stream",
         lambda n: cell(n, "rps", "cpu_us_per_req", ",.0f", "n/a")),
        ("gateway CPU µs/request, stream",
         lambda n: cell(n, "rps_stream", "cpu_us_per_req", ",.0f", "n/a")),
        ("simulator CPU µs/request, non-stream",
         lambda n: cell(n, "rps", "sim_cpu_us_per_req", ",.0f")),
        ("idle RSS (MiB)", lambda n: attr(n, "idle_rss_mib", ".1f")),
        ("loaded RSS, after load (MiB)", lambda n: attr(n, "loaded_rss_mib", ".1f")),
        ("startup, spawn → first 200 on health (s)", lambda n: attr(n, "startup_s", ".2f")),
        ("failed requests (non-2xx + socket errors)", errors),
    ]  # fmt: skip
    lines = ["| metric | " + " | ".join(LABEL[n] for n in names) + " |"]
    lines.append("|" + "---|" * (len(names) + 1))
    lines += ["| " + label + " | " + " | ".join(fn(n) for n in names) + " |" for label, fn in rows]
    return lines


def markdown(res: dict[str, Any]) -> str:
    m, targets, r = res["meta"], res["targets"], res["ratios"]
    cfg, v, mach, pin = m["config"], m["versions"], m["machine"], m["cpu_pinning"]
    noise = m["noise"]

    def ratio(key: str) -> str:
        return _fmt(r.get(key), ".2f", "×")

    farebox_remark = targets.get("farebox", {}).get("remark") or "not run"
    litellm_notes = []
    if "litellm" in targets:
        litellm_notes.append(
            f"- LiteLLM {v['litellm']}: `litellm[proxy]` from a hash-locked requirements file "
            "in its own venv, `--num_workers 1`, no database, `LITELLM_LOG=ERROR` (no access "
            "log), local cost map. Its dependency set has no httptools, so its uvicorn parses "
            "HTTP with h11. At the latency concurrency it is CPU-bound, so its added latency "
            "is mostly queueing."
        )

    out = [
        "# Farebox load benchmark",
        "",
        f"- **Date:** {m['date']}",
        f"- **Command:** `{m['command']}`",
        f"- **Machine:** {mach['cpu']}, {mach['logical_cpus']} logical CPUs, {mach['mem_gib']} "
        f"GiB RAM, Linux {mach['kernel']}; shared and noisy: other processes used "
        f"{_fmt(noise['other_cores_median'], '.2f')} cores (median; max "
        f"{_fmt(noise['other_cores_max'], '.2f')}) during the measured runs",
        f"- **Versions:** Farebox {v['farebox']}, LiteLLM {v['litellm']}, Python {v['python']}, "
        f"aiohttp {v['aiohttp']}, uvicorn {v['uvicorn']}, uvloop {v['uvloop']}, "
        f"orjson {v['orjson']}, wrk {v['wrk']}",
        f"- **Method:** wrk ({cfg['wrk_threads']} thread, `--latency`, Lua POST body), loopback "
        f"only. Per scenario: {cfg['warmup_s']:g} s warm-up per target, then "
        f"{cfg['rounds']} interleaved round(s) over all targets (order rotated each round) of "
        f"{cfg['duration_s']:g} s ({cfg['latency_duration_s']:g} s for latency); medians "
        "shown. Added latency = target − direct percentile of the same round.",
        "- **CPU layout:** the 2 cores are shared by simulator, gateway and wrk: simulator "
        f"pinned to CPU {pin['simulator']}, gateways to CPU {pin['gateways']}, wrk floating. "
        "All gateways stay up for the whole run (idle while another is measured). "
        f"Simulator: `{m['simulator']['kind']}`, one process.",
        "- **Accounting:** 1 worker per gateway. CPU = utime+stime (+ reaped children) of "
        "the gateway's process tree from /proc/<pid>/stat over the run ÷ requests completed. "
        "RSS = VmRSS summed over the tree; idle = 2 s after startup, before any request.",
        "",
        *_table(res),
        "",
        "**Ratios (requests/s):** Farebox vs LiteLLM: non-stream "
        f"{ratio('farebox_vs_litellm_rps')}, stream {ratio('farebox_vs_litellm_rps_stream')}. "
        "Farebox vs bare passthrough (the ceiling): non-stream "
        f"{ratio('farebox_vs_passthrough_rps')}, stream "
        f"{ratio('farebox_vs_passthrough_rps_stream')}.",
        "",
        "**Setup notes:**",
        "",
        "- Every target runs from precompiled bytecode (this environment sets "
        "PYTHONDONTWRITEBYTECODE=1; the harness runs compileall on the project venv and "
        "installs LiteLLM with `--compile-bytecode`).",
        *litellm_notes,
        "- The passthrough (`bench/passthrough.py`) logs nothing. Farebox runs "
        f"`bench/farebox.yaml` as is; {farebox_remark}.",
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
