"""Run `farebox serve` as a real subprocess (for load, outage and SIGTERM tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.services import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    # The metrics listener (FAREBOX_METRICS_PORT): /metrics is not on `port`.
    metrics_port: int = 0

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def gateway_process(
    config_text: str, tmp: Path, env: Mapping[str, str], workers: int = 1
) -> Iterator[GatewayProcess]:
    with gateway_processes([(config_text, tmp, env)], workers) as (running,):
        yield running


@contextmanager
def gateway_processes(
    specs: Sequence[tuple[str, Path, Mapping[str, str]]], workers: int = 1
) -> Iterator[list[GatewayProcess]]:
    """Several gateways (config text, home directory, env each), started side by side: all
    are spawned before the first is waited for, so replicas boot in parallel."""
    started: list[GatewayProcess] = []
    try:
        for config_text, tmp, env in specs:
            started.append(_spawn(config_text, tmp, env, workers))
        for running in started:
            _wait_healthy(running)
        yield started
    finally:
        _stop([running.proc for running in reversed(started)])


def _spawn(config_text: str, tmp: Path, env: Mapping[str, str], workers: int) -> GatewayProcess:
    config = tmp / "gateway.yaml"
    config.write_text(config_text)
    port = free_port()
    log = tmp / "gateway.log"
    # Never the default 9464: gateways of parallel tests would fight over it.
    env = {"FAREBOX_METRICS_PORT": str(free_port()), **env}
    metrics_port = int(env["FAREBOX_METRICS_PORT"])
    # Each gateway its own spool and journal: a killed one's journal is recovered by the
    # next gateway started on the same directory, never by another test's.
    full_env = {**os.environ, "FAREBOX_SPOOL_DIR": str(tmp / "spool"), **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return GatewayProcess(proc, port, log, metrics_port)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every one still running (side by side, they drain together), then wait."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        # SIGTERM first: a multi-worker master killed outright leaves its workers behind.
        proc.terminate()
    for proc in running:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_healthy(gw: GatewayProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{gw.output()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{gw.port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # poll: a condition wait
    raise RuntimeError(f"gateway not healthy in {timeout} s:\n{gw.output()}")
