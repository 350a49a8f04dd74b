"""Response-cache benchmark: exact-cache hits vs misses vs no cache vs the simulator direct.

    .venv/bin/python bench/cache_bench.py [--duration 5] [--connections 64] [--latency-ms 0]

One simulator process and one Farebox (`farebox serve --workers 1`, ledger off so only the
cache is measured), then wrk at `--connections` against:

| scenario | what |
|---|---|
| direct | wrk → simulator, no gateway |
| no-cache | a route without `cache:` (the baseline Farebox cost) |
| miss | the cached route, every request a new prompt (lookup + upstream + background store) |
| hit | the cached route, one prompt (served from the in-process LRU, no upstream call) |
| hit-stream | the same as a stream (the stored SSE chunks replayed) |

With `--latency-ms 50` the simulator answers like a real upstream, and the hit's latency is
that of the gateway alone. Results go to bench/.work/cache/results.json and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wrk
from launch import ROOT, SIM_KEY, python
from targets import Proc, free_port

WORK = Path(__file__).resolve().parent / ".work" / "cache"
KEY = "bench-cache-key"

CONFIG = """
auth:
  keys:
    - {name: bench, key: %(key)s}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:%(port)d/v1",
        api_key: %(sim_key)s}
deployments:
  sim@sim: {provider: sim, model: "%(model)s", price: {input: 0.1, output: 0.2}}
routes:
  cached: {targets: [sim@sim], cache: {mode: exact, ttl_s: 3600, max_entries: 200000}}
  plain: {targets: [sim@sim]}
"""

# A fixed body (every request the same: hits once stored), or one new prompt per request.
_STATIC = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.body = [==[{body}]==]
"""
_UNIQUE = """\
counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{{"model":"{model}","messages":[{{"role":"user",'
    .. '"content":"question {run} %d"}}],"max_tokens":16,"temperature":0}}', counter)
  return wrk.format("POST", "/v1/chat/completions",
    {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {key}"}}, body)
end
"""


def body(model: str, stream: bool) -> str:
    payload: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    if stream:
        payload["stream"] = True
    return json.dumps(payload, separators=(",", ":"))


def script(name: str, text: str) -> Path:
    path = WORK / f"{name}.lua"
    # wrk's done() reporter, shared with the main benchmark.
    path.write_text(text + "\n" + wrk._LUA.split("\n\n", 1)[1].format())
    return path


def _fresh_misses(scenario: str) -> None:
    """A new prompt prefix per run: wrk restarts its counter, and the cache remembers."""
    if scenario == "miss":
        script("miss", _UNIQUE.format(key=KEY, model="cached", run=uuid.uuid4().hex))


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=int, default=0, help="simulated upstream latency")
    args = parser.parse_args()
    wrk.ensure_wrk()
    WORK.mkdir(parents=True, exist_ok=True)
    model = "sim-small::tokens=16" + (f",latency={args.latency_ms}" if args.latency_ms else "")

    sim_port, gw_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sim = Proc(
        "simulator",
        [python(), "-c", f"from simulator import run; run('127.0.0.1', {sim_port})"],
        env,
        WORK / "simulator.log",
        {1},
    )
    config = WORK / "farebox-cache.yaml"
    config.write_text(CONFIG % {"key": KEY, "port": sim_port, "sim_key": SIM_KEY, "model": model})
    gw_env = {**env, "FAREBOX_LEDGER_ENABLED": "false", "FAREBOX_SPOOL_DIR": str(WORK / "spool")}
    exe = str(ROOT / ".venv" / "bin" / "farebox")
    argv = [exe, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(gw_port)]
    gateway = Proc("farebox", [*argv, "--workers", "1"], gw_env, WORK / "farebox.log", {0})
    sim.start()
    gateway.start()
    try:
        sim.wait_ready(sim_port, "GET", "/_stats", None, 30)
        gateway.wait_ready(gw_port, "GET", "/healthz", None, 60)
        scenarios = {
            "direct": (
                sim_port,
                script("direct", _STATIC.format(key=SIM_KEY, body=body(model, False))),
            ),
            "no-cache": (
                gw_port,
                script("plain", _STATIC.format(key=KEY, body=body("plain", False))),
            ),
            "miss": (gw_port, WORK / "miss.lua"),  # rewritten before every run, below
            "hit": (gw_port, script("hit", _STATIC.format(key=KEY, body=body("cached", False)))),
            "hit-stream": (
                gw_port,
                script("hit-stream", _STATIC.format(key=KEY, body=body("cached", True))),
            ),
        }
        runs: dict[str, list[wrk.WrkResult]] = {name: [] for name in scenarios}
        for name, (port, lua) in scenarios.items():
            # Warm up: connections open, and for the hit scenarios the entry is stored.
            _fresh_misses(name)
            wrk.run_wrk(_url(port), lua, args.connections, 1, cpus={1})
        # Rounds interleave the scenarios, so a noisy moment on the machine hits them all.
        for _ in range(args.rounds):
            for name, (port, lua) in scenarios.items():
                _fresh_misses(name)
                time.sleep(0.2)
                runs[name].append(
                    wrk.run_wrk(_url(port), lua, args.connections, args.duration, cpus={1})
                )
        results: dict[str, dict[str, float]] = {}
        for name, done in runs.items():
            results[name] = {
                "ok_rps": statistics.median(r.ok_rps for r in done),
                "p50_ms": statistics.median(r.p50_ms for r in done),
                "p99_ms": statistics.median(r.p99_ms for r in done),
                "errors": sum(r.non2xx + r.socket_errors for r in done),
            }
            m = results[name]
            print(
                f"{name:>10}: {m['ok_rps']:>9,.0f} req/s  p50 {m['p50_ms']:7.2f} ms  "
                f"p99 {m['p99_ms']:7.2f} ms  errors {m['errors']:.0f}  (median of {len(done)})",
                flush=True,
            )
        out = {
            "connections": args.connections,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "upstream_latency_ms": args.latency_ms,
            "cpus": os.cpu_count(),
            "results": results,
        }
        (WORK / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    finally:
        gateway.stop()
        sim.stop()


if __name__ == "__main__":
    main()
