"""Private, throwaway PostgreSQL and Redis servers for the integration tests.

Each server listens on a free 127.0.0.1 port, keeps its data in a temp directory and can be
stopped and started again on the same port and data (tests kill the database mid-load).
Everything started here is stopped at interpreter exit, even when a test run aborts.
Redis beyond one node (a 3-master Redis Cluster, a Sentinel set) is built from RedisServer in
tests/redis_topologies.py.

initdb and postgres refuse to run as root, so under root the binaries run as the `postgres`
user (runuser) on a directory that user owns; pytest's own tmp dirs are 0700 root, hence the
separate mkdtemp in that case.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

READY_TIMEOUT_S = 30.0
ENSURE_HINT = "run scripts/ensure-services.sh (make test does) to install it"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _wait(predicate: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)  # poll: a condition wait
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def postgres_bin_dir() -> Path:
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not candidates:
        found = shutil.which("initdb")
        if found is None:
            raise RuntimeError(f"PostgreSQL server binaries not found; {ENSURE_HINT}")
        return Path(found).parent

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", Path(path).parent.parent.name))

    return Path(max(candidates, key=version)).parent


class PostgresServer:
    def __init__(self, base_dir: Path, port: int) -> None:
        self.bin = postgres_bin_dir()
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.log_file = base_dir / "postgres.log"
        self.port = port
        self.user = "postgres"
        self._as_root = os.geteuid() == 0
        self._closed = False

    def _cmd(self, name: str, *args: str) -> list[str]:
        cmd = [str(self.bin / name), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_root else cmd

    def _run(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._cmd(name, *args), capture_output=True, text=True, timeout=60, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{name} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n--- postgres.log ---\n" + self.log_file.read_text()[-4000:]
        return ""

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        # Written to the config file (not passed to pg_ctl) so a restart keeps the same port.
        # Durability settings off: the data is disposable and fsync dominates test time.
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "log_min_messages": "warning",
            # Every test's database is new: without statistics the planner takes each table
            # for a few rows and picks nested loops that go quadratic once a load test has
            # filled it (a drill verdict's join took 20 s over 7,000 rows). A long-lived
            # database has statistics; analyse within a second of a table filling up, as
            # autovacuum does there.
            "autovacuum_naptime": "1s",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# farebox tests\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        if self.is_running():
            return
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "30"
        )
        _wait(self._accepting, f"postgres on port {self.port}")

    def _accepting(self) -> bool:
        result = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False)
        return result.returncode == 0

    def stop(self) -> None:
        if self.is_running():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")

    def is_running(self) -> bool:
        result = self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False)
        return result.returncode == 0

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _pids(self) -> list[int]:
        """The postmaster and every backend and helper process it forked."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        pids = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # Field 4 (after the parenthesised command, which may hold spaces) is ppid.
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(stat.parent.name))
        return pids

    def freeze(self) -> None:
        """SIGSTOP the whole server: connections stay open and queries hang, as when a
        database host stalls (unlike stop(), which refuses connections at once)."""
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Frozen for the block, thawed on the way out whatever happens."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        args = ["-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", dbname]
        result = self._run("psql", *args, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql)
        return result.stdout

    def create_database(self, name: str, template: str | None = None) -> None:
        """A new database; a copy of `template` (a file copy, no migrations to run) if given."""
        copy = f" TEMPLATE {_identifier(template)}" if template else ""
        self.psql(f"CREATE DATABASE {_identifier(name)}{copy}")

    def migrated_database(self, prefix: str) -> str:
        """A new database named `prefix_<random>`, migrated to the head: its URL."""
        from gateway.ledger.migrate import upgrade

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.create_database(name)
        url = self.url(name)
        upgrade(url)
        return url

    def make_template(self, name: str) -> None:
        """Freeze database `name` as a template: nobody connects to it again (a connection,
        even autovacuum's, would make the next copy fail)."""
        self.psql(
            f"ALTER DATABASE {_identifier(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
        )

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)")

    def close(self) -> None:
        """Stop for good and delete the data directory."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            if self.is_running():
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w")
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a safe database name: {name!r}")
    return name


def start_postgres(tmp_dir: Path) -> PostgresServer:
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        base = Path(tempfile.mkdtemp(prefix="farebox-pg-"))
        os.chown(base, owner.pw_uid, owner.pw_gid)
    else:
        base = Path(tmp_dir) / "postgres"
        base.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(base, free_port())
    atexit.register(server.close)
    server.init()
    server.start()
    return server


class RedisServer:
    def __init__(self, base_dir: Path, port: int, extra_args: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"redis-server not found; {ENSURE_HINT}")
        self.binary = binary
        self.base_dir = base_dir
        self.port = port
        self.extra_args = list(extra_args)  # cluster mode, replicaof (tests/redis_topologies.py)
        self.log_file = base_dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.is_running():
            return
        # Persistence off: tests want a clean, fast, memory-only server.
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.base_dir),
            "--logfile",
            str(self.log_file),
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(self._ping, f"redis on port {self.port}")
        except TimeoutError:
            self.stop()
            raise

    def _ping(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n{log}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), 0.5) as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        # The port must be free before a restart reuses it.
        _wait(lambda: not _port_open(self.port), f"redis port {self.port} release", timeout=10)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def start_redis(tmp_dir: Path | None = None) -> RedisServer:
    base = Path(tempfile.mkdtemp(prefix="farebox-redis-", dir=tmp_dir))
    server = RedisServer(base, free_port())
    atexit.register(server.close)
    server.start()
    return server
