"""Batch fill on a dedicated GPU beside live traffic (issue 24, acceptance 2): `make bench-batch`.

    .venv/bin/python bench/batch_fill_bench.py              # ~3 min -> bench/BATCH.md, batch.json
    .venv/bin/python bench/batch_fill_bench.py --quick      # smoke, to bench/.work/batch-quick/
    .venv/bin/python bench/batch_fill_bench.py --live-only  # the live half alone (no batch)

The simulator plays one dedicated GPU (`sim-gpu::slots=N,latency=L`: N slots, each request
holds one for L ms, the rest wait FIFO; simulator/gpu.py). One Farebox worker serves it as a
`kind: dedicated` provider with `max_concurrency: N`, ledger in a durable PostgreSQL (or
`--ledger sqlite`). Live traffic is a closed loop of round(0.7 N) clients, each sending its next
chat request as soon as the last one answered, for the whole run, so live in-flight is 70 % of
`max_concurrency` all along (an open loop at the matching rate would put more than N requests
in flight by chance alone, queueing at the GPU with or without a batch; the closed loop holds
the load the acceptance names, and each request's latency is still measured on its own).

Windows, one after another under that same load:
1. `direct`: the load straight to the simulator: the upstream's own latency (the baseline);
2. `before`: through Farebox, no batch;
3. `with batch`: a 5,000-line batch submitted with the OpenAI SDK (`files.create` +
   `batches.create`) on the same route, whose plan picks the dedicated deployment, so it runs
   on path `dedicated_fill`; the window lasts until the batch completes;
4. `after`: no batch again — `before` and `after` bracket the run's noise.
Per window: live p50/p99, added latency (Farebox − direct, same percentile), the GPU's
utilization (Δ busy slot-seconds ÷ (N × Δt), from the simulator's `/_stats`), its peak slots in
use and how many requests queued at it. Then the batch: lines completed in the window, its
path, and its ledger cost (sum of `cost_usd` of the attempts with role `batch`: $0 on a
dedicated GPU). `--live-only` runs windows 1, 2 and 4 (the harness and the live half).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import batch_fill_report
import launch
import ledger_db
from targets import Proc, free_port, machine_busy_seconds, tree_cpu_seconds

BENCH = launch.BENCH
KEY = "bench-key"
ROUTE = "live"
SIM_MODEL = "sim-gpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--slots", type=int, default=16, help="GPU slots = max_concurrency (N)")
    p.add_argument("--load", type=float, default=0.7, help="live clients = round(load × N)")
    p.add_argument("--service-ms", type=float, default=50.0, help="GPU time per request (ms)")
    p.add_argument("--headroom", type=float, default=0.1, help="batch.fill_headroom")
    p.add_argument("--lines", type=int, default=5000, help="batch lines")
    p.add_argument("--window", type=float, default=20.0, help="seconds of each live-only window")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before each window")
    p.add_argument("--max-batch-s", type=float, default=600.0, help="give up on the batch after")
    p.add_argument("--ledger", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--pin", choices=["auto", "none"], default="auto")
    p.add_argument("--live-only", action="store_true", help="no batch: windows 1, 2 and 4")
    p.add_argument("--quick", action="store_true", help="500 lines, 5 s windows, to .work/")
    p.add_argument("--strict", action="store_true", help="exit 1 when a verdict is a MISS")
    p.add_argument("--render", action="store_true", help="only rewrite BATCH.md from batch.json")
    args = p.parse_args(argv)
    if args.quick:
        args.lines, args.window, args.warmup = min(args.lines, 500), 5.0, 1.0
    return args


# -- live load (bench/batch_fill_load.py, its own process) -------------------------------


class Load:
    """Closed-loop clients in a child process; `stop()` returns every answer as
    (start, seconds, ok), start on the shared monotonic clock."""

    def __init__(self, port: int, model: str, auth: str, clients: int, out: Path) -> None:
        self.out = out
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        argv = [launch.python(), str(BENCH / "batch_fill_load.py"), url, model, auth]
        self.popen = subprocess.Popen(
            [*argv, str(clients), str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.popen.stdout is not None
        if self.popen.stdout.readline().strip() != b"ready":
            raise SystemExit("bench: the load generator did not start")

    def stop(self) -> list[tuple[float, float, bool]]:
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        self.popen.wait(60)
        with self.out.open() as lines:
            return [(float(a), float(b), bool(c)) for a, b, c in map(json.loads, lines)]


def between(
    samples: list[tuple[float, float, bool]], t0: float, t1: float
) -> list[tuple[float, bool]]:
    return [(s, ok) for start, s, ok in samples if t0 <= start < t1]


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))]


# -- simulator and gateway --------------------------------------------------------------


def sim_call(sim: int, method: str, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", sim, timeout=30)
    try:
        conn.request(method, path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def gpu_now(sim: int) -> dict[str, Any]:
    return dict(sim_call(sim, "GET", "/_stats").get("gpus", {}).get(SIM_MODEL, {}))


def gpu_mark(sim: int) -> float:
    """Restart the simulator's counters (leases in flight stay); the window's start."""
    sim_call(sim, "POST", "/_reset")
    return time.monotonic()


def write_config(path: Path, sim: int, args: argparse.Namespace) -> str:
    model = f"{SIM_MODEL}::slots={args.slots},latency={args.service_ms:g}"
    path.write_text(
        f"""auth:
  keys:
    - {{name: bench, key: {KEY}}}
batch: {{fill_headroom: {args.headroom}, poll_interval_s: 0.2}}
providers:
  gpu: {{kind: dedicated, protocol: openai, api_base: "http://127.0.0.1:{sim}/v1",
        api_key: sim-key, hourly_usd: 3.99, max_concurrency: {args.slots}}}
deployments:
  llama@gpu: {{provider: gpu, model: "{model}"}}
routes:
  {ROUTE}: {{strategy: direct, targets: [llama@gpu]}}
"""
    )
    return model


def batch_file(lines: int) -> bytes:
    out = io.BytesIO()
    for n in range(1, lines + 1):
        body = {
            "model": ROUTE,
            "messages": [{"role": "user", "content": f"summarise ticket {n}"}],
            "max_tokens": 16,
        }
        line = {"custom_id": f"t-{n}", "method": "POST", "url": "/v1/chat/completions"}
        out.write(json.dumps({**line, "body": body}, separators=(",", ":")).encode() + b"\n")
    return out.getvalue()


def submit_batch(port: int, lines: int) -> Any:
    import openai  # the real SDK, unchanged

    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=2)
    uploaded = sdk.files.create(file=("tickets.jsonl", batch_file(lines)), purpose="batch")
    return sdk, sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def ledger_batch(url: str, pg: ledger_db.Postgres | None, batch_id: str) -> dict[str, Any]:
    """The batch's path and its attempts (role batch) from the ledger."""
    queries = {
        "path": f"SELECT path FROM batches WHERE id = '{batch_id}'",
        "attempts": "SELECT count(*), coalesce(sum(a.cost_usd), 0), "
        "sum(CASE WHEN a.http_status = 200 THEN 1 ELSE 0 END) FROM attempts a "
        f"JOIN requests r ON r.id = a.request_id WHERE r.batch_id = '{batch_id}' "
        "AND a.role = 'batch'",
        "kinds": "SELECT DISTINCT a.provider_kind FROM attempts a JOIN requests r "
        f"ON r.id = a.request_id WHERE r.batch_id = '{batch_id}'",
    }
    rows: dict[str, list[list[str]]] = {}
    for name, sql in queries.items():
        if pg is not None:
            text = pg.server.psql(sql, ledger_db.DB_NAME)
            rows[name] = [line.split("|") for line in text.splitlines() if line]
        else:
            with sqlite3.connect(url.split("///", 1)[1]) as db:
                rows[name] = [[str(v) for v in r] for r in db.execute(sql).fetchall()]
    count, cost, ok = rows["attempts"][0] if rows["attempts"] else ("0", "0", "0")
    return {
        "path": rows["path"][0][0] if rows["path"] else None,
        "attempts": int(count),
        "attempts_200": int(ok or 0),
        "cost_usd": cost,
        "provider_kinds": sorted(r[0] for r in rows["kinds"]),
    }


# -- the run ----------------------------------------------------------------------------

Window = tuple[str, float, float, dict[str, Any]]


def window_row(
    samples: list[tuple[float, float, bool]], window: Window, slots: int
) -> dict[str, Any]:
    name, t0, t1, gpu = window
    got = between(samples, t0, t1)
    lat = [s * 1000 for s, ok in got if ok]
    return {
        "window": name,
        "seconds": round(t1 - t0, 1),
        "live_requests": len(got),
        "live_failed": sum(1 for _, ok in got if not ok),
        "p50_ms": round(percentile(lat, 0.50), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "gpu_utilization": gpu.get("utilization", 0.0),
        "gpu_peak_in_use": gpu.get("peak_in_use"),
        "gpu_queued": gpu.get("queued"),
        "gpu_queue_wait_p99_ms": gpu.get("queue_wait_ms", {}).get("p99"),
        "gpu_acquired": gpu.get("acquired"),
    }


def measure(sim: int, seconds: float, name: str) -> Window:
    t0 = gpu_mark(sim)
    time.sleep(seconds)  # the window: the live load runs meanwhile
    window = (name, t0, time.monotonic(), gpu_now(sim))
    print(f"bench: {name}: GPU {window[3]}", flush=True)
    return window


def batch_window(sim: int, gw: int, args: argparse.Namespace) -> tuple[Window, dict[str, Any]]:
    t0 = gpu_mark(sim)
    sdk, batch = submit_batch(gw, args.lines)
    progress: list[tuple[float, int]] = []
    while time.monotonic() - t0 < args.max_batch_s:
        batch = sdk.batches.retrieve(batch.id)
        counts = batch.request_counts
        progress.append((round(time.monotonic() - t0, 2), counts.completed if counts else 0))
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(0.5)
    window = ("with batch", t0, time.monotonic(), gpu_now(sim))
    counts = batch.request_counts
    info = {
        "id": batch.id,
        "status": batch.status,
        "metadata": batch.metadata,
        "lines": args.lines,
        "completed": counts.completed if counts else 0,
        "failed": counts.failed if counts else 0,
        "seconds": round(window[2] - t0, 1),
        "progress": progress[:: max(1, len(progress) // 40)],
    }
    print(f"bench: with batch: GPU {window[3]}; batch {batch.status}", flush=True)
    return window, info


def run_windows(
    args: argparse.Namespace, sim: int, gw: int, model: str, work: Path
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    clients = max(1, round(args.load * args.slots))
    direct = Load(sim, model, "sim-key", clients, work / "direct.jsonl")
    time.sleep(args.warmup)
    windows = [measure(sim, args.window, "direct")]
    rows = [window_row(direct.stop(), windows[0], args.slots)]
    live = Load(gw, ROUTE, KEY, clients, work / "live.jsonl")
    time.sleep(args.warmup)
    windows = [measure(sim, args.window, "before")]
    batch: dict[str, Any] | None = None
    if not args.live_only:
        window, batch = batch_window(sim, gw, args)
        windows.append(window)
        time.sleep(args.warmup)
    windows.append(measure(sim, args.window, "after"))
    samples = live.stop()
    rows += [window_row(samples, w, args.slots) for w in windows]
    return rows, batch


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        result = json.loads((BENCH / "batch.json").read_text())
        (BENCH / "BATCH.md").write_text(batch_fill_report.render(result))
        return 0
    work = launch.WORK / ("batch-quick" if args.quick else "batch")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out_dir = work if args.quick else BENCH
    sim_cpus, gw_cpus = launch.cpu_plan(args.pin)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PYTHONUNBUFFERED": "1"}
    launch.precompile(
        launch.python(), [launch.ROOT / p for p in ("gateway", "routing", "simulator")]
    )
    load_start = os.getloadavg()
    pg: ledger_db.Postgres | None = None
    procs: list[Proc] = []
    try:
        sim = free_port()
        sim_proc, _ = launch.simulator(sim, env, sim_cpus, name="batch-simulator")
        sim_proc.log_path = work / "simulator.log"
        procs.append(sim_proc)
        sim_proc.start()
        sim_proc.wait_ready(sim, "GET", "/_stats", None, 30)
        if args.ledger == "postgres":
            pg = ledger_db.start(work / "postgres", sim_cpus, durable=True)
            url = pg.url
        else:
            url = f"sqlite+aiosqlite:///{work / 'ledger.db'}"
        gw = free_port()
        model = write_config(work / "farebox.yaml", sim, args)
        fb_env = env | {
            "FAREBOX_DATABASE_URL": url,
            "FAREBOX_SPOOL_DIR": str(work / "spool"),
            "FAREBOX_FILES_DIR": str(work / "files"),
            "FAREBOX_JOURNAL_DIR": str(work / "journal"),
            "FAREBOX_METRICS_PORT": "0",
        }
        if (err := ledger_db.migrate(launch.python(), url, fb_env)) is not None:
            raise SystemExit(f"bench: ledger migration failed: {err}")
        argv_fb = [str(launch.ROOT / ".venv" / "bin" / "farebox"), "serve"]
        argv_fb += ["--config", str(work / "farebox.yaml"), "--host", "127.0.0.1"]
        argv_fb += ["--port", str(gw), "--workers", "1"]
        gateway = Proc("farebox", argv_fb, fb_env, work / "farebox.log", gw_cpus)
        procs.append(gateway)
        gateway.start()
        gateway.wait_ready(gw, "GET", "/healthz", None, 60)
        ours = [sim_proc.pid, gateway.pid] + ([pg.postmaster_pid] if pg else [])
        cpu0 = sum(tree_cpu_seconds(p) for p in ours) + _self_cpu()
        busy0, t0 = machine_busy_seconds(), time.monotonic()
        rows, batch = run_windows(args, sim, gw, model, work)
        elapsed = time.monotonic() - t0
        cpu1 = sum(tree_cpu_seconds(p) for p in ours) + _self_cpu()
        others = max(0.0, (machine_busy_seconds() - busy0) - (cpu1 - cpu0)) / elapsed
        if batch is not None:
            batch["ledger"] = _settled(url, pg, batch)
        result = {
            "config": {**vars(args), "clients": max(1, round(args.load * args.slots))},
            "upstream_model": model,
            "machine": {
                "loadavg_start": [round(x, 2) for x in load_start],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "other_processes_cores": round(others, 3),
                "cpus": os.cpu_count(),
                "pinning": {
                    "simulator+postgres": sorted(sim_cpus or []),
                    "gateway": sorted(gw_cpus or []),
                },
            },
            "postgres": pg.version if pg else None,
            "windows": rows,
            "batch": batch,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(
                [".venv/bin/python", "bench/batch_fill_bench.py", *(argv or sys.argv[1:])]
            ),
        }
        (out_dir / "batch.json").write_text(json.dumps(result, indent=1) + "\n")
        (out_dir / "BATCH.md").write_text(batch_fill_report.render(result))
        print(f"bench: wrote {out_dir / 'BATCH.md'}", flush=True)
        return 1 if args.strict and not batch_fill_report.verdicts(result)[1] else 0
    finally:
        for proc in reversed(procs):
            proc.stop()
        if pg is not None:
            pg.close()


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settled(url: str, pg: ledger_db.Postgres | None, batch: dict[str, Any]) -> dict[str, Any]:
    """The ledger's view once every line's rows are in (they commit with the line)."""
    deadline = time.monotonic() + 30
    while True:
        found = ledger_batch(url, pg, batch["id"])
        if found["attempts_200"] >= batch["completed"] or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
