"""The ledger side of the benchmark: a throwaway PostgreSQL for the "ledger → Postgres"
Farebox target, schema migration, and counting the rows a target really wrote.

The server comes from the test suite's `tests/services.py` (free port, data in a temp dir,
`runuser -u postgres` when running as root, stopped at interpreter exit).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from targets import Target

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended: bench/ modules keep precedence

from tests.services import PostgresServer, postgres_bin_dir, start_postgres  # noqa: E402

DB_NAME = "farebox_bench"
# tests/services.py turns durability off (its data is disposable); a production ledger keeps it.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@dataclass
class Postgres:
    server: PostgresServer
    url: str
    version: str
    postmaster_pid: int
    cpus: str  # the postmaster's Cpus_allowed_list, as the kernel reports it
    durable: bool

    def close(self) -> None:
        self.server.close()


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """Run the body with this process pinned to cpus: everything it spawns (pg_ctl, the
    postmaster and, through fork, every backend) inherits the mask. Restored afterwards."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _ensure_binaries() -> None:
    try:
        postgres_bin_dir()
        return
    except RuntimeError:
        pass
    print("bench: PostgreSQL binaries missing; running scripts/ensure-services.sh", flush=True)
    script = ROOT / "scripts" / "ensure-services.sh"
    done = subprocess.run([str(script)], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"scripts/ensure-services.sh failed ({done.returncode}): {tail[0]}")
    postgres_bin_dir()  # raises with the reason if still missing


def _postmaster_pid(server: PostgresServer) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _cpus_allowed(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "?"


def start(work: Path, cpus: set[int] | None, durable: bool) -> Postgres:
    """A fresh server with an empty DB_NAME database; RuntimeError/OSError with the reason."""
    _ensure_binaries()
    work.mkdir(parents=True, exist_ok=True)
    with affinity(cpus):
        return _ready(start_postgres(work), durable, fresh=True)


def _ready(server: PostgresServer, durable: bool, fresh: bool) -> Postgres:
    """A started server as `Postgres`: a fresh one made durable (if asked) with an empty
    DB_NAME database; closed on failure."""
    try:
        if fresh:
            if durable:
                for key, value in DURABLE.items():
                    server.psql(f"ALTER SYSTEM SET {key} = {value}")
                server.stop()
                server.start()
            server.create_database(DB_NAME)
        version = server.psql("SHOW server_version").strip()
    except Exception:
        server.close()
        raise
    pid = _postmaster_pid(server)
    return Postgres(server, server.url(DB_NAME), version, pid, _cpus_allowed(pid), durable)


class _KeptServer(PostgresServer):
    """A server whose data directory outlives the run: `close` stops it, deletes nothing."""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def _kept_port(base: Path) -> int | None:
    """The port a kept server was made with (`PostgresServer.init` writes it to its config)."""
    with contextlib.suppress(OSError, ValueError):
        lines = (base / "data" / "postgresql.conf").read_text().splitlines()
        ports = [line.split("=", 1)[1] for line in lines if line.startswith("port = ")]
        return int(ports[-1].strip()) if ports else None
    return None


def start_kept(base: Path, durable: bool) -> tuple[Postgres, bool]:
    """A server with its data in `base`, kept across runs (bench/ledger_scale.py --keep):
    made there the first time (then True), started again afterwards. Never deleted."""
    from tests.services import free_port

    _ensure_binaries()
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # initdb and postgres run as `postgres` (tests/services.py)
        import pwd

        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
    fresh = not (base / "data" / "PG_VERSION").exists()
    server = _KeptServer(base, _kept_port(base) or free_port())
    if fresh:
        server.init()
    server.start()
    return _ready(server, durable, fresh), fresh


def migrate(python: str, url: str, env: dict[str, str]) -> str | None:
    """`gateway.ledger.migrate.upgrade(url)` in a child process (the harness itself never
    imports the gateway, which may be mid-edit); the error's last line, or None."""
    code = "import sys; from gateway.ledger.migrate import upgrade; upgrade(sys.argv[1])"
    return _child(python, [code, url], env, timeout=120)


def _child(
    python: str, code_and_args: list[str], env: dict[str, str], timeout: float
) -> str | None:
    """`python -c CODE ARGS…` from the repository's root: None when it succeeded, else the
    last line it printed (the error)."""
    done = subprocess.run(
        [python, "-c", *code_and_args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if done.returncode == 0:
        return None
    return ((done.stdout + done.stderr).strip().splitlines()[-1:] or ["?"])[0]


_PARTITION_DAYS = """
import asyncio, sys
from datetime import date, timedelta
import asyncpg
from gateway.ledger.partitions import ensure_days
from gateway.ledger.pg import asyncpg_dsn

async def main(url, first, last):
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        span = (last - first).days + 1
        await ensure_days(conn, (first + timedelta(days=n) for n in range(span)))
    finally:
        await conn.close()

asyncio.run(main(sys.argv[1], date.fromisoformat(sys.argv[2]), date.fromisoformat(sys.argv[3])))
"""


def partition_days(python: str, url: str, env: dict[str, str], first: str, last: str) -> str | None:
    """The ledger's day partitions for [first, last] (UTC days, ISO), as the gateway creates
    them ahead (gateway.ledger.partitions.ensure_days), in a child process like `migrate`:
    a past month generated straight in SQL lands in its days, not in the DEFAULT partition.
    The error's last line, or None (also when the schema has no partitions)."""
    return _child(python, [_PARTITION_DAYS, url, first, last], env, timeout=600)


_COMPACT = """
import asyncio, sys
import asyncpg
from gateway.ledger.pg import asyncpg_dsn
from gateway.ledger.rollup_compactor import flush

async def main(url):
    conn = await asyncpg.connect(asyncpg_dsn(url), command_timeout=None)
    try:
        await flush(conn)
    finally:
        await conn.close()

asyncio.run(main(sys.argv[1]))
"""


def compact(python: str, url: str, env: dict[str, str]) -> str | None:
    """Every pending row into the rollups (gateway.ledger.rollup_compactor.flush), in a
    child process like `migrate`; the error's last line, or None."""
    return _child(python, [_COMPACT, url], env, timeout=3600)


def create_database(pg: Postgres, name: str) -> str:
    """Another empty database in the same server (one per production target, so each
    target's rows can be counted on their own); its URL."""
    pg.server.create_database(name)
    return pg.server.url(name)


def _count_postgres(pg: Postgres, url: str) -> tuple[int, int]:
    dbname = url.rsplit("/", 1)[1].split("?", 1)[0]
    out = pg.server.psql(
        "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM attempts)", dbname
    )
    requests, attempts = out.strip().split("|")
    return int(requests), int(attempts)


def _count_sqlite(url: str) -> tuple[int, int]:
    path = url.split(":///", 1)[1]
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        requests = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        attempts = conn.execute("SELECT count(*) FROM attempts").fetchone()[0]
    return int(requests), int(attempts)


def _spool_contents(spool: Path | None) -> tuple[int, int]:
    """(files, bytes) left in the spool: batches the writer could not put in the database."""
    if spool is None or not spool.exists():
        return 0, 0
    files = [p for p in spool.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def verify(target: Target, pg: Postgres | None) -> dict[str, Any]:
    """Stop the target (SIGTERM: the writer flushes what it has queued), then count its rows.
    Call only after the target's last run."""
    if target.proc is not None:
        target.proc.stop(grace=30.0)
    out: dict[str, Any] = {
        "served": target.served,
        "abandoned_max": target.abandoned_max,
        "requests_rows": None,
        "attempts_rows": None,
        "error": "",
    }
    try:
        if target.ledger == "postgres":
            if pg is None:
                raise RuntimeError("no Postgres server")
            out["requests_rows"], out["attempts_rows"] = _count_postgres(pg, target.ledger_url)
        else:
            out["requests_rows"], out["attempts_rows"] = _count_sqlite(target.ledger_url)
    except (RuntimeError, OSError, ValueError, sqlite3.Error, subprocess.SubprocessError) as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    out["spool_files"], out["spool_bytes"] = _spool_contents(target.spool_dir)
    return out
