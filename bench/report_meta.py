"""The run's metadata for RESULTS.md / results.json (and SOAK.md): machine, versions,
configuration, CPU pinning."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

import wrk

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


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "mem_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "farebox": dist_version("farebox"),
        "aiohttp": dist_version("aiohttp"),
        "uvicorn": dist_version("uvicorn"),
        "uvloop": dist_version("uvloop"),
        "orjson": dist_version("orjson"),
        "wrk": wrk.wrk_version(),
    }


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
        "machine": machine(),
        "versions": versions(),
        "config": {
            "duration_s": args.duration,
            "latency_duration_s": args.latency_duration,
            "rounds": args.rounds,
            "latency_rounds": args.latency_rounds,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "latency_connections": args.latency_connections,
            "wrk_threads": args.threads,
            "upstream_latency_ms": 50,
            "quick": args.quick,
            "profiles": args.profiles,
            "burst_requests": args.burst,
            "burst_prompt_kb": args.burst_kb,
        },
        "cpu_pinning": {
            "simulator": sorted(sim_cpus) if sim_cpus else "unpinned",
            "gateways": sorted(gw_cpus) if gw_cpus else "unpinned",
            "postgres": sorted(sim_cpus) if sim_cpus else "unpinned",
            "wrk": sorted(sim_cpus) if sim_cpus else "unpinned",
        },
        "simulator": {
            "kind": sim["kind"],
            "startup_s": round(sim["startup_s"], 3),
            "rss_mib_end": round(sim["rss"] / MIB, 1),
        },
        "install_s": round(t_installed - t_begin, 1),
        "bench_s": round(time.time() - t_installed, 1),
    }


def postgres_meta(pg: Any, durable: bool, db_pids: list[int]) -> dict[str, Any] | None:
    """pg: the ledger_db.Postgres the run used, or None."""
    if pg is None:
        return None
    return {
        "version": pg.version,
        "durable": durable,
        "cpus_allowed": pg.cpus,
        "postmaster_pid": db_pids[0] if db_pids else None,
    }
