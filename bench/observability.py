"""Micro-benchmark: what metrics, the request log and tracing add to one request.

Times Meter.succeeded + Meter.finish for a one-attempt request (the common case) with the
ledger a no-op, in four set-ups: nothing, metrics, metrics + request log (to /dev/null
through the writer thread), and metrics + log + tracing (spans to a no-op exporter). Then
the same in prometheus multiprocess mode (what `farebox serve --workers N` uses), in a
child process since prometheus_client picks its value class at import.

    .venv/bin/python bench/observability.py            # prints µs per request
    .venv/bin/python bench/observability.py --load     # + a wrk A/B: on vs off
    .venv/bin/python bench/observability.py --load FAREBOX_REQUEST_LOG=false  # metrics only

`--load` runs two `farebox serve` processes (1 worker, ledger off) pinned to the same CPU,
one as shipped and one with FAREBOX_METRICS_ENABLED=false FAREBOX_REQUEST_LOG=false, and
alternates wrk runs (c64, JSON and SSE) between them, so the machine's noise hits both; it
prints the median req/s and gateway CPU µs per request of each and the cost ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N = 50_000


def _measure() -> dict[str, float]:
    from gateway.core.metering import CallContext, Meter, NullLedger
    from gateway.ledger.pricing import LitellmPriceMap, PriceBook
    from gateway.observability import metrics, request_log, telemetry
    from routing.cost import TokenPrice
    from routing.model import DeploymentSpec, Plan, PlannedAttempt, Timeouts

    dep = DeploymentSpec("a@p", "p", "serverless", "openai", "m-a")
    plan = Plan("chat", "direct", (PlannedAttempt(dep, "primary"),), Timeouts(1000, 1000, 1000))
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "litellm.json"
        empty.write_text("{}")
        price = TokenPrice.of(input=Decimal(1), output=Decimal(2), version="bench")
        meter = Meter(
            PriceBook(overrides={"a@p": price}, litellm=LitellmPriceMap(empty)), NullLedger()
        )
    usage = {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}
    payload = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}

    def run(traced: bool) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for i in range(N // 5):
                ctx = CallContext(f"req_{i}", "key", "chat/completions", "chat", False, payload)
                if traced:
                    ctx.trace = telemetry.begin_request(None)
                    telemetry.begin_attempt(ctx.trace)
                meter.succeeded(ctx, plan.attempts[0], usage, "up", ctx.t0)
                meter.finish(ctx, plan, 200, None, "a@p")
            best = min(best, (time.perf_counter() - start) / (N // 5) * 1e6)
        return best

    real_observe = metrics.observe_request
    out: dict[str, float] = {}
    metrics.observe_request = lambda *_: None
    request_log.configure(False)
    out["none"] = run(False)
    metrics.observe_request = real_observe
    out["metrics"] = run(False)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - kept open for the writer thread
    request_log.configure(True, stream=devnull)
    out["metrics+log"] = run(False)

    class _Drop:
        def export(self, spans: Any) -> Any:
            from opentelemetry.sdk.trace.export import SpanExportResult

            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 0) -> bool:
            return True

    telemetry.configure(None, exporter=_Drop())
    out["metrics+log+traces"] = run(True)
    telemetry.shutdown()
    request_log.close()
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(rounds: int = 10, seconds: int = 3) -> None:
    import statistics
    import urllib.request

    sys.path.insert(0, str(ROOT / "bench"))
    import wrk  # bench/wrk.py: the harness's Lua scripts

    from tests.services import free_port

    work = Path(tempfile.mkdtemp(prefix="farebox-obs-"))
    cpus = sorted(os.sched_getaffinity(0))
    gw_cpu, sim_cpu = {cpus[0]}, {cpus[-1]}
    sim_port = free_port()
    base_env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    base_env |= {"SIM_PORT": str(sim_port), "FAREBOX_LEDGER_ENABLED": "false"}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], env: dict[str, str], cpu: set[int], log: str) -> int:
        out = (work / log).open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        os.sched_setaffinity(proc.pid, cpu)
        procs.append(proc)
        return proc.pid

    exe = str(ROOT / ".venv" / "bin" / "farebox")
    spawn([exe, "mock-upstream", "--port", str(sim_port)], base_env, sim_cpu, "sim.log")
    targets: dict[str, tuple[int, int]] = {}
    # `--on KEY=VALUE` (repeatable) changes the "on" gateway, e.g. to measure the log alone.
    on_env = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("-"))
    for name, extra in (
        ("on", on_env),
        ("off", {"FAREBOX_METRICS_ENABLED": "false", "FAREBOX_REQUEST_LOG": "false"}),
    ):
        port = free_port()
        argv = [exe, "serve", "--config", str(ROOT / "bench" / "farebox.yaml"), "--port"]
        targets[name] = (port, spawn([*argv, str(port)], base_env | extra, gw_cpu, f"{name}.log"))
    try:
        for port, _ in targets.values():
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
        results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for number in range(rounds):
            for stream in (False, True):
                order = list(targets) if number % 2 == 0 else list(reversed(targets))
                for name in order:
                    port, pid = targets[name]
                    script = wrk.write_script(work / f"{stream}.lua", "bench-key", "bench", stream)
                    before = _cpu_s(pid)
                    run = subprocess.run(
                        ["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", str(script),
                         f"http://127.0.0.1:{port}/v1/chat/completions"],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    used = _cpu_s(pid) - before
                    line = next(x for x in run.stdout.splitlines() if x.startswith("BENCH_RESULT"))
                    done = json.loads(line.split(" ", 1)[1])
                    rps = done["requests"] / (done["duration_us"] / 1e6)
                    results.setdefault((name, stream), []).append((rps, used / done["requests"]))
        for stream in (False, True):
            kind = "SSE" if stream else "JSON"
            rps = {n: statistics.median(r for r, _ in results[(n, stream)]) for n in targets}
            cpu = {n: statistics.median(c for _, c in results[(n, stream)]) * 1e6 for n in targets}
            rounds_text = ", ".join(
                f"{on:.0f}/{off:.0f}"
                for (on, _), (off, _) in zip(
                    results[("on", stream)], results[("off", stream)], strict=True
                )
            )
            print(f"{kind} rounds, req/s on/off: {rounds_text}")
            print(
                f"{kind} c64: on {rps['on']:.0f} req/s, {cpu['on']:.0f} µs CPU/req; "
                f"off {rps['off']:.0f} req/s, {cpu['off']:.0f} µs CPU/req; "
                f"cost {100 * (1 - rps['on'] / rps['off']):.1f} % of throughput, "
                f"{100 * (1 - cpu['off'] / cpu['on']):.1f} % of CPU per request"
            )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(_measure()))
        return
    results = {"single process": _measure()}
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        child = subprocess.run(
            [sys.executable, __file__, "--child"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results["multiprocess mode"] = json.loads(child.stdout.strip().splitlines()[-1])
    for mode, figures in results.items():
        base = figures["none"]
        print(f"{mode}: µs per request in Meter.succeeded + finish (one attempt)")
        for name, value in figures.items():
            extra = "" if name == "none" else f"  (+{value - base:.1f} µs)"
            print(f"  {name:<20} {value:6.1f}{extra}")
    if "--load" in sys.argv:
        _load()


if __name__ == "__main__":
    main()
