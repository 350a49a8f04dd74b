"""End to end: what the ledger journal costs a gateway under load, by fsync interval.

    .venv/bin/python bench/journal_e2e.py   (appends its table to bench/JOURNAL.md)

One simulator (CPU 1) and five Farebox gateways on `bench/farebox.yaml` (CPU 0, ledger to
SQLite, request log and metrics listener off), differing only in the journal: off, on with
no fsync, fsync every 1 s (the default), every 10 ms, and on tmpfs. wrk at c64 for 8 s per gateway,
4 interleaved rounds (order reversed every other round); gateway CPU per request from
/proc/<pid>/stat and requests/s, medians.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.services import free_port  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
VARIANTS = {
    "journal off": {"FAREBOX_JOURNAL_ENABLED": "false"},
    "journal, no fsync": {"FAREBOX_JOURNAL_FSYNC_MS": "0"},
    "journal, fsync every 1 s (default)": {},
    "journal, fsync every 10 ms": {"FAREBOX_JOURNAL_FSYNC_MS": "10"},
    # tmpfs: survives a killed process like the disk does, not a lost machine.
    "journal on tmpfs (/dev/shm), no fsync": {"FAREBOX_JOURNAL_FSYNC_MS": "0", "SHM": "1"},
}
LUA = """wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="journal-e2e-"))
    (work / "post.lua").write_text(LUA)
    sim_port = free_port()
    code = f"from simulator import run; run('127.0.0.1', {sim_port})"
    procs = [subprocess.Popen(["taskset", "-c", "1", PY, "-c", code], cwd=ROOT)]
    gateways: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for n, (name, extra) in enumerate(VARIANTS.items()):
            home = work / f"g{n}"
            home.mkdir()
            env = {
                **os.environ,
                "SIM_PORT": str(sim_port),
                "FAREBOX_DATABASE_URL": f"sqlite+aiosqlite:///{home}/ledger.db",
                "FAREBOX_SPOOL_DIR": str(home / "spool"),
                "FAREBOX_REQUEST_LOG": "false",
                "FAREBOX_METRICS_PORT": "0",
                **extra,
            }
            if env.pop("SHM", None):
                env["FAREBOX_JOURNAL_DIR"] = tempfile.mkdtemp(prefix="journal-", dir="/dev/shm")
            subprocess.run([PY, "-m", "gateway", "migrate"], cwd=ROOT, env=env, check=True)
            port = free_port()
            argv = ["taskset", "-c", "0", PY, "-m", "gateway", "serve"]
            argv += ["--config", "bench/farebox.yaml", "--port", str(port)]
            log = (home / "gateway.log").open("wb")
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
            procs.append(proc)
            gateways[name] = (proc, port)
        time.sleep(5)  # start-up; a warm-up round follows anyway
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in gateways}
        order = list(gateways)
        for rnd in range(5):
            for name in order if rnd % 2 else order[::-1]:
                proc, port = gateways[name]
                before = cpu_s(proc.pid)
                out = subprocess.run(
                    [
                        "wrk",
                        "-t1",
                        "-c64",
                        "-d8s",
                        "-s",
                        str(work / "post.lua"),
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                used = cpu_s(proc.pid) - before
                done = int(
                    next(line for line in out.splitlines() if "requests in" in line).split()[0]
                )
                if rnd:  # round 0 is the warm-up
                    results[name].append((used / done * 1e6, done / 8))
    finally:
        for proc in procs:
            proc.terminate()
    base_cpu = statistics.median(c for c, _ in results["journal off"])
    base_rps = statistics.median(r for _, r in results["journal off"])
    lines = [
        "",
        "## End to end, by fsync interval",
        "",
        f"- **Date:** {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; "
        "`.venv/bin/python bench/journal_e2e.py`",
        "- One simulator and five gateways side by side (ledger to SQLite), wrk c64, 4 "
        "interleaved rounds of 8 s; medians.",
        "",
        "| gateway | CPU µs/request | vs journal off | requests/s | vs journal off |",
        "|---|---|---|---|---|",
    ]
    for name, values in results.items():
        cpu = statistics.median(c for c, _ in values)
        rps = statistics.median(r for _, r in values)
        lines.append(
            f"| {name} | {cpu:.0f} | {cpu - base_cpu:+.0f} µs | {rps:,.0f} | "
            f"{(rps / base_rps - 1) * 100:+.1f} % |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    with (ROOT / "bench" / "JOURNAL.md").open("a") as out:
        out.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
