"""Issue 21, item 9: /metrics off the API port, and a /readyz that tells the truth.

- `farebox serve` with 2 workers: /metrics is a 404 on the API port and served on the
  metrics port, where every scrape (whichever worker answers) counts the traffic both
  workers served; the metrics port serves nothing else.
- FAREBOX_METRICS_ON_API_PORT=admin: /metrics on the API port needs the master key.
- Postgres stopped with no traffic: /readyz says the database is down (ready but
  degraded: the ledger spools), and up again once it is back.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import Settings
from tests import waiting
from tests.gateway_harness import config_from_yaml, running_gateway
from tests.gateway_process import gateway_process
from tests.services import PostgresServer
from tests.simulator import start_simulator

CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "%(sim)s/v1"}
deployments:
  small@sim: {provider: sim, model: sim-small, price: {input: 1, output: 2}}
routes:
  chat: {targets: [small@sim]}
"""
REQUESTS = 24


@pytest.fixture(scope="module")
def simulator() -> Iterator[str]:
    url, stop = start_simulator()
    try:
        yield url
    finally:
        stop()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    # A fresh connection each time, so the workers take turns answering.
    request = urllib.request.Request(url, headers={"Connection": "close", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def post_chat(base_url: str) -> int:
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        base_url + "/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def requests_total(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "farebox_requests"
        for sample in family.samples
        if sample.name == "farebox_requests_total"
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    waiting.wait_until(condition, what, within_s=timeout)


def test_metrics_are_on_their_own_port_and_merge_two_workers(
    simulator: str, tmp_path: Path
) -> None:
    env = {"FAREBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"}
    with gateway_process(CONFIG % {"sim": simulator}, tmp_path, env, workers=2) as gw:
        for _ in range(REQUESTS):
            assert post_chat(gw.base_url) == 200
        status, body = get(f"http://127.0.0.1:{gw.port}/metrics")
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
        assert "farebox_requests_total" not in body

        seen: list[float] = []

        def merged() -> bool:
            status, text = get(gw.metrics_url)
            assert status == 200
            seen.append(requests_total(text))
            return seen[-1] == REQUESTS

        # Workers hand their buffered counts over every second; then every scrape agrees.
        wait_for(merged, f"/metrics to count {REQUESTS} requests ({seen[-3:]})")
        for _ in range(6):
            status, text = get(gw.metrics_url)
            assert status == 200 and requests_total(text) == REQUESTS
        # The metrics port serves metrics and liveness, not the API.
        assert get(gw.metrics_url.replace("/metrics", "/healthz"))[0] == 200
        assert get(gw.metrics_url.replace("/metrics", "/v1/models"))[0] == 404


def test_metrics_on_the_api_port_behind_the_master_key(simulator: str) -> None:
    config = config_from_yaml(CONFIG % {"sim": simulator}, {})
    settings = Settings(
        master_key="sk-master-metrics-0001", ledger_enabled=False, metrics_on_api_port="admin"
    )
    with running_gateway(config, settings) as gw:
        assert httpx.get(f"{gw.root}/metrics").status_code == 401
        wrong = httpx.get(f"{gw.root}/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = httpx.get(
            f"{gw.root}/metrics", headers={"Authorization": "Bearer sk-master-metrics-0001"}
        )
        assert ok.status_code == 200 and "farebox_" in ok.text


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get(f"http://127.0.0.1:{port}/readyz")
    return status, json.loads(body)


def test_readyz_reports_the_database_down_while_postgres_is_stopped(
    simulator: str, postgres: PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    env = {
        "FAREBOX_DATABASE_URL": pg_url,
        "FAREBOX_DB_PING_INTERVAL_S": "0.2",
        "FAREBOX_DB_PING_TIMEOUT_S": "1",
    }
    with gateway_process(CONFIG % {"sim": simulator}, tmp_path, env) as gw:
        wait_for(lambda: readyz(gw.port)[1]["ledger"]["database"] == "up", "database up")
        assert readyz(gw.port)[0] == 200
        postgres.stop()
        try:
            # No traffic at all: nothing is written, so only a ping can notice.
            wait_for(lambda: readyz(gw.port)[1]["ledger"]["database"] == "down", "database down")
            status, body = readyz(gw.port)
            # Ready but degraded: requests are served, the ledger spools to disk.
            assert status == 200 and body["status"] == "degraded", body
            assert body["ledger"]["database_error"] and not body["ledger"]["writes_failing"]
            assert post_chat(gw.base_url) == 200
        finally:
            postgres.start()
        wait_for(lambda: readyz(gw.port)[1]["ledger"]["database"] == "up", "database back")
        assert readyz(gw.port)[1]["status"] == "ready"
