"""Guard checks under load (issue 27), one gateway, one run: the same chat request on a
route without checks and on one with the default detectors (every built-in kind masked,
the injection heuristic flagged), interleaved round by round.

    .venv/bin/python bench/guard_load.py              # ~2 min -> bench/GUARD_LOAD.md
    .venv/bin/python bench/guard_load.py --rounds 3 --seconds 3   # smoke

One simulator (the last CPU) and one Farebox worker (the others) serving
`bench/farebox-guard.yaml` with the ledger off, wrk at 16 connections. Per round and route:
requests/s and the gateway's CPU (user+sys of its process tree) over the run ÷ requests, in
µs. The verdict is the median over rounds of (guarded − plain) CPU per request, which
cancels the machine's drift between rounds, against the issue's budget of 40 µs. The
typical support prompt is the one bench/guard.py times alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
from pathlib import Path

import launch
import production
import wrk
from targets import Proc, free_port

BENCH = launch.BENCH
WORK = launch.WORK / "guard"
CONFIG = BENCH / "farebox-guard.yaml"
ROUTES = ("plain", "guarded")
BUDGET_US = 40.0
PROMPT = (
    "Hi, my order from last week has not arrived yet. Can you check the status and tell me "
    "when it will be delivered? Thanks a lot for your help!"
)
SYSTEM = "You are a helpful support assistant for Acme Corp. Answer briefly and politely."


# Each request's question ends with its own tag of letters ("ref bqd"), as real traffic's
# questions differ: a route reads a text it has seen before from its memo, so the same body
# over and over would measure the memo, not the checks. The system prompt stays the same,
# as an app's does.
_SCRIPT = """\
local n = 0
local head, tail
local letters = "abcdefghijklmnopqrstuvwxyz"
local h = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {api_key}"}}
init = function(args)
  head = [==[{head}]==]
  tail = [==[{tail}]==]
end
local function tag(k)
  local s = ""
  repeat
    local r = k % 26
    s = s .. string.sub(letters, r + 1, r + 1)
    k = math.floor(k / 26)
  until k == 0
  return s
end
request = function()
  n = n + 1
  return wrk.format("POST", nil, h, head .. tag(n) .. tail)
end
"""
_MARK = "@@TAG@@"


def _script(route: str) -> str:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{PROMPT} Ref {_MARK}."},
    ]
    body = json.dumps({"model": route, "messages": messages, "max_tokens": 64})
    head, tail = body.split(_MARK)
    done = wrk._LUA[wrk._LUA.index("done = function") :].replace("{{", "{").replace("}}", "}")
    return _SCRIPT.format(api_key=launch.FAREBOX_KEY, head=head, tail=tail) + done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=BENCH / "GUARD_LOAD.md")
    args = parser.parse_args()
    wrk.ensure_wrk()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    sim_cpus, gw_cpus = launch.cpu_plan("auto")
    sim_port, gw_port = free_port(), free_port()
    env = production.env_base()
    sim, _ = launch.simulator(sim_port, env, sim_cpus, name="simulator-guard")
    gw_env = {
        **env,
        "SIM_PORT": str(sim_port),
        "FAREBOX_DATABASE_URL": f"sqlite+aiosqlite:///{WORK / 'ledger.db'}",
        "FAREBOX_SPOOL_DIR": str(WORK / "spool"),
        "FAREBOX_LEDGER_ENABLED": "false",
        "FAREBOX_METRICS_PORT": "0",
    }
    argv = [str(launch.ROOT / ".venv" / "bin" / "farebox"), "serve", "--config", str(CONFIG)]
    argv += ["--host", "127.0.0.1", "--port", str(gw_port), "--workers", "1"]
    gw = Proc("farebox-guard", argv, gw_env, WORK / "farebox.log", gw_cpus)
    scripts = {}
    for route in ROUTES:
        script = WORK / f"{route}.lua"
        script.write_text(_script(route))
        scripts[route] = script
    rounds: dict[str, list[tuple[float, float]]] = {r: [] for r in ROUTES}
    try:
        sim.start()
        sim.wait_ready(sim_port, "GET", "/_stats", None, 60)
        gw.start()
        gw.wait_ready(gw_port, "GET", "/healthz", None, 60)
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        for route in ROUTES:  # warm up
            wrk.run_wrk(url, scripts[route], args.connections, 2, cpus=sim_cpus)
            gw.wait_idle()
        for n in range(args.rounds):
            order = ROUTES if n % 2 == 0 else ROUTES[::-1]
            for route in order:
                cpu0 = gw.cpu_seconds()
                res = wrk.run_wrk(
                    url, scripts[route], args.connections, args.seconds, cpus=sim_cpus
                )
                cpu1 = gw.cpu_seconds()
                if res.non2xx or not gw.alive():
                    raise SystemExit(f"guard_load: {route}: {res.non2xx} errors; {gw.log_tail()}")
                served = max(res.requests, 1)
                rounds[route].append((served / args.seconds, (cpu1 - cpu0) / served * 1e6))
                gw.wait_idle()
                sim.wait_idle()
            print(
                f"round {n + 1}: " + ", ".join(f"{r} {rounds[r][-1][1]:.1f} µs" for r in ROUTES),
                flush=True,
            )
    finally:
        gw.stop()
        sim.stop()
    extra = [g[1] - p[1] for p, g in zip(rounds["plain"], rounds["guarded"], strict=True)]
    verdict_us = statistics.median(extra)
    verdict = "PASS" if verdict_us <= BUDGET_US else "MISS"
    rps = {r: statistics.median(x[0] for x in rounds[r]) for r in ROUTES}
    cpu = {r: statistics.median(x[1] for x in rounds[r]) for r in ROUTES}
    lines = [
        "# Guardrails under load (issue 27)",
        "",
        f"- **Date:** {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"`.venv/bin/python bench/guard_load.py` ({args.rounds} rounds × {args.seconds:g} s "
        f"per route, wrk at {args.connections} connections, routes interleaved)",
        "- **Setup:** one Farebox worker (ledger off) and one simulator on their own CPUs, "
        "`bench/farebox-guard.yaml`; the same support chat (system prompt and question, "
        "nothing found; each question ends with its own tag, so only the system prompt is "
        "a text the route has seen before) on a route without checks and on one with the "
        "default detectors.",
        "",
        "| route | requests/s (median) | gateway CPU µs per request (median) |",
        "|---|---:|---:|",
        *(f"| {r} | {rps[r]:,.0f} | {cpu[r]:.1f} |" for r in ROUTES),
        "",
        "Guarded − plain, CPU µs per request, per round: " + ", ".join(f"{x:.1f}" for x in extra),
        "",
        f"**{verdict}**: the checks add {verdict_us:.1f} µs of gateway CPU per request "
        f"(median of the rounds' differences); budget ≤ {BUDGET_US:.0f} µs. Requests/s "
        f"guarded ÷ plain: {rps['guarded'] / rps['plain']:.2f}.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
