"""`make bench`: one interleaved, time-bounded load benchmark on loopback.

The same upstream simulator is measured behind: nothing ("direct"), Farebox (1 worker),
the LiteLLM proxy (1 worker, pinned version in its own venv) and a bare ASGI passthrough
(the ceiling for a Python gateway here). Writes bench/RESULTS.md and bench/results.json.

    .venv/bin/python bench/run.py                           # full run, ~5 min after installs
    .venv/bin/python bench/run.py --quick --skip-litellm    # ~1 min smoke run, written
                                                            # to bench/.work/quick/
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import launch
import litellm_env
import report
import wrk
from targets import (
    Proc,
    Target,
    children_cpu_seconds,
    free_port,
    machine_busy_seconds,
    tree_rss_bytes,
)

BENCH = Path(__file__).resolve().parent
WORK = launch.WORK
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    stream: bool
    slow: bool
    connections: int
    duration: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument(
        "--latency-duration", type=float, default=10.0, help="seconds per latency run (p99)"
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target")
    p.add_argument("--connections", type=int, default=64, help="concurrency for requests/s")
    p.add_argument("--latency-connections", type=int, default=10, help="concurrency, latency")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument(
        "--pin",
        choices=["auto", "none"],
        default="auto",
        help="auto: simulator on the last CPU, gateways on the others, wrk floats",
    )
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds (LiteLLM: 2x)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s x 1 round, 1 s warm-up")
    p.add_argument("--skip-litellm", action="store_true", help="do not install/run LiteLLM")
    p.add_argument("--skip-farebox", action="store_true", help="do not run Farebox")
    p.add_argument(
        "--farebox-ledger",
        choices=["on", "off"],
        default="on",
        help="Farebox's ledger (on: fresh migrated SQLite under bench/.work/farebox)",
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
        args.duration, args.latency_duration, args.rounds, args.warmup = 2.0, 2.0, 1, 1.0
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
    return out


def cpu_plan(mode: str) -> tuple[set[int] | None, set[int] | None]:
    """(simulator CPUs, gateway CPUs); wrk is never pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none" or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    c, lc, d = args.connections, args.latency_connections, args.duration
    return [
        Scenario("rps", f"req/s @c{c}", stream=False, slow=False, connections=c, duration=d),
        Scenario("rps_stream", f"req/s stream @c{c}", stream=True, slow=False, connections=c,
                 duration=d),
        Scenario("latency", f"latency @c{lc}, 50 ms upstream", stream=False, slow=True,
                 connections=lc, duration=args.latency_duration),
    ]  # fmt: skip


def measure(t: Target, sim: Proc, script: Path, sc: Scenario, seconds: float) -> dict[str, Any]:
    def sample() -> tuple[float, float, float, float, float]:
        gateway = t.proc.cpu_seconds() if t.proc else 0.0
        return (time.perf_counter(), gateway, sim.cpu_seconds(), children_cpu_seconds(),
                machine_busy_seconds())  # fmt: skip

    t0, gw0, sim0, wrk0, busy0 = sample()
    res = wrk.run_wrk(t.url(), script, sc.connections, seconds, log=WORK / "wrk.log")
    t1, gw1, sim1, wrk1, busy1 = sample()
    row: dict[str, Any] = res.to_dict()
    n = max(res.requests, 1)
    row["cpu_us_per_req"] = round((gw1 - gw0) / n * 1e6, 1) if t.proc else None
    row["sim_cpu_us_per_req"] = round((sim1 - sim0) / n * 1e6, 1)
    row["wrk_cores"] = round((wrk1 - wrk0) / (t1 - t0), 2)
    # CPU used by everything else on the machine during the run, in cores: the noise.
    ours = (gw1 - gw0) + (sim1 - sim0) + (wrk1 - wrk0)
    row["other_cores"] = round(max(0.0, (busy1 - busy0) - ours) / (t1 - t0), 2)
    return row


def run_one(
    t: Target, sim: Proc, script: Path, sc: Scenario, seconds: float, into: Rows | None
) -> None:
    if not t.available:
        return
    try:
        row = measure(t, sim, script, sc, seconds)
    except (RuntimeError, OSError) as exc:
        t.mark_unavailable(f"wrk failed during {sc.key}: {exc}")
        return
    if t.proc is not None and not t.proc.alive():
        t.mark_unavailable(f"process died during {sc.key}; log: {t.proc.log_tail()}")
        return
    # wrk abandons in-flight requests at the end; a gateway still working through them
    # would steal CPU from the next run, so wait until it (and the simulator) is idle.
    row["drain_s"] = round((t.proc.wait_idle() if t.proc else 0.0) + sim.wait_idle(), 2)
    if into is not None:
        row["round"] = len(into) + 1
        into.append(row)


def run_scenarios(
    args: argparse.Namespace, targets: list[Target], sim: Proc
) -> dict[str, dict[str, Rows]]:
    raw: dict[str, dict[str, Rows]] = {t.name: {} for t in targets}
    for sc in scenarios(args):
        scripts = {}
        for t in targets:
            model = t.model_slow if sc.slow else t.model_fast
            lua = WORK / f"{t.name}-{sc.key}.lua"
            scripts[t.name] = wrk.write_script(lua, t.api_key, model, sc.stream)
        print(f"bench: {sc.title}: warm-up", flush=True)
        for t in targets:
            run_one(t, sim, scripts[t.name], sc, args.warmup, None)
        for rnd in range(args.rounds):
            live = [t for t in targets if t.available]
            shift = rnd % max(len(live), 1)  # rotate the order: no target always goes first
            for t in live[shift:] + live[:shift]:
                rows = raw[t.name].setdefault(sc.key, [])
                run_one(t, sim, scripts[t.name], sc, sc.duration, rows)
            done = [t for t in live if raw[t.name].get(sc.key)]
            line = "  ".join(f"{t.name}={raw[t.name][sc.key][-1]['ok_rps']:.0f}/s" for t in done)
            print(f"bench: {sc.title}: round {rnd + 1}/{args.rounds}: {line}", flush=True)
    return raw


def start_targets(
    args: argparse.Namespace,
    sim_port: int,
    env: dict[str, str],
    cpus: set[int] | None,
    targets: list[Target],
) -> None:
    """Fill `targets` (in place, so the caller can stop whatever started if interrupted)."""
    targets.append(Target("direct", sim_port, launch.SIM_KEY, launch.FAST_MODEL, launch.SLOW_MODEL))
    gateways = [launch.passthrough(sim_port, env, cpus)]
    if not args.skip_farebox:
        gateways.append(launch.farebox(sim_port, env, cpus, args.farebox_ledger == "on"))
    if not args.skip_litellm:
        gateways.append(launch.litellm(sim_port, env, cpus, litellm_env.pinned_version()))
    for t in gateways:  # one at a time, so startup times are not contended
        targets.append(t)
        launch.start(t, args.startup_timeout * (2 if t.name == "litellm" else 1))
    time.sleep(2.0)  # settle, then idle RSS before any request
    for t in gateways:
        if t.available and t.proc is not None:
            t.idle_rss = t.proc.rss_bytes()
    for t in targets:
        if t.available and (err := launch.check(t)) is not None:
            t.mark_unavailable(err)
            print(f"bench: {t.name} unavailable: {err}", flush=True)


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
    sim_cpus, gw_cpus = cpu_plan(args.pin)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PYTHONUNBUFFERED"] = "1"
    sim_port = free_port()
    sim, sim_kind = launch.simulator(sim_port, env, sim_cpus)
    probe = wrk.request_body(launch.FAST_MODEL, False).encode()
    targets: list[Target] = []
    sim.start()
    try:
        sim_startup = sim.wait_ready(sim_port, "POST", "/v1/chat/completions", probe, 60)
        start_targets(args, sim_port, env, gw_cpus, targets)
        raw = run_scenarios(args, targets, sim)
        for t in targets:
            if t.available and t.proc is not None:
                t.loaded_rss = t.proc.rss_bytes()
        sim_info = {"kind": sim_kind, "startup_s": sim_startup, "rss": tree_rss_bytes(sim.pid)}
        meta = report.meta(args, sys.argv, sim_info, (sim_cpus, gw_cpus), t_begin, t_installed)
    finally:
        for t in targets:
            if t.proc is not None:
                t.proc.stop()
        sim.stop()
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
