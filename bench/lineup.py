"""Which targets a `run.py` run measures, and starting and finishing them: the servers
(PostgreSQL, Redis), the gateways one at a time, and after the scenarios the bursts and the
ledger checks."""

from __future__ import annotations

import argparse
import subprocess
import time

import burst
import launch
import ledger_db
import litellm_env
import production
from targets import Target, tree_rss_by_process

WORK = launch.WORK
FAREBOX_MODES = {
    "both": ["off", "postgres"],
    "off": ["off"],
    "postgres": ["postgres"],
    "sqlite": ["sqlite"],
    "all": ["off", "postgres", "sqlite"],
}


def profiles(args: argparse.Namespace) -> tuple[bool, bool]:
    """(bare, production)"""
    if args.skip_farebox:
        return False, False
    return args.profiles in ("all", "bare"), args.profiles in ("all", "production")


def start_postgres(
    args: argparse.Namespace, cpus: set[int] | None
) -> tuple[ledger_db.Postgres | None, str]:
    """The ledger's PostgreSQL when a Farebox target needs it: (server, "") or (None, why)."""
    bare, prod = profiles(args)
    if not prod and not (bare and "postgres" in FAREBOX_MODES[args.farebox_ledger]):
        return None, ""
    print("bench: starting PostgreSQL for the Farebox ledger", flush=True)
    try:
        pg = ledger_db.start(WORK / "postgres", cpus, args.pg_durability == "on")
    except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError) as exc:
        why = f"PostgreSQL did not start: {str(exc).strip().splitlines()[0][:300]}"
        print(f"bench: {why}", flush=True)
        return None, why
    print(f"bench: PostgreSQL {pg.version} up, postmaster on CPUs {pg.cpus}", flush=True)
    return pg, ""


def start_redis(
    args: argparse.Namespace, pg: ledger_db.Postgres | None, cpus: set[int] | None
) -> tuple[production.Services | None, str]:
    """Redis for the production profile (with the ledger's Postgres): (services, "") or
    (None, why)."""
    if not profiles(args)[1]:
        return None, ""
    if pg is None:
        return None, "no PostgreSQL server"
    print("bench: starting Redis for the production profile", flush=True)
    try:
        services = production.start_services(cpus, pg=pg)
    except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError) as exc:
        why = f"Redis did not start: {str(exc).strip().splitlines()[0][:300]}"
        print(f"bench: {why}", flush=True)
        return None, why
    print(f"bench: Redis {services.redis_version} up", flush=True)
    return services, ""


def start_targets(
    args: argparse.Namespace,
    sim_port: int,
    env: dict[str, str],
    cpus: tuple[set[int] | None, set[int] | None],
    pg: tuple[ledger_db.Postgres | None, str],
    services: tuple[production.Services | None, str],
    targets: list[Target],
) -> None:
    """Fill `targets` (in place, so the caller can stop whatever started if interrupted)."""
    targets.append(
        Target(
            "direct",
            sim_port,
            launch.SIM_KEY,
            launch.FAST_MODEL,
            launch.SLOW_MODEL,
            model_jitter=launch.JITTER_MODEL,
        )
    )
    gw_cpus = cpus[1]
    gateways = [launch.passthrough(sim_port, env, gw_cpus)]
    server, pg_error = pg
    bare, prod = profiles(args)
    for ledger in FAREBOX_MODES[args.farebox_ledger] if bare else []:
        url = server.url if server is not None else None
        fb = launch.farebox(sim_port, env, gw_cpus, ledger, url)
        if ledger == "postgres":
            if server is not None:
                fb.db_pid = server.postmaster_pid
            elif fb.note == "no PostgreSQL server":
                fb.note = pg_error
        gateways.append(fb)
    svc, svc_error = services
    # 1 and 2 workers in lease mode (the default), and 1 worker in exact mode beside it.
    for workers, mode in ((1, "lease"), (2, "lease"), (1, "exact")) if prod else ():
        name = production.EXACT if mode == "exact" else production.NAMES[workers]
        if svc is not None:
            gateways.append(
                production.farebox_prod(workers, env, cpus, svc, name=name, limits_mode=mode)
            )
        else:
            down = Target(name, 0, "", "bench", "bench-slow")
            down.mark_unavailable(svc_error or pg_error)
            gateways.append(down)
    if not args.skip_litellm:
        gateways.append(launch.litellm(sim_port, env, gw_cpus, litellm_env.pinned_version()))
    for t in gateways:  # one at a time, so startup times are not contended
        targets.append(t)
        if t.proc is not None:
            launch.start(t, args.startup_timeout * (2 if t.name == "litellm" else 1))
    time.sleep(2.0)  # settle, then idle RSS before any request
    for t in gateways:
        if t.available and t.proc is not None:
            t.idle_rss = t.proc.rss_bytes()
            t.idle_rss_procs = tree_rss_by_process(t.proc.pid)
    for t in targets:
        if not t.available:
            continue
        if (err := launch.check(t)) is not None:
            t.mark_unavailable(err)
            print(f"bench: {t.name} unavailable: {err}", flush=True)
        else:
            t.served += 3  # the three functional check requests


def run_bursts(args: argparse.Namespace, targets: list[Target]) -> None:
    """After the scenarios: the burst at every production target (they count it in their
    ledger check)."""
    for t in targets:
        if t.sim is not None and t.available and args.burst > 0:
            print(f"bench: {t.name}: burst of {args.burst} x {args.burst_kb} KB", flush=True)
            t.burst = burst.run(t, args.burst, args.burst_kb)
            t.served += t.burst["ok"]
            print(f"bench: {t.name}: {burst.describe(t.burst)}", flush=True)


def verify_ledgers(targets: list[Target], pg: ledger_db.Postgres | None) -> None:
    """After the last run: stop each ledger-on Farebox (it flushes on SIGTERM) and count the
    rows in its ledger; for a production target, against what its simulator served."""
    for t in targets:
        if t.sim is not None and pg is not None and (t.available or t.served):
            t.ledger_check = production.verify(t, pg)
            print(f"bench: {production.describe_check(t.name, t.ledger_check)}", flush=True)
        elif t.ledger in ("postgres", "sqlite") and (t.available or t.served):
            t.ledger_check = check = ledger_db.verify(t, pg)
            found = check["requests_rows"]
            print(
                f"bench: {t.name}: ledger rows written: {found} requests, "
                f"{check['attempts_rows']} attempts (served {t.served}) {check['error']}".rstrip(),
                flush=True,
            )
