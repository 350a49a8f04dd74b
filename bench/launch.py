"""How each process of the benchmark is launched: simulator, passthrough, Farebox, LiteLLM."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ledger_db
import litellm_env
import report_meta
import wrk
from targets import Proc, Target, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
SIM_KEY = "sim-key"
FAREBOX_KEY = "bench-key"
FAST_MODEL = "sim-small"
SLOW_MODEL = "sim-small::latency=50"
# The latency scenario's realistic twin: 50 ms on average, uniform over 45–55 ms (see run.py).
JITTER_MODEL = "sim-small::latency=45,jitter=10"
JITTER_ROUTE = "bench-jitter"
HEALTH = {"litellm": "/health/liveliness"}  # everything else: /healthz


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def precompile(python_exe: str, paths: list[Path]) -> None:
    """Write .pyc files (as a deployment would): this environment sets PYTHONDONTWRITEBYTECODE,
    without which every start recompiles every module, and a module whose import fails
    (LiteLLM retries one on every request) is recompiled every time."""
    argv = [python_exe, "-m", "compileall", "-q", "-j", "0", *map(str, paths)]
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def site_packages(venv: Path) -> list[Path]:
    return sorted(venv.glob("lib/python3*/site-packages"))


def cpu_plan(mode: str) -> tuple[set[int] | None, set[int] | None]:
    """(simulator CPUs, gateway CPUs); wrk is never pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none" or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def simulator(
    port: int, env: dict[str, str], cpus: set[int] | None, name: str = "simulator"
) -> tuple[Proc, str]:
    """The project's simulator, `simulator.run(host, port)`, as its own process."""
    probe = subprocess.run(
        [python(), "-c", "from simulator import run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise SystemExit(f"bench: cannot import the simulator: {probe.stderr.strip()[-400:]}")
    code = f"from simulator import run; run('127.0.0.1', {port})"
    argv = [python(), "-c", code]
    return Proc(name, argv, env, WORK / f"{name}.log", cpus), "simulator.run"


def passthrough(sim_port: int, env: dict[str, str], cpus: set[int] | None) -> Target:
    port = free_port()
    target = Target(
        "passthrough",
        port,
        SIM_KEY,
        FAST_MODEL,
        SLOW_MODEL,
        version="bench",
        model_jitter=JITTER_MODEL,
    )
    upstream = f"http://127.0.0.1:{sim_port}"
    argv = [python(), str(BENCH / "passthrough.py"), "--port", str(port), "--upstream", upstream]
    target.proc = Proc("passthrough", argv, env, WORK / "passthrough.log", cpus)
    return target


FAREBOX_NAMES = {"off": "farebox-off", "postgres": "farebox-pg", "sqlite": "farebox-sqlite"}


def farebox(
    sim_port: int, env: dict[str, str], cpus: set[int] | None, ledger: str, pg_url: str | None
) -> Target:
    """Farebox with its ledger off, in Postgres (pg_url, migrated here) or in a fresh migrated
    SQLite file; its data (spool, SQLite) in bench/.work/<name>/, never var/."""
    name = FAREBOX_NAMES[ledger]
    port = free_port()
    version = report_meta.dist_version("farebox")
    target = Target(
        name, port, FAREBOX_KEY, "bench", "bench-slow", version=version, model_jitter=JITTER_ROUTE
    )
    exe = str(ROOT / ".venv" / "bin" / "farebox")
    data = WORK / name
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    sqlite_url = f"sqlite+aiosqlite:///{data / 'ledger.db'}"
    target.ledger, target.spool_dir = ledger, data / "spool"
    target.ledger_url = pg_url if ledger == "postgres" and pg_url else sqlite_url
    fb_env = {
        **env,
        "SIM_PORT": str(sim_port),
        "FAREBOX_DATABASE_URL": target.ledger_url,
        "FAREBOX_SPOOL_DIR": str(target.spool_dir),
        "FAREBOX_LEDGER_ENABLED": "false" if ledger == "off" else "true",
        # No metrics listener: targets run side by side and nothing scrapes them.
        "FAREBOX_METRICS_PORT": "0",
    }
    argv = [exe, "serve", "--config", str(BENCH / "farebox.yaml")]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    target.proc = Proc(name, argv, fb_env, WORK / f"{name}.log", cpus)
    if ledger == "off":
        target.remark = "`FAREBOX_LEDGER_ENABLED=false`"
    elif ledger == "postgres" and not pg_url:
        target.mark_unavailable("no PostgreSQL server")
    elif (err := ledger_db.migrate(python(), target.ledger_url, fb_env)) is not None:
        target.mark_unavailable(f"ledger migration failed: {err}")
    elif ledger == "postgres":
        target.remark = "`FAREBOX_DATABASE_URL=postgresql+asyncpg://…`, migrated before start"
    else:
        target.remark = "ledger in a fresh SQLite file in bench/.work/farebox-sqlite, migrated"
    return target


def litellm(sim_port: int, env: dict[str, str], cpus: set[int] | None, version: str) -> Target:
    port = free_port()
    target = Target(
        "litellm",
        port,
        litellm_env.MASTER_KEY,
        "bench",
        "bench-slow",
        version,
        model_jitter=JITTER_ROUTE,
    )
    config = litellm_env.write_config(WORK / "litellm.yaml", sim_port)
    argv, lt_env = litellm_env.argv(config, port), litellm_env.env(env)
    target.proc = Proc("litellm", argv, lt_env, WORK / "litellm.log", cpus)
    return target


def start(target: Target, timeout: float) -> None:
    """Spawn and wait for the first 200 on the health endpoint; mark unavailable on failure."""
    assert target.proc is not None
    if not target.available:
        print(f"bench: {target.name} unavailable: {target.note}", flush=True)
        return
    print(f"bench: starting {target.name}", flush=True)
    try:
        target.proc.start()
        target.startup_s = target.proc.wait_ready(
            target.port, "GET", HEALTH.get(target.name, "/healthz"), None, timeout
        )
    except (OSError, RuntimeError) as exc:
        tail = target.proc.log_tail()
        target.mark_unavailable(f"{exc}" + (f"; log: {tail}" if tail else ""))
        print(f"bench: {target.name} unavailable: {exc}", flush=True)


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
    """One functional request per request shape; an error message, or None if all pass."""
    shapes = [(target.model_fast, False), (target.model_fast, True), (target.model_slow, False)]
    for model, stream in shapes:
        status, body = post(target.port, target.api_key, model, stream)
        want = b"[DONE]" if stream else b'"choices"'
        if status != 200 or want not in body:
            return f"check {model} stream={stream}: HTTP {status} {body[:200]!r}"
    return None
