"""The Responses API beside chat, one gateway, one run (`make bench-responses`).

    .venv/bin/python bench/responses_bench.py            # ~3 min -> bench/RESPONSES.md
    .venv/bin/python bench/responses_bench.py --quick    # smoke, to bench/.work/responses-quick/

One simulator (the last CPU) and one Farebox worker (the other CPUs) serving
`bench/farebox-responses.yaml` as the bare profile of `run.py` runs it (ledger off), three
routes on the same simulator: `chat` (Chat Completions), `resp-native` (`POST /v1/responses`
to a `responses_api: true` provider, relayed as is) and `resp-translated` (`POST
/v1/responses` translated to chat and back). Six scenarios — the three, non-stream and
stream — at the same concurrency and payload (one user message, 16 tokens answered,
`store: false`), interleaved round by round (order rotated, reversed every other round).

Per scenario: requests/s (median over rounds) and its ratio to chat; the gateway's CPU
(user+sys of its process tree, /proc) over each run ÷ requests completed, in µs, and the
ratio to chat (issue 23's budget: translated ≤ 1.15 × chat, non-stream and stream, a PASS /
MISS line each, judged on the median of the per-round ratios, which cancels the machine's
drift between rounds; the ratio of the medians beside it). Then the
simulator's received counts (per route: each has its own upstream model) against what the
gateway completed, and `responses_micro.py` (the translation functions alone, µs per call),
run first while nothing else of ours is running.

`--ledger postgres [--store]`: the ledger (and with --store the stored Responses) in a durable
PostgreSQL on the simulator's CPU; `--only KEY,…`: a subset of the scenarios. See --help.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import launch
import ledger_db
import production
import responses_report
import wrk
from targets import (
    Proc,
    children_cpu_seconds,
    free_port,
    machine_busy_seconds,
    tree_cpu_seconds,
    wait_tree_idle,
)

BENCH = launch.BENCH
WORK = launch.WORK / "responses"
CONFIG = BENCH / "farebox-responses.yaml"
ROUTES = ("chat", "resp-native", "resp-translated")
UPSTREAM_MODEL = {
    "chat": "sim-chat",
    "resp-native": "sim-native",
    "resp-translated": "sim-translated",
}
Row = dict[str, Any]
SKIPPED = "skipped (--only)"


@dataclass(frozen=True)
class Scenario:
    route: str
    stream: bool

    @property
    def key(self) -> str:
        return self.route + ("-stream" if self.stream else "")

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.route == "chat" else "/v1/responses"

    def body(self, max_tokens: int, store: bool = False) -> str:
        message = [{"role": "user", "content": "hello"}]
        payload: dict[str, Any] = {"model": self.route}
        if self.route == "chat":
            payload |= {"messages": message, "max_tokens": max_tokens}
        else:
            # store: false by default — the translation is measured, not the conversation
            # store (which needs the ledger database); --store leaves the API's default.
            payload |= {"input": message, "max_output_tokens": max_tokens}
            if not store:
                payload["store"] = False
        if self.stream:
            payload["stream"] = True
        return json.dumps(payload, separators=(",", ":"))


SCENARIOS = [Scenario(route, stream) for stream in (False, True) for route in ROUTES]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per scenario")
    p.add_argument("--connections", type=int, default=64, help="concurrency (all scenarios)")
    # The simulator answers 16 tokens; a larger cap ends them with `stop` / `completed`.
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens / max_output_tokens")
    p.add_argument(
        "--pin",
        choices=["auto", "none"],
        default="auto",
        help="auto: simulator on the last CPU, the gateway on the others",
    )
    p.add_argument(
        "--wrk-cpu",
        choices=["any", "sim"],
        default="any",
        help="any: wrk unpinned (as run.py); sim: wrk on the simulator's CPU, so the\n"
        "gateway's CPU runs nothing but the gateway",
    )
    p.add_argument(
        "--ledger",
        choices=["off", "postgres"],
        default="off",
        help="off: as run.py's farebox-off; postgres: the ledger in a PostgreSQL started\n"
        "here (durable settings, on the simulator's CPU), its CPU reported per request",
    )
    p.add_argument(
        "--store",
        action="store_true",
        help="Responses stored (the API's default, no `store: false`); needs --ledger postgres",
    )
    p.add_argument(
        "--micro-seconds", type=float, default=None, help="per micro repeat (0.2; 0: skip it)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s x 1 round, 1 s warm-up")
    p.add_argument(
        "--only",
        type=lambda v: [k.strip() for k in v.split(",") if k.strip()],
        default=None,
        help="comma-separated scenarios to run (e.g. chat-stream,resp-translated-stream),\n"
        "to iterate on one path; the others are reported as skipped",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output dir (default: bench/; with --quick: bench/.work/responses-quick)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1: a scenario unavailable, a request failed, a budget missed",
    )
    args = p.parse_args(argv)
    keys = [sc.key for sc in SCENARIOS]
    if args.only and (unknown := sorted(set(args.only) - set(keys))):
        p.error(f"--only: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(keys)}")
    if args.store and args.ledger != "postgres":
        p.error("--store needs --ledger postgres (responses are stored in the ledger database)")
    if args.quick:
        args.duration, args.rounds, args.warmup = 2.0, 1, 1.0
    if args.micro_seconds is None:
        args.micro_seconds = 0.05 if args.quick else 0.2
    if args.out is None:
        args.out = launch.WORK / "responses-quick" if args.quick else BENCH
    return args


def _request(port: int, method: str, path: str, body: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {launch.FAREBOX_KEY}"}
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, repr(exc).encode()
    finally:
        conn.close()


def check(port: int, sc: Scenario, body: str) -> str | None:
    """One request in the scenario's shape: None if its answer looks right, else why not."""
    status, answer = _request(port, "POST", sc.path, body)
    if sc.route == "chat":
        want = [b"[DONE]"] if sc.stream else [b'"choices"']
    elif sc.stream:
        want = [
            b"event: response.created",
            b"event: response.output_text.delta",
            b"event: response.completed",
        ]
    else:
        want = [b'"object":"response"', b'"status":"completed"', b'"output_text"']
    missing = [w.decode() for w in want if w not in answer]
    if status != 200 or missing:
        print(f"bench-responses: {sc.key}: HTTP {status}: {answer[:300]!r}", flush=True)
        return f"HTTP {status}" if status != 200 else f"the answer lacks {', '.join(missing)}"
    return None


def gateway(sim_port: int, cpus: set[int] | None, pg_url: str | None) -> tuple[Proc, int]:
    """`farebox serve` on farebox-responses.yaml, 1 worker; ledger off (as run.py's
    farebox-off) or in Postgres at pg_url; its spool under bench/.work/responses/."""
    port = free_port()
    data = WORK / "farebox"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    env = {
        **production.env_base(),
        "SIM_PORT": str(sim_port),
        "FAREBOX_DATABASE_URL": pg_url or f"sqlite+aiosqlite:///{data / 'ledger.db'}",
        "FAREBOX_SPOOL_DIR": str(data / "spool"),
        "FAREBOX_LEDGER_ENABLED": "true" if pg_url else "false",
        "FAREBOX_METRICS_PORT": "0",
    }
    argv = [str(launch.ROOT / ".venv" / "bin" / "farebox"), "serve", "--config", str(CONFIG)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return Proc("farebox-responses", argv, env, WORK / "farebox.log", cpus), port


def micro(cpus: set[int] | None, seconds: float) -> list[Row] | str:
    """responses_micro.py in its own process on the gateway's CPUs: its rows, or why not."""
    if seconds <= 0:
        return "skipped (--micro-seconds 0)"
    argv = [launch.python(), str(BENCH / "responses_micro.py"), "--json", "--seconds", str(seconds)]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if out.returncode != 0:
        return f"responses_micro.py exited {out.returncode}: {out.stderr.strip()[-300:]}"
    rows: list[Row] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def stored(pg: ledger_db.Postgres, served: int) -> Row:
    """After the gateway stopped: rows in the `responses` table against the Responses
    requests it completed, and the saves its log says failed (a timeout, say)."""
    sql = "SELECT (SELECT count(*) FROM responses), sessions FROM pg_stat_database"
    out = pg.server.psql(f"{sql} WHERE datname = current_database()", ledger_db.DB_NAME)
    rows, sessions = (int(v) for v in out.strip().split("|"))
    log = (WORK / "farebox.log").read_text(errors="replace")
    failures = log.count(": save failed (")
    # sessions: connections the gateway opened to the ledger database over the whole run.
    return {"rows": rows, "served": served, "save_failures": failures, "sessions": sessions}


class Run:
    """The gateway, the simulator, and what each scenario measured."""

    def __init__(
        self, args: argparse.Namespace, gw: tuple[Proc, int], sim: Proc, db_pid: int | None
    ) -> None:
        self.args, (self.gw, self.gw_port), self.sim, self.db_pid = args, gw, sim, db_pid
        self.scripts: dict[str, Path] = {}
        self.rounds: dict[str, list[Row]] = {sc.key: [] for sc in SCENARIOS}
        self.unavailable: dict[str, str] = {}
        self.served = dict.fromkeys(ROUTES, 0)  # completed by the gateway, warm-ups and checks too
        self.abandoned = dict.fromkeys(ROUTES, 0)  # upper bound: in flight when wrk stopped

    def prepare(self) -> None:
        for sc in SCENARIOS:
            if self.args.only and sc.key not in self.args.only:
                self.unavailable[sc.key] = SKIPPED
                continue
            lua = WORK / f"{sc.key}.lua"
            body = sc.body(self.args.max_tokens, self.args.store)
            lua.write_text(wrk._LUA.format(api_key=launch.FAREBOX_KEY, body=body))
            self.scripts[sc.key] = lua
            if (why := check(self.gw_port, sc, body)) is not None:
                self.unavailable[sc.key] = why
                print(f"bench-responses: {sc.key} unavailable: {why}", flush=True)
            else:
                self.served[sc.route] += 1

    def live(self) -> list[Scenario]:
        return [sc for sc in SCENARIOS if sc.key not in self.unavailable]

    def once(self, sc: Scenario, seconds: float) -> Row:
        def sample() -> tuple[float, ...]:
            return (
                time.perf_counter(),
                self.gw.cpu_seconds(),
                self.sim.cpu_seconds(),
                children_cpu_seconds(),
                machine_busy_seconds(),
                tree_cpu_seconds(self.db_pid) if self.db_pid else 0.0,
            )

        url = f"http://127.0.0.1:{self.gw_port}{sc.path}"
        t0, gw0, sim0, wrk0, busy0, db0 = sample()
        res = wrk.run_wrk(
            url,
            self.scripts[sc.key],
            self.args.connections,
            seconds,
            cpus=self.args.wrk_cpus,
            log=WORK / "wrk.log",
        )
        t1, gw1, sim1, wrk1, busy1, db1 = sample()
        if not self.gw.alive():
            raise RuntimeError(f"the gateway died during {sc.key}: {self.gw.log_tail()}")
        self.served[sc.route] += res.requests - res.non2xx
        self.abandoned[sc.route] += self.args.connections
        n, wall = max(res.requests, 1), t1 - t0
        row: Row = res.to_dict()
        row["cpu_us_per_req"] = round((gw1 - gw0) / n * 1e6, 1)
        row["sim_cpu_us_per_req"] = round((sim1 - sim0) / n * 1e6, 1)
        row["db_cpu_us_per_req"] = round((db1 - db0) / n * 1e6, 1) if self.db_pid else None
        row["gateway_cores"] = round((gw1 - gw0) / wall, 2)
        ours = (gw1 - gw0) + (sim1 - sim0) + (wrk1 - wrk0) + (db1 - db0)
        row["other_cores"] = round(max(0.0, (busy1 - busy0) - ours) / wall, 2)
        # In-flight requests wrk abandoned finish now, off the next run's clock.
        drain = self.gw.wait_idle() + self.sim.wait_idle()
        row["drain_s"] = round(drain + (wait_tree_idle(self.db_pid) if self.db_pid else 0.0), 2)
        return row

    def scenarios(self) -> None:
        live = self.live()
        print("bench-responses: warm-up", flush=True)
        for sc in live:
            self.once(sc, self.args.warmup)
        for rnd in range(self.args.rounds):
            shift = rnd % max(len(live), 1)
            order = live[shift:] + live[:shift]
            for sc in reversed(order) if rnd % 2 else order:
                row = self.once(sc, self.args.duration)
                row["round"] = rnd + 1
                self.rounds[sc.key].append(row)
            line = "  ".join(
                f"{sc.key}={self.rounds[sc.key][-1]['ok_rps']:.0f}/s,"
                f"{self.rounds[sc.key][-1]['cpu_us_per_req']:.0f}µs"
                for sc in live
            )
            print(f"bench-responses: round {rnd + 1}/{self.args.rounds}: {line}", flush=True)

    def simulator_counts(self, sim_port: int) -> Row:
        """What the simulator received per route (its upstream model) and per wire."""
        conn = http.client.HTTPConnection("127.0.0.1", sim_port, timeout=10)
        try:
            conn.request("GET", "/_stats")
            stats = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        requests = stats.get("requests", {})
        received = {r: requests.get(m, {}).get("total", 0) for r, m in UPSTREAM_MODEL.items()}
        endpoints = stats.get("endpoints", {})
        return {
            "received": received,
            "served": dict(self.served),
            "abandoned_max": dict(self.abandoned),
            "endpoints": {k: endpoints.get(k, 0) for k in ("chat", "responses")},
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the finally stops servers
    started = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "wrk.log").unlink(missing_ok=True)
    wrk.ensure_wrk()
    root = launch.ROOT
    launch.precompile(
        launch.python(),
        [
            *launch.site_packages(root / ".venv"),
            root / "gateway",
            root / "routing",
            root / "simulator",
        ],
    )
    sim_cpus, gw_cpus = launch.cpu_plan(args.pin)
    args.wrk_cpus = sim_cpus if args.wrk_cpu == "sim" else None
    print("bench-responses: micro-benchmark of the translation functions", flush=True)
    micro_rows = micro(gw_cpus, args.micro_seconds)
    sim_port = free_port()
    sim, _ = launch.simulator(sim_port, production.env_base(), sim_cpus, name="simulator-responses")
    pg: ledger_db.Postgres | None = None
    gw: Proc | None = None
    try:
        if args.ledger == "postgres":
            print("bench-responses: starting PostgreSQL for the ledger", flush=True)
            pg = ledger_db.start(WORK / "postgres", sim_cpus, durable=True)
            if (
                err := ledger_db.migrate(launch.python(), pg.url, production.env_base())
            ) is not None:
                raise SystemExit(f"bench-responses: ledger migration failed: {err}")
        gw, gw_port = gateway(sim_port, gw_cpus, pg.url if pg else None)
        sim.start()
        sim.wait_ready(sim_port, "GET", "/_stats", None, 60)
        gw.start()
        startup = gw.wait_ready(gw_port, "GET", "/healthz", None, 60)
        print(f"bench-responses: gateway up in {startup:.1f} s", flush=True)
        run = Run(args, (gw, gw_port), sim, pg.postmaster_pid if pg else None)
        run.prepare()
        run.scenarios()
        sim.wait_idle()
        counts = run.simulator_counts(sim_port)
        gw.stop()
        if pg is not None and args.store:
            served = run.served["resp-native"] + run.served["resp-translated"]
            counts["store"] = stored(pg, served)
    finally:
        if gw is not None:
            gw.stop()
        sim.stop()
        if pg is not None:
            pg.close()
    results = responses_report.build(
        args,
        sys.argv,
        run.rounds,
        run.unavailable,
        counts,
        micro_rows,
        (sim_cpus, gw_cpus),
        time.time() - started,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "responses.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = responses_report.markdown(results)
    (args.out / "RESPONSES.md").write_text(markdown)
    print(markdown)
    print(f"bench-responses: wrote {args.out / 'RESPONSES.md'} and {args.out / 'responses.json'}")
    if args.strict and (bad := responses_report.problems(results)):
        print("bench-responses: --strict: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
