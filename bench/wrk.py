"""Load generation with wrk: Lua script for the POST body/headers, result parsing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

# done() prints one machine-readable line; --latency also prints wrk's own distribution.
_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {api_key}"
wrk.body = [==[{body}]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {{\\"requests\\":%d,\\"duration_us\\":%d,\\"non2xx\\":%d,"
    .. "\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"timeout\\":%d,"
    .. "\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"mean_us\\":%f,\\"max_us\\":%d}}\\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


_MIXED = """\
local n = 0
local plain, stream
init = function(args)
  local h = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {api_key}"}}
  plain = wrk.format("POST", nil, h, [==[{body}]==])
  stream = wrk.format("POST", nil, h, [==[{stream_body}]==])
end
request = function()
  n = n + 1
  if n % {every} == 0 then return stream end
  return plain
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    ok_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def request_body(model: str, stream: bool) -> str:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


def write_script(path: Path, api_key: str, model: str, stream: bool) -> Path:
    path.write_text(_LUA.format(api_key=api_key, body=request_body(model, stream)))
    return path


def write_mixed_script(path: Path, api_key: str, model: str, stream_every: int) -> Path:
    """Non-stream requests with every `stream_every`-th one a stream (the soak's mix)."""
    done = _LUA[_LUA.index("done = function") :]
    head = _MIXED.format(
        api_key=api_key,
        body=request_body(model, False),
        stream_body=request_body(model, True),
        every=stream_every,
    )
    path.write_text(head + done.replace("{{", "{").replace("}}", "}"))
    return path


def wrk_argv(
    url: str, script: Path, connections: int, duration_s: float, threads: int = 1
) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def ensure_wrk() -> None:
    """Install Debian's wrk when missing (root, or via sudo)."""
    if shutil.which("wrk"):
        return
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("bench: wrk not found; installing it with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*prefix, "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*prefix, "apt-get", "install", "-y", "-q", "wrk"], check=True, env=env)
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk still not on PATH after apt-get install")


def parse(stdout: str) -> WrkResult:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no BENCH_RESULT line:\n{stdout[-2000:]}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    duration = r["duration_us"] / 1e6
    ok = r["requests"] - r["non2xx"]
    return WrkResult(
        requests=r["requests"],
        duration_s=round(duration, 3),
        ok_rps=round(ok / duration, 1) if duration > 0 else 0.0,
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        mean_ms=round(r["mean_us"] / 1000, 3),
        max_ms=r["max_us"] / 1000,
        non2xx=r["non2xx"],
        socket_errors=r["connect"] + r["read"] + r["write"] + r["timeout"],
    )


def run_wrk(
    url: str,
    script: Path,
    connections: int,
    duration_s: float,
    threads: int = 1,
    cpus: set[int] | None = None,
    log: Path | None = None,
) -> WrkResult:
    argv = wrk_argv(url, script, connections, duration_s, threads)
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    proc = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=duration_s + 30
    )
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return parse(proc.stdout)
