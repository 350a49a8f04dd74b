"""Aggregation (medians over interleaved rounds) and the RESULTS.md / results.json output."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import statistics
import time
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
            "version": t.version,
            "startup_s": None if t.startup_s is None else round(t.startup_s, 3),
            "idle_rss_mib": None if t.idle_rss is None else round(t.idle_rss / MIB, 1),
            "loaded_rss_mib": None if t.loaded_rss is None else round(t.loaded_rss / MIB, 1),
            "scenarios": scen,
        }
    meta["versions"]["litellm"] = out_targets.get("litellm", {}).get("version") or "skipped"
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


def markdown(res: dict[str, Any]) -> str:
    m, targets = res["meta"], res["targets"]
    names = [n for n in ORDER if n in targets]
    cfg = m["config"]

    def cell(name: str, key: str, field: str, spec: str, signed: bool = False) -> str:
        t = targets[name]
        if not t["available"] and not t["scenarios"].get(key):
            return "unavailable"
        s = t["scenarios"].get(key, {}).get("summary", {})
        return _fmt(s.get(field), ("+" if signed else "") + spec)

    def attr(name: str, field: str, spec: str) -> str:
        return "n/a" if name == "direct" else _fmt(targets[name][field], spec)

    c, lc = cfg["connections"], cfg["latency_connections"]
    rows = [
        (f"requests/s, c{c}, non-stream", lambda n: cell(n, "rps", "ok_rps", ",.0f")),
        (f"requests/s, c{c}, stream (SSE)", lambda n: cell(n, "rps_stream", "ok_rps", ",.0f")),
        (
            f"added latency p50, c{lc}, 50 ms upstream (ms)",
            lambda n: (
                "0 (baseline)" if n == "direct" else cell(n, "latency", "added_p50_ms", ".2f", True)
            ),
        ),
        (
            f"added latency p99, c{lc}, 50 ms upstream (ms)",
            lambda n: (
                "0 (baseline)" if n == "direct" else cell(n, "latency", "added_p99_ms", ".2f", True)
            ),
        ),
        (
            "absolute latency p50 / p99 (ms)",
            lambda n: (
                f"{cell(n, 'latency', 'p50_ms', '.2f')} / {cell(n, 'latency', 'p99_ms', '.2f')}"
            ),
        ),
        (
            "gateway CPU µs/request, non-stream",
            lambda n: "n/a" if n == "direct" else cell(n, "rps", "cpu_us_per_req", ",.0f"),
        ),
        (
            "gateway CPU µs/request, stream",
            lambda n: "n/a" if n == "direct" else cell(n, "rps_stream", "cpu_us_per_req", ",.0f"),
        ),
        (
            "simulator CPU µs/request, non-stream",
            lambda n: cell(n, "rps", "sim_cpu_us_per_req", ",.0f"),
        ),
        ("idle RSS (MiB)", lambda n: attr(n, "idle_rss_mib", ".1f")),
        ("loaded RSS, after load (MiB)", lambda n: attr(n, "loaded_rss_mib", ".1f")),
        ("startup, spawn → first 200 on health (s)", lambda n: attr(n, "startup_s", ".2f")),
        (
            "failed requests (non-2xx + socket errors)",
            lambda n: str(sum(s["summary"]["errors"] for s in targets[n]["scenarios"].values())),
        ),
    ]
    head = "| metric | " + " | ".join(LABEL[n] for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    lines += ["| " + label + " | " + " | ".join(fn(n) for n in names) + " |" for label, fn in rows]

    r = res["ratios"]

    def ratio(key: str) -> str:
        return _fmt(r.get(key), ".2f", "×")

    v = m["versions"]
    out = [
        "# Farebox load benchmark",
        "",
        f"- **Date:** {m['date']}",
        f"- **Command:** `{m['command']}` (`make bench`)",
        f"- **Machine:** {m['machine']['cpu']}, {m['machine']['logical_cpus']} logical CPUs, "
        f"{m['machine']['mem_gib']} GiB RAM, Linux {m['machine']['kernel']}, "
        f"load average at end {m['machine']['loadavg_end']} (shared, noisy host)",
        f"- **Versions:** Farebox {v['farebox']}, LiteLLM {v['litellm']}, Python {v['python']}, "
        f"aiohttp {v['aiohttp']}, uvicorn {v['uvicorn']}, uvloop {v['uvloop']}, "
        f"orjson {v['orjson']}, wrk {v['wrk']}",
        f"- **Method:** wrk ({cfg['wrk_threads']} thread, `--latency`), loopback only; "
        f"{cfg['rounds']} interleaved round(s) of {cfg['duration_s']:g} s per target and "
        f"scenario (order rotated each round), {cfg['warmup_s']:g} s warm-up each; "
        "medians shown. Added latency = target − direct percentile of the same round.",
        f"- **CPU layout:** the 2 cores are shared by simulator, gateway and wrk. Simulator "
        f"pinned to CPU {m['cpu_pinning']['simulator']}, gateways to CPU "
        f"{m['cpu_pinning']['gateways']}, wrk unpinned. All gateways run for the whole "
        "benchmark, idle while another is measured. Simulator: "
        f"`{m['simulator']['kind']}` (one process).",
        "- **Gateways:** 1 worker each. CPU = utime+stime of the gateway's process tree "
        "(/proc/<pid>/stat, children included) over the run ÷ requests completed. RSS = "
        "sum of VmRSS over the tree.",
        "",
        *lines,
        "",
        "**Ratios (requests/s):** Farebox vs LiteLLM — non-stream "
        f"{ratio('farebox_vs_litellm_rps')}, stream {ratio('farebox_vs_litellm_rps_stream')}. "
        "Farebox vs bare passthrough (ceiling) — non-stream "
        f"{ratio('farebox_vs_passthrough_rps')}, stream "
        f"{ratio('farebox_vs_passthrough_rps_stream')}.",
        "",
    ]
    notes = [f"- {LABEL[n]}: {targets[n]['note']}" for n in names if targets[n]["note"]]
    if notes:
        out += ["**Notes:**", "", *notes, ""]
    out += [
        f"Benchmark time {m['bench_s']:.0f} s after {m['install_s']:.0f} s of install checks."
        " Per-round numbers are in `bench/results.json`.",
        "",
    ]
    return "\n".join(out)
