"""`make bench`: one interleaved, time-bounded load benchmark on loopback.

The same upstream simulator is measured behind: nothing ("direct"), a bare ASGI passthrough
(the ceiling for a Python gateway here), the LiteLLM proxy (1 worker, pinned version in its
own venv) and Farebox in two profiles: "bare" (1 worker, ledger off / ledger in a real
PostgreSQL started here) and "production" (`production.py`: virtual key with limits in
Redis, ledger in Postgres, metrics and JSON logs on, cost route with fallback; 1 and 2
workers), then a 100-request burst of 32 KB prompts at the production targets and the
ledger checks. Writes bench/RESULTS.md and bench/results.json.

    .venv/bin/python bench/run.py                           # full run, ~7 min after installs
    .venv/bin/python bench/run.py --quick --skip-litellm    # ~1 min smoke run, written
                                                            # to bench/.work/quick/
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import launch
import ledger_db
import lineup
import litellm_env
import production
import report
import wrk
from targets import (
    Proc,
    Target,
    children_cpu_seconds,
    free_port,
    machine_busy_seconds,
    tree_cpu_seconds,
    tree_rss_bytes,
    wait_tree_idle,
)

BENCH = Path(__file__).resolve().parent
WORK = launch.WORK
Rows = list[dict[str, Any]]
FAREBOX_MODES = lineup.FAREBOX_MODES
WRK_CPUS: set[int] = set()  # where wrk runs (set in main from the CPU plan)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    stream: bool
    upstream: str  # which model of each target: "fast", "slow" (50 ms) or "jitter" (45-55 ms)
    connections: int
    duration: float
    rounds: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per req/s run")
    p.add_argument(
        "--latency-duration", type=float, default=10.0, help="seconds per latency run (p99)"
    )
    p.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds per req/s scenario (JSON, SSE)"
    )
    p.add_argument(
        "--latency-rounds", type=int, default=2, help="interleaved rounds, latency scenario"
    )
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target")
    p.add_argument("--connections", type=int, default=64, help="concurrency for requests/s")
    p.add_argument("--latency-connections", type=int, default=10, help="concurrency, latency")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument(
        "--pin",
        choices=["auto", "none"],
        default="auto",
        help="auto: simulator and the ledger Postgres on the last CPU, gateways on\n"
        "the others, wrk floats",
    )
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds (LiteLLM: 2x)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s x 1 round, 1 s warm-up")
    p.add_argument("--skip-litellm", action="store_true", help="do not install/run LiteLLM")
    p.add_argument("--skip-farebox", action="store_true", help="do not run Farebox")
    p.add_argument(
        "--profiles",
        choices=["all", "bare", "production"],
        default="all",
        help="Farebox profiles: bare (farebox-off, farebox-pg: see --farebox-ledger),\n"
        "production (farebox-prod, farebox-prod-2w: production.py), or both",
    )
    p.add_argument("--burst", type=int, default=100, help="burst size (0: no burst)")
    p.add_argument("--burst-kb", type=int, default=32, help="prompt size in the burst, KB")
    p.add_argument(
        "--farebox-ledger",
        choices=list(FAREBOX_MODES),
        default="both",
        help="which Farebox targets: both = ledger off + ledger in a PostgreSQL started\n"
        "here; sqlite = ledger in a fresh SQLite file; all = the three",
    )
    p.add_argument(
        "--pg-durability",
        choices=["on", "off"],
        default="on",
        help="the ledger Postgres's fsync/synchronous_commit/full_page_writes\n"
        "(on, as in production; off, as in the tests)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output dir (default: bench/; bench/.work/quick with --quick)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if a target that was asked for is unavailable or any request failed",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.latency_duration, args.warmup = 2.0, 2.0, 1.0
        args.rounds = args.latency_rounds = 1
    if args.out is None:
        args.out = WORK / "quick" if args.quick else BENCH
    return args


def problems(results: dict[str, Any]) -> list[str]:
    out = []
    for name, t in results["targets"].items():
        if not t["available"]:
            out.append(f"{name} unavailable: {t['note']}")
        failed = sum(s["summary"]["errors"] for s in t["scenarios"].values())
        if failed:
            out.append(f"{name}: {failed} failed requests")
        check = t.get("ledger_check")
        if t["available"] and check and not check["requests_rows"]:
            out.append(f"{name}: no ledger rows written {check['error']}".rstrip())
        if check and "covered" in check and not check["covered"]:
            out.append(f"{name}: ledger attempts differ from the simulator's count")
        if (b := t.get("burst")) and b["failed"]:
            out.append(f"{name}: {b['failed']} failed burst requests")
    return out


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    c, lc, d, r = args.connections, args.latency_connections, args.duration, args.rounds
    return [
        Scenario("rps", f"req/s @c{c}", stream=False, upstream="fast", connections=c, duration=d,
                 rounds=r),
        Scenario("rps_stream", f"req/s stream @c{c}", stream=True, upstream="fast", connections=c,
                 duration=d, rounds=r),
        Scenario("latency", f"latency @c{lc}, 50 ms upstream", stream=False, upstream="slow",
                 connections=lc, duration=args.latency_duration, rounds=args.latency_rounds),
        # The same with 45-55 ms (mean 50): with a fixed latency, wrk's connections start
        # together and stay in lockstep, so each round trip queues behind the other nine at
        # every hop and p50 measures ten requests' serial work rather than one request's.
        Scenario("latency_jitter", f"latency @c{lc}, 45-55 ms upstream", stream=False,
                 upstream="jitter", connections=lc, duration=args.latency_duration,
                 rounds=args.latency_rounds),
    ]  # fmt: skip


def measure(
    t: Target, sim: Proc, db_pids: list[int], script: Path, sc: Scenario, seconds: float
) -> dict[str, Any]:
    """db_pids: [the ledger Postgres's postmaster, Redis] (those running); `t.sim` replaces
    `sim` for a target with its own simulator."""
    sim = t.sim or sim

    def sample() -> tuple[float, float, float, float, float, float, float]:
        gateway = t.proc.cpu_seconds() if t.proc else 0.0
        db = sum(tree_cpu_seconds(pid) for pid in db_pids if pid != t.redis_pid)
        redis = tree_cpu_seconds(t.redis_pid) if t.redis_pid else 0.0
        return (time.perf_counter(), gateway, sim.cpu_seconds(), children_cpu_seconds(),
                machine_busy_seconds(), db, redis)  # fmt: skip

    t0, gw0, sim0, wrk0, busy0, db0, rd0 = sample()
    res = wrk.run_wrk(
        t.url(), script, sc.connections, seconds, cpus=WRK_CPUS or None, log=WORK / "wrk.log"
    )
    t1, gw1, sim1, wrk1, busy1, db1, rd1 = sample()
    t.served += res.requests
    t.abandoned_max += sc.connections
    row: dict[str, Any] = res.to_dict()
    n = max(res.requests, 1)
    row["cpu_us_per_req"] = round((gw1 - gw0) / n * 1e6, 1) if t.proc else None
    row["sim_cpu_us_per_req"] = round((sim1 - sim0) / n * 1e6, 1)
    # The ledger database server (a separate process tree) for the target writing to it.
    row["db_cpu_us_per_req"] = round((db1 - db0) / n * 1e6, 1) if t.db_pid else None
    row["redis_cpu_us_per_req"] = round((rd1 - rd0) / n * 1e6, 1) if t.redis_pid else None
    row["wrk_cores"] = round((wrk1 - wrk0) / (t1 - t0), 2)
    # CPU used by everything else on the machine during the run, in cores: the noise.
    # (Redis's CPU outside this target's runs is idle housekeeping, counted as noise.)
    ours = (gw1 - gw0) + (sim1 - sim0) + (wrk1 - wrk0) + (db1 - db0) + (rd1 - rd0)
    row["other_cores"] = round(max(0.0, (busy1 - busy0) - ours) / (t1 - t0), 2)
    return row


def run_one(
    t: Target,
    sim: Proc,
    db_pids: list[int],
    script: Path,
    sc: Scenario,
    seconds: float,
    into: Rows | None,
) -> None:
    if not t.available:
        return
    try:
        row = measure(t, sim, db_pids, script, sc, seconds)
    except (RuntimeError, OSError) as exc:
        t.mark_unavailable(f"wrk failed during {sc.key}: {exc}")
        return
    if t.proc is not None and not t.proc.alive():
        t.mark_unavailable(f"process died during {sc.key}; log: {t.proc.log_tail()}")
        return
    # wrk abandons in-flight requests at the end; a gateway still working through them
    # would steal CPU from the next run, so wait until it (and the simulator) is idle.
    waited = (t.proc.wait_idle() if t.proc else 0.0) + (t.sim or sim).wait_idle()
    row["drain_s"] = round(waited + sum(wait_tree_idle(pid) for pid in db_pids), 2)
    if into is not None:
        row["round"] = len(into) + 1
        into.append(row)


def run_scenarios(
    args: argparse.Namespace, targets: list[Target], sim: Proc, db_pids: list[int]
) -> dict[str, dict[str, Rows]]:
    raw: dict[str, dict[str, Rows]] = {t.name: {} for t in targets}
    for sc in scenarios(args):
        scripts = {}
        for t in targets:
            model = {"fast": t.model_fast, "slow": t.model_slow, "jitter": t.model_jitter}[
                sc.upstream
            ]
            lua = WORK / f"{t.name}-{sc.key}.lua"
            scripts[t.name] = wrk.write_script(lua, t.api_key, model, sc.stream)
        print(f"bench: {sc.title}: warm-up", flush=True)
        for t in targets:
            run_one(t, sim, db_pids, scripts[t.name], sc, args.warmup, None)
        for rnd in range(sc.rounds):
            live = [t for t in targets if t.available]
            # Rotate the order (no target always goes first) and reverse it every other round
            # (no target always runs just before its neighbour, e.g. ledger off → on).
            shift = rnd % max(len(live), 1)
            order = live[shift:] + live[:shift]
            for t in reversed(order) if rnd % 2 else order:
                rows = raw[t.name].setdefault(sc.key, [])
                run_one(t, sim, db_pids, scripts[t.name], sc, sc.duration, rows)
            done = [t for t in live if raw[t.name].get(sc.key)]
            line = "  ".join(f"{t.name}={raw[t.name][sc.key][-1]['ok_rps']:.0f}/s" for t in done)
            print(f"bench: {sc.title}: round {rnd + 1}/{sc.rounds}: {line}", flush=True)
    return raw


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, say) unwinds through the finally below, which stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_begin = time.time()
    WORK.mkdir(exist_ok=True)
    (WORK / "wrk.log").unlink(missing_ok=True)
    wrk.ensure_wrk()
    if not args.skip_litellm:
        litellm_env.ensure_installed()
    root = launch.ROOT
    launch.precompile(
        launch.python(), [*launch.site_packages(root / ".venv"), root / "gateway", root / "routing"]
    )
    t_installed = time.time()
    sim_cpus, gw_cpus = launch.cpu_plan(args.pin)
    # The load generator runs beside the simulator, off the 1-worker gateways' CPU: floating,
    # it took that CPU's time from the gateway under test. (2 workers get every CPU: see
    # production.py; the report says which cores each had.)
    WRK_CPUS.clear()
    WRK_CPUS.update(sim_cpus or ())
    env = production.env_base()
    sim_port = free_port()
    sim, sim_kind = launch.simulator(sim_port, env, sim_cpus)
    probe = wrk.request_body(launch.FAST_MODEL, False).encode()
    targets: list[Target] = []
    pg: ledger_db.Postgres | None = None
    services: production.Services | None = None
    sim.start()
    try:
        sim_startup = sim.wait_ready(sim_port, "POST", "/v1/chat/completions", probe, 60)
        # Postgres and Redis go on the simulator's CPU (not the gateways'): see cpu_plan.
        pg, pg_error = lineup.start_postgres(args, sim_cpus)
        services, svc_error = lineup.start_redis(args, pg, sim_cpus)
        cpus = (sim_cpus, gw_cpus)
        lineup.start_targets(
            args, sim_port, env, cpus, (pg, pg_error), (services, svc_error), targets
        )
        db_pids = [pg.postmaster_pid] if pg is not None else []
        db_pids += [services.redis_pid] if services is not None else []
        raw = run_scenarios(args, targets, sim, db_pids)
        for t in targets:
            if t.available and t.proc is not None:
                t.loaded_rss = t.proc.rss_bytes()
        lineup.run_bursts(args, targets)
        lineup.verify_ledgers(targets, pg)
        sim_info = {"kind": sim_kind, "startup_s": sim_startup, "rss": tree_rss_bytes(sim.pid)}
        meta = report.meta(args, sys.argv, sim_info, (sim_cpus, gw_cpus), t_begin, t_installed)
        meta["postgres"] = report.postgres_meta(pg, args.pg_durability == "on", db_pids)
        meta["redis"] = {"version": services.redis_version} if services is not None else None
    finally:
        for t in targets:
            production.stop(t)
        sim.stop()
        if services is not None:
            services.redis.close()
        if pg is not None:
            pg.close()
    results = report.build(meta, targets, raw, [asdict(s) for s in scenarios(args)])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.markdown(results)
    (args.out / "RESULTS.md").write_text(markdown)
    print(markdown)
    print(f"bench: wrote {args.out / 'RESULTS.md'} and {args.out / 'results.json'}")
    if args.strict and (bad := problems(results)):
        print("bench: --strict: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
