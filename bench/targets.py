"""Process management for the benchmark: spawn, health-wait, /proc accounting, stop."""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_status(port: int, method: str, path: str, body: bytes | None = None) -> int | None:
    """One loopback request; the status code, or None if nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: fields start after the last ')'; index 0 is state.
    return raw[raw.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """root and all its live descendants, found through /proc/*/stat ppid links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(root: int) -> float:
    """utime+stime+cutime+cstime summed over the live tree (reaped children count via c*)."""
    ticks = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU-seconds all CPUs spent busy (not idle/iowait) since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU of this process's waited-for children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_idle(
    cpu_seconds: Callable[[], float],
    alive: Callable[[], bool],
    window: float = 0.2,
    busy: float = 0.05,
    timeout: float = 20.0,
) -> float:
    """Block until cpu_seconds() grows by < busy x one CPU over a window; seconds waited."""
    start = time.perf_counter()
    last = cpu_seconds()
    while time.perf_counter() - start < timeout and alive():
        time.sleep(window)
        now = cpu_seconds()
        if now - last < busy * window:
            break
        last = now
    return time.perf_counter() - start


def wait_tree_idle(root: int) -> float:
    """wait_idle for a process tree the harness did not spawn (the ledger's Postgres)."""
    return wait_idle(lambda: tree_cpu_seconds(root), lambda: Path(f"/proc/{root}").exists())


def tree_rss_bytes(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def tree_rss_by_process(root: int) -> list[tuple[int, str, int]]:
    """(pid, command line start, RSS bytes) for each process of the tree."""
    out = []
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out.append((pid, cmd.strip()[:120], rss))
    return out


def tree_fds(root: int) -> int:
    """Open file descriptors summed over the tree (entries of /proc/<pid>/fd)."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


@dataclass
class Proc:
    """A spawned server in its own session, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cpus: set[int] | None = None
    cwd: Path = Path(__file__).resolve().parent.parent  # the repo root
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)
    spawned_at: float = field(default=0.0, init=False)

    def start(self) -> None:
        cpus = self.cpus

        def _pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        log = self.log_path.open("wb")
        self.spawned_at = time.perf_counter()
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_pin,
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(
        self, port: int, method: str, path: str, body: bytes | None, timeout: float
    ) -> float:
        """Poll until the endpoint answers 200; seconds since spawn. Raises RuntimeError."""
        deadline = self.spawned_at + timeout
        while time.perf_counter() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited (rc={self.popen and self.popen.poll()})")
            if http_status(port, method, path, body) == 200:
                return time.perf_counter() - self.spawned_at
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not healthy after {timeout:.0f}s")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid) if self.alive() else 0.0

    def wait_idle(self) -> float:
        """Block until the tree is idle (abandoned in-flight requests finished); seconds."""
        return wait_idle(self.cpu_seconds, self.alive)

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.pid) if self.alive() else 0

    def log_tail(self, lines: int = 1) -> str:
        """The last non-blank log lines (a traceback's last line names the error)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        kept = [ln.strip(" │|") for ln in text.splitlines() if ln.strip(" │|╰─╯")]
        return " / ".join(kept[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(grace)


@dataclass
class Target:
    """Something wrk can hit: the simulator itself ("direct") or a gateway in front of it."""

    name: str
    port: int
    api_key: str
    model_fast: str
    model_slow: str
    version: str = ""
    model_jitter: str = ""  # the latency scenario with a jittered 50 ms upstream
    proc: Proc | None = None  # None for "direct": the simulator is owned by the harness
    available: bool = True
    note: str = ""  # why it is unavailable
    remark: str = ""  # how it was set up, for the report
    startup_s: float | None = None
    idle_rss: int | None = None
    idle_rss_procs: list[tuple[int, str, int]] | None = None
    loaded_rss: int | None = None
    ledger: str = ""  # Farebox only: "off", "postgres" or "sqlite"
    ledger_url: str = ""  # where its ledger rows go (when on)
    spool_dir: Path | None = None
    db_pid: int | None = None  # its ledger's database server (Postgres postmaster), if any
    served: int = 0  # responses wrk counted over every run (warm-ups too) + functional checks
    abandoned_max: int = 0  # upper bound on requests in flight when wrk ended a run
    ledger_check: dict[str, Any] | None = None  # rows found in the ledger after the runs
    workers: int = 1
    # Production profile: its own simulator (so what it served is this target's alone),
    # the Redis its limits live in, and the ledger vs simulator comparison at the end.
    sim: Proc | None = None
    sim_port: int | None = None
    redis_pid: int | None = None
    burst: dict[str, Any] | None = None

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def mark_unavailable(self, why: str) -> None:
        self.available = False
        self.note = why
        if self.proc is not None:
            self.proc.stop()
