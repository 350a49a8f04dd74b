"""Start-up time and idle memory of `farebox serve`, without and with a litellm provider.

    .venv/bin/python bench/startup.py [--runs 3]

litellm is imported only when a configured provider speaks a protocol other than OpenAI's;
this measures what that costs, side by side in one run (runs interleaved, medians shown):
seconds from spawn to the first 200 on /healthz, and resident memory (VmRSS) after one
served request per route.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from targets import free_port  # noqa: E402

OPENAI_ONLY = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:${SIM_PORT}/v1"}
deployments:
  small@sim: {provider: sim, model: sim-small}
routes:
  chat: {targets: [small@sim]}
"""
WITH_ANTHROPIC = (
    OPENAI_ONLY.replace(
        "deployments:",
        '  claude: {kind: closed_api, protocol: anthropic, api_base: "http://127.0.0.1:${SIM_PORT}",'
        " api_key: k}\ndeployments:",
    ).replace("routes:", "  haiku@claude: {provider: claude, model: claude-haiku-4-5}\nroutes:")
    + "  claude: {targets: [haiku@claude]}\n"
)
CONFIGS = {
    "openai only": (OPENAI_ONLY, ["chat"]),
    "+ anthropic": (WITH_ANTHROPIC, ["chat", "claude"]),
}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _get(url: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return int(response.status)


def measure(config_text: str, routes: list[str], sim_port: int, work: Path) -> tuple[float, float]:
    config = work / "farebox.yaml"
    config.write_text(config_text)
    port = free_port()
    env = {
        **os.environ,
        "SIM_PORT": str(sim_port),
        "FAREBOX_LEDGER_ENABLED": "false",
        "FAREBOX_SPOOL_DIR": str(work / "spool"),
    }
    argv = [str(ROOT / ".venv" / "bin" / "farebox"), "serve", "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit("farebox exited during start-up")
            try:
                if _get(f"http://127.0.0.1:{port}/healthz") == 200:
                    break
            except OSError:
                time.sleep(0.02)
        startup = time.perf_counter() - started
        for route in routes:
            body = json.dumps({"model": route, "messages": [{"role": "user", "content": "hi"}]})
            _get(f"http://127.0.0.1:{port}/v1/chat/completions", body.encode())
        time.sleep(0.5)
        return startup, _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sim_port = free_port()
    code = f"from simulator import run; run('127.0.0.1', {sim_port})"
    sim = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", code],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    try:
        time.sleep(1.5)
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.runs):
                for name, (text, routes) in CONFIGS.items():
                    results[name].append(measure(text, routes, sim_port, Path(tmp)))
    finally:
        sim.terminate()
        sim.wait(10)
    print("| config | start-up (s, median) | idle RSS after 1 request/route (MB, median) |")
    print("|---|---|---|")
    for name, samples in results.items():
        startup = statistics.median(s for s, _ in samples)
        rss = statistics.median(r for _, r in samples)
        print(f"| {name} | {startup:.2f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
