"""Cascade end to end: a cheap deployment that spoils 30 % of its JSON answers, a strong one
behind it, and a schema gate between. Every answer the client gets validates, the ledger
shows the escalations, and one good answer costs less than sending everything strong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from routing.json_schema import validate
from tests.conftest import sqlite_settings
from tests.gateway_harness import config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.simulator import running_simulator, simulator_stats

CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM}/v1"}
deployments:
  cheap: {provider: sim, model: "sim-cheap::invalid_json_rate=0.3,tokens=30",
          price: {input: 0.2, output: 0.6}}
  strong: {provider: sim, model: "sim-strong::tokens=30", price: {input: 3.0, output: 15.0}}
routes:
  extract:
    strategy: cascade
    targets: [cheap, strong]
    gate: {json_schema: request}
    retry: {attempts: 1}
  extract-repair:
    strategy: cascade
    targets: [cheap, strong]
    gate: {json_schema: request, on_fail: repair}
    retry: {attempts: 1}
  strong-only: {targets: [strong]}
"""
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "country": {"type": "string"},
    },
    "required": ["name", "age", "country"],
    "additionalProperties": False,
}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
N = 100


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(seed=9) as sim:
        settings = sqlite_settings(tmp_path_factory.mktemp("cascade"))
        config = config_from_yaml(CONFIG, {"SIM": sim})
        answers: dict[str, list[tuple[str, str]]] = {}
        with running_gateway(config, settings) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
            for route in ("extract", "extract-repair", "strong-only"):
                got = answers.setdefault(route, [])
                for i in range(N):
                    raw = client.chat.completions.with_raw_response.create(
                        model=route,
                        messages=[{"role": "user", "content": f"Extract person {i}."}],
                        response_format=FORMAT,
                    )
                    content = raw.parse().choices[0].message.content or ""
                    got.append((content, raw.headers.get("x-farebox-gate", "")))
        yield {
            "answers": answers,
            "db": settings.database_url,
            "stats": simulator_stats(sim),
        }


def test_every_answer_the_client_gets_validates(run: dict[str, Any]) -> None:
    for route in ("extract", "extract-repair"):
        for content, gate in run["answers"][route]:
            assert validate(json.loads(content), SCHEMA) == []
            assert gate.startswith("pass")
    # ...even though the cheap deployment really did spoil about 30 % of its answers.
    spoiled = run["stats"]["faults"]["invalid_json"]
    assert 40 <= spoiled <= 90  # of ~200 cheap answers


def test_the_ledger_shows_escalations_and_repairs(run: dict[str, Any]) -> None:
    rows = sql_rows(
        run["db"],
        "SELECT r.route, a.role, a.deployment, a.gate_outcome, count(*) FROM attempts a "
        "JOIN requests r ON r.id = a.request_id GROUP BY 1, 2, 3, 4",
    )
    seen = {(route, role, dep, gate): n for route, role, dep, gate, n in rows}
    failed_cheap = sum(
        n
        for (route, role, dep, gate), n in seen.items()
        if route == "extract" and dep == "cheap" and gate != "pass"
    )
    assert 15 <= failed_cheap <= 45  # ~30 % of 100
    # Each gate failure on cheap escalated to strong, which passed.
    assert seen[("extract", "escalation", "strong", "pass")] == failed_cheap
    assert seen[("extract", "primary", "cheap", "pass")] == N - failed_cheap
    # With on_fail: repair, cheap got one more try first (role repair).
    repairs = sum(
        n
        for (route, role, _, _), n in seen.items()
        if route == "extract-repair" and role == "repair"
    )
    assert repairs > 0
    outcomes = dict(sql_rows(run["db"], "SELECT gate_outcome, count(*) FROM requests GROUP BY 1"))
    assert outcomes["pass"] == 2 * N  # both gated routes: every request ended passing


def test_cost_per_successful_request_beats_all_strong(run: dict[str, Any]) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["usage", "--since", "1d", "--by", "route", "--database-url", run["db"]]
    )
    assert result.exit_code == 0, result.output
    assert "cost/success" in result.output
    per_success = {
        route: Decimal(str(cost)) / ok
        for route, cost, ok in sql_rows(
            run["db"],
            "SELECT route, sum(cost_usd), sum(CASE WHEN final_status = 200 AND "
            "(gate_outcome IS NULL OR gate_outcome = 'pass') THEN 1 ELSE 0 END) "
            "FROM requests GROUP BY route",
        )
    }
    print(
        f"\ncost per successful request: cascade ${per_success['extract']:.8f}, "
        f"with repair ${per_success['extract-repair']:.8f}, "
        f"all strong ${per_success['strong-only']:.8f}"
    )
    assert per_success["extract"] < per_success["strong-only"]
    assert per_success["extract-repair"] < per_success["strong-only"]
