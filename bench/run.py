"""`make bench`: one interleaved, time-bounded load benchmark on loopback.

The same upstream simulator is measured behind: nothing ("direct"), Farebox (1 worker),
the LiteLLM proxy (1 worker, pinned version in its own venv) and a bare ASGI passthrough
(the ceiling for a Python gateway here). Writes bench/RESULTS.md and bench/results.json.

    .venv/bin/python bench/run.py                 # full run, ~5 minutes after installs
    .venv/bin/python bench/run.py --quick --skip-litellm   # ~1 minute smoke run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litellm_env
import report
import wrk
from targets import Proc, Target, free_port, tree_rss_bytes

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
FAREBOX_KEY = "bench-key"
SIM_KEY = "sim-key"
SLOW_MODEL = "sim-small::latency=50"


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    stream: bool
    slow: bool
    connections: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target")
    p.add_argument("--connections", type=int, default=64, help="concurrency for requests/s")
    p.add_argument("--latency-connections", type=int, default=10, help="concurrency, latency")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--pin", choices=["auto", "none"], default="auto",
                   help="auto: simulator on the last CPU, gateways on the others; wrk floats")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="per gateway, seconds")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s x 1 round, 1 s warm-up")
    p.add_argument("--skip-litellm", action="store_true", help="do not install/run LiteLLM")
    p.add_argument("--skip-farebox", action="store_true", help="do not run Farebox")
    p.add_argument("--out", type=Path, default=BENCH, help="where RESULTS.md/results.json go")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 2.0, 1, 1.0
    return args


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def simulator_argv(port: int) -> tuple[list[str], str]:
    gw = ROOT / "gateway"
    if (gw / "mock_upstream.py").exists() or (gw / "mock_upstream").is_dir():
        code = f"from gateway.mock_upstream import run; run('127.0.0.1', {port})"
        return [python(), "-c", code], "gateway.mock_upstream"
    dev = BENCH / "_dev_upstream.py"
    if dev.exists():
        return [python(), str(dev), str(port)], "bench/_dev_upstream.py (temporary stand-in)"
    raise SystemExit("bench: no simulator: gateway/mock_upstream is missing")


def cpu_plan(mode: str) -> tuple[set[int] | None, set[int] | None]:
    """(simulator cpus, gateway cpus)."""
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none" or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def post(port: int, key: str, model: str, stream: bool) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        conn.request("POST", "/v1/chat/completions", wrk.request_body(model, stream), headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, repr(exc).encode()
    finally:
        conn.close()


def check(target: Target) -> str | None:
    """One functional request per shape; an error message, or None when all pass."""
    for model, stream in ((target.model_fast, False), (target.model_fast, True),
                          (target.model_slow, False)):
        status, body = post(target.port, target.api_key, model, stream)
        want = b"[DONE]" if stream else b'"choices"'
        if status != 200 or want not in body:
            return f"check {model} stream={stream}: HTTP {status} {body[:200]!r}"
    return None


def start_gateways(args: argparse.Namespace, sim_port: int, cpus: set[int] | None,
                   env: dict[str, str]) -> list[Target]:
    targets: list[Target] = []
    pt_port = free_port()
    pt = Target("passthrough", pt_port, SIM_KEY, "sim-small", SLOW_MODEL, version="bench")
    pt.proc = Proc("passthrough", [python(), str(BENCH / "passthrough.py"), "--port", str(pt_port),
                   "--upstream", f"http://127.0.0.1:{sim_port}"], env, WORK / "passthrough.log",
                   cpus)
    targets.append(pt)
    if not args.skip_farebox:
        fb_port = free_port()
        fb = Target("farebox", fb_port, FAREBOX_KEY, "bench", "bench-slow",
                    version=report.dist_version("farebox"))
        exe = ROOT / ".venv" / "bin" / "farebox"
        fb.proc = Proc("farebox", [str(exe), "serve", "--config", str(BENCH / "farebox.yaml"),
                       "--host", "127.0.0.1", "--port", str(fb_port), "--workers", "1"],
                       {**env, "SIM_PORT": str(sim_port)}, WORK / "farebox.log", cpus)
        targets.append(fb)
    if not args.skip_litellm:
        lt_port = free_port()
        version = litellm_env.ensure_installed()
        lt = Target("litellm", lt_port, litellm_env.MASTER_KEY, "bench", "bench-slow",
                    version=version)
        cfg = litellm_env.write_config(WORK / "litellm.yaml", sim_port)
        lt.proc = Proc("litellm", litellm_env.argv(cfg, lt_port), litellm_env.env(env),
                       WORK / "litellm.log", cpus)
        targets.append(lt)
    health = {"passthrough": "/healthz", "farebox": "/healthz", "litellm": "/health/liveliness"}
    for t in targets:  # one at a time, so startup times are not contended
        assert t.proc is not None
        print(f"bench: starting {t.name}", flush=True)
        try:
            t.proc.start()
            t.startup_s = t.proc.wait_ready(t.port, "GET", health[t.name], None,
                                            args.startup_timeout * (2 if t.name == "litellm" else 1))
        except (OSError, RuntimeError) as exc:
            tail = t.proc.log_tail(6)
            t.mark_unavailable(f"{exc}" + (f"; log tail: {tail}" if tail else ""))
            print(f"bench: {t.name} unavailable: {exc}", flush=True)
    return targets


def measure(target: Target, sim: Proc, script: Path, sc: Scenario, seconds: float) -> dict[str, Any]:
    cpu0 = target.proc.cpu_seconds() if target.proc else 0.0
    sim0 = sim.cpu_seconds()
    res = wrk.run_wrk(target.url(), script, sc.connections, seconds, log=WORK / "wrk.log")
    cpu1 = target.proc.cpu_seconds() if target.proc else 0.0
    sim1 = sim.cpu_seconds()
    row: dict[str, Any] = res.to_dict()
    n = max(res.requests, 1)
    row["cpu_us_per_req"] = round((cpu1 - cpu0) / n * 1e6, 1) if target.proc else None
    row["sim_cpu_us_per_req"] = round((sim1 - sim0) / n * 1e6, 1)
    return row


def run_scenarios(args: argparse.Namespace, targets: list[Target], sim: Proc,
                  scenarios: list[Scenario]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in targets}
    for sc in scenarios:
        live = [t for t in targets if t.available]
        scripts = {t.name: wrk.write_script(WORK / f"{t.name}-{sc.key}.lua", t.api_key,
                                            t.model_slow if sc.slow else t.model_fast, sc.stream)
                   for t in live}
        print(f"bench: {sc.title}: warm-up", flush=True)
        for t in live:
            run_one(t, sim, scripts[t.name], sc, args.warmup, None)
        for rnd in range(args.rounds):
            live = [t for t in targets if t.available]
            shift = rnd % max(len(live), 1)  # rotate the order so no target always goes first
            for t in live[shift:] + live[:shift]:
                run_one(t, sim, scripts[t.name], sc, args.duration,
                        raw[t.name].setdefault(sc.key, []))
            line = "  ".join(f"{t.name}={raw[t.name][sc.key][-1]['ok_rps']:.0f}/s"
                             for t in live if raw[t.name].get(sc.key))
            print(f"bench: {sc.title}: round {rnd + 1}/{args.rounds}: {line}", flush=True)
    return raw


def run_one(t: Target, sim: Proc, script: Path, sc: Scenario, seconds: float,
            into: list[dict[str, Any]] | None) -> None:
    if not t.available:
        return
    try:
        row = measure(t, sim, script, sc, seconds)
    except (RuntimeError, OSError) as exc:
        t.mark_unavailable(f"wrk failed during {sc.key}: {exc}")
        return
    if t.proc is not None and not t.proc.alive():
        t.mark_unavailable(f"process died during {sc.key}; log: {t.proc.log_tail(6)}")
        return
    if into is not None:
        row["round"] = len(into) + 1
        into.append(row)
    time.sleep(0.3)  # let closed connections drain before the next target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_begin = time.time()
    WORK.mkdir(exist_ok=True)
    (WORK / "wrk.log").unlink(missing_ok=True)
    wrk.ensure_wrk()
    if not args.skip_litellm:
        litellm_env.ensure_installed()
    t_installed = time.time()
    sim_cpus, gw_cpus = cpu_plan(args.pin)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PYTHONUNBUFFERED"] = "1"
    sim_port = free_port()
    sim_cmd, sim_kind = simulator_argv(sim_port)
    sim = Proc("simulator", sim_cmd, env, WORK / "simulator.log", sim_cpus)
    probe = wrk.request_body("sim-small", False).encode()
    sim.start()
    targets: list[Target] = []
    try:
        sim_startup = sim.wait_ready(sim_port, "POST", "/v1/chat/completions", probe, 60)
        direct = Target("direct", sim_port, SIM_KEY, "sim-small", SLOW_MODEL)
        targets = [direct, *start_gateways(args, sim_port, gw_cpus, env)]
        time.sleep(2.0)  # settle before idle RSS
        for t in targets:
            if t.available and t.proc is not None:
                t.idle_rss = t.proc.rss_bytes()
        for t in targets:
            if t.available and (err := check(t)) is not None:
                t.mark_unavailable(err)
                print(f"bench: {t.name} unavailable: {err}", flush=True)
        scenarios = [
            Scenario("rps", f"req/s @c{args.connections}", False, False, args.connections),
            Scenario("rps_stream", f"req/s stream @c{args.connections}", True, False,
                     args.connections),
            Scenario("latency", f"latency @c{args.latency_connections}, 50 ms upstream", False,
                     True, args.latency_connections),
        ]
        raw = run_scenarios(args, targets, sim, scenarios)
        for t in targets:
            if t.available and t.proc is not None:
                t.loaded_rss = t.proc.rss_bytes()
        meta = report.meta(args, sys.argv, sim_kind, sim_startup, sim_cpus, gw_cpus,
                           t_begin, t_installed, tree_rss_bytes(sim.pid))
    finally:
        for t in targets:
            if t.proc is not None:
                t.proc.stop()
        sim.stop()
    results = report.build(meta, targets, raw, [s.__dict__ for s in scenarios])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.markdown(results)
    (args.out / "RESULTS.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
