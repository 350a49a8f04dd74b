"""The `farebox` command as users run it: real subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import SIM_KEY

ROOT = Path(__file__).resolve().parents[2]
FAREBOX = [sys.executable, "-m", "gateway"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FAREBOX, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_config_check_prints_plans(tmp_path: Path) -> None:
    result = run("config", "check", "config/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert "route chat" in result.stdout
    assert "1. primary  llama-70b@sim-gpu" in result.stdout


def test_config_check_reports_every_error_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "providers:\n  p: {kind: serverless, api_base: http://x/v1}\n"
        "deployments:\n  d@p: {provider: p, model: m, prise: 1}\n"
        "routes:\n  r: {targets: [d@q]}\n"
    )
    result = run("config", "check", str(bad))
    assert result.returncode == 1
    assert (
        f"error: {bad}:4: deployments.d@p.prise: unknown key 'prise' (did you mean 'price'?)"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_serve_refuses_to_start_without_any_key(tmp_path: Path) -> None:
    cfg = tmp_path / "nokeys.yaml"
    cfg.write_text("providers: {}\n")
    env = {k: v for k, v in os.environ.items() if k != "FAREBOX_MASTER_KEY"}
    result = subprocess.run(
        [*FAREBOX, "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert "no API keys configured" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited early"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)  # poll: a condition wait
    pytest.fail(f"nothing listening on {port}")


def test_serve_with_two_workers_and_master_key(simulator: str, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "providers:\n  sim: {kind: serverless, api_base: '${SIM_URL}/v1', api_key: '${SIM_KEY}'}\n"
        "deployments:\n  small@sim: {provider: sim, model: sim-small}\n"
        "routes:\n  chat: {targets: [small@sim]}\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "SIM_URL": simulator,
        "SIM_KEY": SIM_KEY,
        "FAREBOX_MASTER_KEY": "sk-master-key-1",
        "FAREBOX_METRICS_PORT": "0",  # not the shared default: tests run in parallel
    }
    proc = subprocess.Popen(
        [*FAREBOX, "serve", "--config", str(cfg), "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(port, proc)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-master-key-1", max_retries=3
        )
        ids = {
            client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}]
            ).id
            for _ in range(10)
        }
        assert len(ids) == 10
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0
            ).models.list()
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "Traceback" not in output


def test_migrate_then_usage_reads_the_ledger(tmp_path: Path, simulator: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    env = {"FAREBOX_DATABASE_URL": url}
    empty = run("usage", "--since", "1h", env=env)
    assert empty.returncode == 1 and "cannot read the ledger" in empty.stderr
    migrated = run("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "ledger schema at head" in migrated.stdout
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "auth: none\n"
        "providers:\n"
        "  sim: {kind: serverless, api_base: '${SIM_URL}/v1', api_key: '${SIM_KEY}'}\n"
        "deployments:\n"
        "  small@sim: {provider: sim, model: sim-small, price: {input: 1, output: 2}}\n"
        "routes:\n  chat: {targets: [small@sim]}\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [*FAREBOX, "serve", "--config", str(cfg), "--port", str(port)],
        cwd=ROOT,
        env={
            **os.environ,
            **env,
            "SIM_URL": simulator,
            "SIM_KEY": SIM_KEY,
            "FAREBOX_SPOOL_DIR": str(tmp_path / "spool"),
            "FAREBOX_METRICS_PORT": "0",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(port, proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        for _ in range(3):
            client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}]
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    for by in ("route", "deployment", "key"):
        report = run("usage", "--since", "1h", "--by", by, env=env)
        assert report.returncode == 0, report.stderr
        assert (
            "chat" if by == "route" else "small@sim" if by == "deployment" else "-"
        ) in report.stdout
    by_route = run("usage", "--since", "1h", env=env).stdout
    row = next(line for line in by_route.splitlines() if "chat" in line)
    assert row.split("│")[2].strip() == "3"  # requests
    bad = run("usage", "--since", "yesterday", env=env)
    assert bad.returncode != 0 and "30m, 24h" in bad.stderr


def test_serve_warns_when_the_ledger_is_not_migrated(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("auth: none\n")
    port = free_port()
    env = {
        **os.environ,
        "FAREBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'new.db'}",
        "FAREBOX_SPOOL_DIR": str(tmp_path / "spool"),
        "FAREBOX_METRICS_PORT": "0",
    }
    proc = subprocess.Popen(
        [*FAREBOX, "serve", "--config", str(cfg), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert "run `farebox migrate`" in output
