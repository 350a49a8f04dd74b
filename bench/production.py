"""The "production" profile (issue 13), shared by `run.py`, `soak.py` and `burst.py`.

Farebox as a production user runs it, nothing switched off:

- `bench/farebox-production.yaml`: a cost route over three deployments plus a fallback,
  breakers and retries at their defaults;
- a virtual key made with `farebox keys create` in the ledger's Postgres, with RPM, TPM,
  concurrency and a monthly budget set far above anything the benchmark reaches but
  enforced: every request is counted against them in Redis;
- the ledger in Postgres, durability on (the server `ledger_db.start` makes, one database
  per target so each target's rows are counted on their own);
- Redis (limits, budgets, shared breakers, key revocation) started here;
- Prometheus metrics on (multiprocess mode with 2 workers) and the JSON request log on,
  written to the target's log file under bench/.work/ (that write is part of the cost);
- its own instance of the simulator, so the simulator's `/_stats` count is this target's
  alone and is compared with the ledger's `attempts` rows at the end.

Redis and Postgres are pinned with the simulator (the last CPU); a 1-worker Farebox gets the
gateways' CPU, a 2-worker Farebox both CPUs (which it then shares with the simulator, wrk,
Postgres and Redis).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import launch
import ledger_db
import report_meta
from targets import Proc, Target, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = launch.WORK
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tests.services import RedisServer, start_redis  # noqa: E402

CONFIG = BENCH / "farebox-production.yaml"
NAMES = {1: "farebox-prod", 2: "farebox-prod-2w"}
EXACT = "farebox-prod-exact"  # 1 worker, `limits.mode: exact` (per-request Redis admission)
# High enough never to throttle the benchmark (it peaks near 10^4 requests/s and 10^6
# tokens/s), but real limits: the limiter counts every request against them in Redis.
KEY_LIMITS = {
    "--rpm": "100000000",
    "--tpm": "2000000000",  # the largest the key schema takes is 2^31 - 1
    "--max-concurrency": "100000",
    "--budget-usd": "100000000",
}


@dataclass
class Services:
    """Postgres (ledger + virtual keys) and Redis (limits, budgets, breakers)."""

    pg: ledger_db.Postgres
    redis: RedisServer
    redis_pid: int
    redis_version: str
    owns_pg: bool = True
    next_db: int = 1  # Redis database number for the next target

    def redis_url(self) -> str:
        db, self.next_db = self.next_db, self.next_db + 1
        return f"redis://127.0.0.1:{self.redis.port}/{db}"

    def close(self) -> None:
        self.redis.close()
        if self.owns_pg:
            self.pg.close()


def start_services(
    cpus: set[int] | None, durable: bool = True, pg: ledger_db.Postgres | None = None
) -> Services:
    """Redis (and Postgres, unless one is given) pinned to `cpus`."""
    owns = pg is None
    if pg is None:
        pg = ledger_db.start(WORK / "postgres", cpus, durable)
    try:
        with ledger_db.affinity(cpus):
            redis = start_redis(WORK)
    except Exception:
        if owns:
            pg.close()
        raise
    proc = getattr(redis, "_proc", None)
    pid = proc.pid if proc is not None else 0
    out = subprocess.run([redis.binary, "--version"], capture_output=True, text=True, check=False)
    version = next((w[2:] for w in out.stdout.split() if w.startswith("v=")), "?")
    return Services(pg, redis, pid, version, owns)


def create_key(url: str, env: dict[str, str], name: str) -> str:
    """`farebox keys create` with KEY_LIMITS; the secret it prints once."""
    argv = [str(ROOT / ".venv" / "bin" / "farebox"), "keys", "create", name, "--team", "bench"]
    for option, value in KEY_LIMITS.items():
        argv += [option, value]
    argv += ["--json", "--database-url", url]
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"farebox keys create failed: {(done.stderr or done.stdout)[-300:]}")
    secret: str = json.loads(done.stdout)["secret"]
    return secret


def farebox_prod(
    workers: int,
    env: dict[str, str],
    cpus: tuple[set[int] | None, set[int] | None],
    services: Services,
    name: str | None = None,
    limits_mode: str = "lease",
) -> Target:
    """A production-profile Farebox target with its own simulator (started and ready here)
    and its own ledger database and virtual key. Not started: `launch.start` does that."""
    sim_cpus, gw_cpus = cpus
    name = name or NAMES.get(workers, f"farebox-prod-{workers}w")
    if workers > 1 and gw_cpus is not None:
        gw_cpus = gw_cpus | (sim_cpus or set())  # every CPU: see the module docstring
    port = free_port()
    target = Target(
        name,
        port,
        "",
        "bench",
        "bench-slow",
        version=report_meta.dist_version("farebox"),
        model_jitter=launch.JITTER_ROUTE,
    )
    target.workers = workers
    target.proc = Proc(name, [], {}, WORK / f"{name}.log", gw_cpus)
    data = WORK / name
    shutil.rmtree(data, ignore_errors=True)
    (data / "metrics").mkdir(parents=True)
    target.ledger, target.spool_dir = "postgres", data / "spool"
    target.db_pid, target.redis_pid = services.pg.postmaster_pid, services.redis_pid
    try:
        target.ledger_url = ledger_db.create_database(services.pg, name.replace("-", "_"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        target.mark_unavailable(f"could not create its database: {exc}")
        return target
    fb_env = {
        **env,
        "SIM_PORT": "0",
        "FAREBOX_DATABASE_URL": target.ledger_url,
        "FAREBOX_REDIS_URL": services.redis_url(),
        "FAREBOX_SPOOL_DIR": str(target.spool_dir),
        "FAREBOX_LEDGER_ENABLED": "true",
        "FAREBOX_REQUEST_LOG": "true",
        "FAREBOX_METRICS_ENABLED": "true",
        # Scraped on the API port (as before the metrics listener existed), so parallel
        # targets do not compete for the metrics port; the scrape costs the same there.
        "FAREBOX_METRICS_PORT": "0",
        "FAREBOX_METRICS_ON_API_PORT": "open",
        "PROMETHEUS_MULTIPROC_DIR": str(data / "metrics"),
    }
    if (err := ledger_db.migrate(launch.python(), target.ledger_url, fb_env)) is not None:
        target.mark_unavailable(f"ledger migration failed: {err}")
        return target
    try:
        target.api_key = create_key(target.ledger_url, fb_env, f"{name}-key")
    except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        target.mark_unavailable(str(exc))
        return target
    target.sim_port = free_port()
    target.sim, _ = launch.simulator(target.sim_port, env, sim_cpus, f"simulator-{name}")
    target.sim.start()
    probe = b'{"model":"sim-small","messages":[{"role":"user","content":"hi"}]}'
    try:
        target.sim.wait_ready(target.sim_port, "POST", "/v1/chat/completions", probe, 60)
        with contextlib.suppress(OSError):  # the probe is not the target's: start from zero
            _request(target.sim_port, "POST", "/_reset")
    except RuntimeError as exc:
        target.mark_unavailable(f"its simulator did not start: {exc}")
        return target
    fb_env["SIM_PORT"] = str(target.sim_port)
    config = CONFIG
    if limits_mode != "lease":  # the same profile, the key's limits admitted another way
        config = data / f"farebox-production-{limits_mode}.yaml"
        text = CONFIG.read_text()
        config.write_text(text.replace("\nlimits:\n", f"\nlimits:\n  mode: {limits_mode}\n", 1))
    argv = [str(ROOT / ".venv" / "bin" / "farebox"), "serve", "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    target.proc.argv, target.proc.env = argv, fb_env
    target.remark = (
        f"{workers} worker(s), `bench/farebox-production.yaml` (limits.mode: {limits_mode}), "
        "virtual key from `farebox keys create`, ledger → Postgres, limits in Redis, metrics "
        "and JSON request log on"
    )
    return target


def _request(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def sim_counts(port: int) -> dict[str, Any]:
    """What the target's simulator saw: `requests` that arrived (counted on arrival, per
    endpoint), and those `answered` (counted when the status line is sent, by status: a
    call the gateway cancelled in flight, because its client went away, arrived but was
    never answered)."""
    status, body = _request(port, "GET", "/_stats")
    if status != 200:
        raise RuntimeError(f"/_stats answered {status}")
    stats = json.loads(body)
    by_status: dict[str, int] = {}
    for model in stats["requests"].values():
        for code, n in model["by_status"].items():
            by_status[code] = by_status.get(code, 0) + n
    answered = sum(m["total"] for m in stats["requests"].values())
    arrived = sum(stats["endpoints"].values())
    return {"requests": arrived, "answered": answered, "by_status": by_status}


def scrape_metrics(target: Target) -> dict[str, Any]:
    """One GET /metrics (proof the metrics were on and counting): size and sample lines."""
    try:
        status, body = _request(target.port, "GET", "/metrics")
    except OSError as exc:
        return {"status": None, "error": str(exc)}
    lines = [ln for ln in body.decode(errors="replace").splitlines() if ln and ln[0] != "#"]
    return {"status": status, "bytes": len(body), "samples": len(lines)}


def count_log_lines(path: Path) -> int:
    """JSON request-log lines in the target's log file (one per request)."""
    n = 0
    with contextlib.suppress(OSError), path.open("rb") as fh:
        for line in fh:
            if line.startswith(b'{"') and b'"request_id"' in line:
                n += 1
    return n


def attempt_outcomes(pg: ledger_db.Postgres, url: str) -> dict[str, int]:
    """The target's attempts by outcome: `<http status or none>/<error class or ok>`, and
    `with_upstream_id`: those that carry the upstream's request id (the simulator answered)."""
    dbname = url.rsplit("/", 1)[1]
    out = pg.server.psql(
        "SELECT coalesce(http_status::text, 'none') || '/' || coalesce(error_class, 'ok'), "
        "count(*) FROM attempts GROUP BY 1 UNION ALL SELECT 'with_upstream_id', count(*) "
        "FROM attempts WHERE provider_request_id IS NOT NULL",
        dbname,
    )
    pairs = (line.rsplit("|", 1) for line in out.strip().splitlines() if "|" in line)
    return {k: int(v) for k, v in pairs}


def verify(target: Target, pg: ledger_db.Postgres) -> dict[str, Any]:
    """After the target's last run: scrape /metrics, stop it (SIGTERM: the ledger writer
    flushes), count its ledger rows and compare attempts with what its simulator served."""
    metrics = scrape_metrics(target) if target.available else {"status": None}
    check = ledger_db.verify(target, pg)
    check["metrics"] = metrics
    check["request_log_lines"] = count_log_lines(target.proc.log_path) if target.proc else 0
    check["log_bytes"] = target.proc.log_path.stat().st_size if target.proc else 0
    try:
        assert target.sim_port is not None
        sim = sim_counts(target.sim_port)
    except (OSError, RuntimeError, ValueError, KeyError, AssertionError) as exc:
        check["sim_requests"], check["sim_error"] = None, str(exc)
        check["match"] = check["covered"] = False
        return check
    check["sim_requests"], check["sim_by_status"] = sim["requests"], sim["by_status"]
    check["sim_answered"] = sim["answered"]
    outcomes: dict[str, int] = {}
    with contextlib.suppress(RuntimeError, OSError, ValueError, subprocess.SubprocessError):
        outcomes = attempt_outcomes(pg, target.ledger_url)
    check["attempt_outcomes"] = outcomes
    # An attempt the gateway cancelled (its client went away) while connecting or sending may
    # never have reached the simulator: a surplus of rows up to that many is accounted for.
    surplus = (check["attempts_rows"] or 0) - sim["requests"]
    check["covered"] = 0 <= surplus <= outcomes.get("none/client_cancelled", 0)
    check["match"] = check["attempts_rows"] == sim["requests"]
    check["covered"] = check["covered"] or check["match"]
    return check


def describe_check(name: str, c: dict[str, Any]) -> str:
    """One line for stdout and the reports."""
    if c.get("attempts_rows") is None or c.get("sim_requests") is None:
        why = c.get("error") or c.get("sim_error") or "?"
        return f"{name}: ledger vs simulator: **not checked** ({why})"
    gap = c["attempts_rows"] - c["sim_requests"]
    answered = c.get("sim_answered", 0)
    rest = ", the rest were cancelled in flight" if answered < c["sim_requests"] else ""
    cancelled = c.get("attempt_outcomes", {}).get("none/client_cancelled", 0)
    if c["match"]:
        verdict = "**equal**"
    elif c.get("covered"):
        verdict = (
            f"**{gap:+,} rows, accounted for**: at most that many of the {cancelled:,} attempts "
            "the gateway cancelled when wrk closed their connections never reached the simulator"
        )
    else:
        verdict = "**DIFFERENT**"
    spool = f"; {c['spool_files']} spool file(s) left" if c.get("spool_files") else ""
    return (
        f"{name}: ledger attempts rows {c['attempts_rows']:,} vs requests the simulator "
        f"received {c['sim_requests']:,}: {verdict} (it answered {answered:,}{rest}; "
        f"attempts cancelled by the client "
        f"{cancelled:,}; requests rows {c['requests_rows']:,}; "
        f"JSON request-log lines {c.get('request_log_lines', 0):,}){spool}"
    )


def stop(target: Target) -> None:
    if target.proc is not None:
        target.proc.stop()
    if target.sim is not None:
        target.sim.stop()


def env_base() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PYTHONUNBUFFERED"] = "1"
    return env
