"""Soak (issue 13): steady load at the production profile, gateway RSS and open file
descriptors sampled every 30 s.

    .venv/bin/python bench/soak.py                 # 15 minutes -> bench/SOAK.md, bench/soak.json
    .venv/bin/python bench/soak.py --minutes 2     # a try-out -> bench/.work/soak/

One production-profile Farebox (production.py: virtual key with limits in Redis, ledger in
Postgres, metrics and JSON request log on, cost route with fallback) with its own simulator.
wrk holds `--connections` connections open for the whole run (one wrk run), every
`--stream-every`-th request a stream, the rest non-stream. Every `--interval` seconds: RSS
summed over the gateway's process tree, open fds over the tree (/proc/<pid>/fd), the
gateway's CPU, and the simulator's served count (requests/s per interval). Budgets, on levels
(the median of the 5 samples up to each moment): RSS growth between minute 5
(`--baseline-minute`) and the end ≤ 5 %; open fds at the end no more than at minute 5. At
the end the ledger's attempts rows are compared with what the simulator served.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import launch
import production
import report_meta
import wrk
from targets import tree_fds

BENCH = Path(__file__).resolve().parent
MIB = 1024 * 1024
RSS_BUDGET = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument(
        "--baseline-minute",
        type=float,
        default=None,
        help="default 5 (a third of --minutes if < 15)",
    )
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--stream-every", type=int, default=4, help="every Nth request streams")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="default bench/ for 15 min, else .work")
    args = p.parse_args(argv)
    if args.baseline_minute is None:
        args.baseline_minute = 5.0 if args.minutes >= 15 else args.minutes / 3
    if args.out is None:
        args.out = BENCH if args.minutes >= 15 else launch.WORK / "soak"
    return args


def sample(target: Any, t0: float) -> dict[str, Any]:
    pid = target.proc.pid
    sim = production.sim_counts(target.sim_port)["requests"]
    return {
        "t_s": round(time.perf_counter() - t0, 1),
        "rss_mib": round(target.proc.rss_bytes() / MIB, 2),
        "fds": tree_fds(pid),
        "cpu_s": round(target.proc.cpu_seconds(), 2),
        "sim_requests": sim,
    }


def soak(args: argparse.Namespace, target: Any) -> dict[str, Any]:
    script = wrk.write_mixed_script(
        launch.WORK / "soak.lua", target.api_key, target.model_fast, args.stream_every
    )
    seconds = args.minutes * 60
    argv = wrk.wrk_argv(target.url(), script, args.connections, seconds)
    t0 = time.perf_counter()
    samples = [sample(target, t0)]
    print(f"soak: {samples[0]}", flush=True)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        next_at = t0 + args.interval
        while proc.poll() is None:
            time.sleep(max(0.0, min(1.0, next_at - time.perf_counter())))
            if time.perf_counter() >= next_at and target.proc.alive():
                samples.append(sample(target, t0))
                prev, cur = samples[-2], samples[-1]
                rate = (cur["sim_requests"] - prev["sim_requests"]) / max(
                    cur["t_s"] - prev["t_s"], 1e-9
                )
                cur["rps"] = round(rate, 1)
                print(f"soak: {cur}", flush=True)
                next_at += args.interval
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    (launch.WORK / "soak-wrk.log").write_text(f"$ {' '.join(argv)}\n{out}{err}")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {err.strip()[-300:]}")
    target.proc.wait_idle()
    samples.append(sample(target, t0))  # after the load: abandoned requests finished
    samples[-1]["after_load"] = True
    return {"wrk": wrk.parse(out).to_dict(), "samples": samples}


def _level(
    samples: list[dict[str, Any]], until_s: float, field: str = "fds", count: int = 5
) -> float:
    """The median of `field` over the `count` samples up to `until_s`: a level, which a
    leak raises for good, where one sample moves with what is in flight at that instant."""
    upto = [s[field] for s in samples if s["t_s"] <= until_s][-count:]
    return float(statistics.median(upto))


def verdicts(args: argparse.Namespace, samples: list[dict[str, Any]]) -> dict[str, Any]:
    loaded = [s for s in samples if not s.get("after_load")]
    base_t = args.baseline_minute * 60
    base = min(loaded, key=lambda s: abs(s["t_s"] - base_t))
    end = loaded[-1]
    window = [s for s in loaded if s["t_s"] >= base["t_s"]]
    rss_base = _level(loaded, base["t_s"], "rss_mib")
    rss_end = _level(loaded, end["t_s"], "rss_mib")
    growth = (rss_end - rss_base) / rss_base if rss_base else None
    return {
        "baseline": base,
        "end": end,
        "rss_growth": round(growth, 4) if growth is not None else None,
        "rss_level_base": round(rss_base, 1),
        "rss_level_end": round(rss_end, 1),
        "rss_max_mib": max(s["rss_mib"] for s in window),
        "rss_pass": growth is not None and growth <= RSS_BUDGET,
        "fd_growth": end["fds"] - base["fds"],
        "fd_min": min(s["fds"] for s in window),
        "fd_max": max(s["fds"] for s in window),
        # Steady levels, not single samples: a few fds come and go with in-flight upstream
        # connections and journal segments, while a leak raises the level for good.
        "fd_level_base": _level(loaded, base["t_s"]),
        "fd_level_end": _level(loaded, end["t_s"]),
        "fd_pass": _level(loaded, end["t_s"]) <= _level(loaded, base["t_s"]),
    }


def markdown(res: dict[str, Any]) -> str:
    v, m, cfg, w = res["verdicts"], res["machine"], res["config"], res["wrk"]
    ver = res["versions"]
    c = res["ledger_check"]
    base, end = v["baseline"], v["end"]

    def ok(flag: bool) -> str:
        return "PASS" if flag else "MISS"

    rows = ["| t (s) | RSS (MiB) | open fds | gateway CPU (s) | simulator requests | req/s |",
            "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for s in res["samples"]:
        rps = f"{s['rps']:,.0f}" if "rps" in s else "—"
        t = f"{s['t_s']:.0f}" + (" (after load)" if s.get("after_load") else "")
        rows.append(
            f"| {t} | {s['rss_mib']:.1f} | {s['fds']} | {s['cpu_s']:.1f} | "
            f"{s['sim_requests']:,} | {rps} |"
        )
    return "\n".join([
        "# Farebox soak (production profile)",
        "",
        f"- **Date:** {res['date']}",
        f"- **Command:** `{res['command']}`",
        f"- **Machine:** {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['mem_gib']} GiB RAM, "
        f"Linux {m['kernel']}; shared with other work (load average at the end "
        f"{', '.join(map(str, m['loadavg_end']))})",
        f"- **Versions:** Farebox {ver['farebox']}, Python {ver['python']}, aiohttp "
        f"{ver['aiohttp']}, uvicorn {ver['uvicorn']}, uvloop {ver['uvloop']}, wrk {ver['wrk']}, "
        f"PostgreSQL {res['postgres']}, Redis {res['redis']}",
        f"- **Load:** one wrk run of {cfg['minutes']:g} min, {cfg['connections']} connections, "
        f"every {cfg['stream_every']}th request a stream, route `bench` (cost route, three "
        f"deployments + fallback), virtual key with limits in Redis, ledger → Postgres, "
        f"metrics and JSON request log on; {cfg['workers']} worker(s) pinned to CPU "
        f"{cfg['gateway_cpus']}, simulator, Postgres and Redis on CPU {cfg['sim_cpus']}, wrk "
        f"floating. Sampled every {cfg['interval_s']:g} s: RSS summed over the gateway's "
        "process tree, open fds over the tree (/proc/<pid>/fd), the gateway's CPU, the "
        "simulator's served count.",
        f"- **wrk:** {w['requests']:,} requests, {w['ok_rps']:,.0f} req/s, p50 {w['p50_ms']:.2f} "
        f"ms, p99 {w['p99_ms']:.2f} ms, {w['non2xx'] + w['socket_errors']} failed",
        "",
        f"- **{ok(v['rss_pass'])}** RSS growth between minute {base['t_s'] / 60:.1f} and the "
        f"end (minute {end['t_s'] / 60:.1f}), level (median of the last 5 samples): "
        f"{v['rss_level_base']:.1f} → {v['rss_level_end']:.1f} MiB = "
        f"{v['rss_growth'] * 100:+.2f} % (budget ≤ +5 %; single samples {base['rss_mib']:.1f} → "
        f"{end['rss_mib']:.1f} MiB; max in that window {v['rss_max_mib']:.1f} MiB)",
        f"- **{ok(v['fd_pass'])}** open file descriptors, level (median of the last 5 samples): "
        f"{v['fd_level_base']:g} at minute {base['t_s'] / 60:.1f}, {v['fd_level_end']:g} at the "
        f"end (single samples {base['fds']} → {end['fds']}; range {v['fd_min']}–{v['fd_max']} in "
        "the window; budget: no growth of the level)",
        f"- **{ok(bool(c.get('covered')))}** {production.describe_check('ledger', c)}",
        "",
        *rows,
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    launch.WORK.mkdir(exist_ok=True)
    sim_cpus, gw_cpus = launch.cpu_plan("auto")
    services = production.start_services(sim_cpus)
    target = production.farebox_prod(
        args.workers, production.env_base(), (sim_cpus, gw_cpus), services, name="farebox-soak"
    )
    try:
        launch.start(target, 60)
        if target.available and (err := launch.check(target)) is not None:
            target.mark_unavailable(err)
        if not target.available:
            print(f"soak: {target.name} unavailable: {target.note}", file=sys.stderr)
            return 1
        time.sleep(2.0)
        run = soak(args, target)
        check = production.verify(target, services.pg)
        print(f"soak: {production.describe_check(target.name, check)}", flush=True)
    finally:
        production.stop(target)
        services.close()
    res = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/soak.py", *sys.argv[1:]]),
        "machine": report_meta.machine(),
        "versions": report_meta.versions(),
        "postgres": services.pg.version,
        "redis": services.redis_version,
        "config": {
            "minutes": args.minutes,
            "interval_s": args.interval,
            "baseline_minute": args.baseline_minute,
            "connections": args.connections,
            "stream_every": args.stream_every,
            "workers": args.workers,
            "gateway_cpus": sorted(target.proc.cpus or []) or "unpinned",
            "sim_cpus": sorted(sim_cpus or []) or "unpinned",
        },
        **run,
        "verdicts": verdicts(args, run["samples"]),
        "ledger_check": check,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    (args.out / "SOAK.md").write_text(text)
    print(text)
    v = res["verdicts"]
    return 0 if v["rss_pass"] and v["fd_pass"] and check.get("covered") else 1


if __name__ == "__main__":
    raise SystemExit(main())
