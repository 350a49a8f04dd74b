"""A gateway with a Postgres ledger, Redis and a master key, for the drill tests: the admin
API (test_drill_admin.py) and `farebox drill` (test_drill_cli.py) run against it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.config.loading import load_config
from gateway.settings import Settings
from tests.conftest import SIM_KEY
from tests.gateway_harness import RunningGateway, running_gateway

MASTER = "master-key-for-drill-tests-0123"
CLIENT = "sk-drill-tests-client-0001"

DRILL_YAML = """
auth:
  keys:
    - {name: drills, key: "%(client)s"}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "%(sim)s/v1", api_key: "%(sim_key)s"}
deployments:
  small@sim: {provider: sim, model: sim-small, price: {input: 0.1, output: 0.2}}
  alt@sim: {provider: sim, model: sim-alt, price: {input: 0.2, output: 0.4}}
  broken@sim: {provider: sim, model: "sim-broken::status=500"}
routes:
  chat:
    strategy: failover
    targets: [small@sim]
    fallbacks: [alt@sim]
    retry: {attempts: 1}
  other: {targets: [small@sim]}
"""


@dataclass
class DrillEnv:
    gw: RunningGateway
    pg_url: str
    redis_url: str
    config_file: Path

    def admin(self, method: str, path: str, key: str | None = MASTER, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, self.gw.root + path, headers=headers, timeout=10, **kw)

    def chat(self, n: int, route: str = "chat") -> list[httpx.Response]:
        with httpx.Client(base_url=self.gw.base_url, timeout=10) as client:
            return [
                client.post(
                    "/chat/completions",
                    headers={"authorization": f"Bearer {CLIENT}"},
                    json={"model": route, "messages": [{"role": "user", "content": f"hi {i}"}]},
                )
                for i in range(n)
            ]

    def wait_status(self, drill_id: str, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data: dict[str, Any] = self.admin("GET", f"/admin/drills/{drill_id}").json()
            if data.get("status") in statuses or time.monotonic() > deadline:
                return data
            time.sleep(0.2)  # poll: a condition wait

    def wait_attempts(self, drill_id: str, at_least: int, timeout: float = 10) -> dict[str, Any]:
        """The drill once the ledger shows `at_least` attempts on its target."""
        deadline = time.monotonic() + timeout
        while True:
            data: dict[str, Any] = self.admin("GET", f"/admin/drills/{drill_id}").json()
            done = data.get("progress", {}).get("attempts", 0) >= at_least
            if done or time.monotonic() > deadline:
                return data
            time.sleep(0.1)  # poll: a condition wait


def write_config(directory: Path, simulator: str, extra: str = "") -> Path:
    path = directory / "gateway.yaml"
    text = DRILL_YAML % {"client": CLIENT, "sim": simulator, "sim_key": SIM_KEY}
    path.write_text(text + extra, encoding="utf-8")
    return path


@contextmanager
def drill_env(
    simulator: str, pg_url: str, redis_url: str, tmp_path: Path, **overrides: Any
) -> Iterator[DrillEnv]:
    config_file = write_config(tmp_path, simulator, overrides.pop("extra_yaml", ""))
    settings = Settings(
        database_url=pg_url,
        master_key=MASTER,
        redis_url=redis_url,
        spool_dir=str(tmp_path / "spool"),
        ledger_max_delay_ms=50,
        metrics_on_api_port="open",  # in-process: no metrics listener
        **overrides,
    )
    with running_gateway(load_config(config_file), settings) as gw:
        yield DrillEnv(gw, pg_url, redis_url, config_file)
