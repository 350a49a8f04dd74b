"""strategy speculative end to end: targets start at once, the fastest answer fails the
gate, the next one that passes goes to the client, and the slow one is cancelled — and
billed, with estimated tokens, in the ledger."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.conftest import sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows, wait_for_rows
from tests.simulator import running_simulator

CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM}/v1"}
deployments:
  fast-bad: {provider: sim, model: "sim-fb::reply=not json,latency=10",
             price: {input: 0.2, output: 0.6}}
  fast-bad-2: {provider: sim, model: "sim-fb2::reply=still not json,latency=30",
               price: {input: 0.2, output: 0.6}}
  mid-good: {provider: sim, model: "sim-mg::latency=150", price: {input: 1.0, output: 3.0}}
  slow-good: {provider: sim, model: "sim-sg::latency=2500", price: {input: 3.0, output: 15.0}}
  broken: {provider: sim, model: "sim-x::status=503", price: {input: 1.0, output: 3.0}}
routes:
  spec:
    strategy: speculative
    targets: [fast-bad, mid-good, slow-good]
    gate: {json_schema: request}
    retry: {attempts: 1}
  spec-two:
    strategy: speculative
    targets: [fast-bad, slow-good, mid-good]
    speculative: {n: 2}
    gate: {json_schema: request}
    retry: {attempts: 1}
  spec-none:
    strategy: speculative
    targets: [fast-bad, fast-bad-2]
    gate: {json_schema: request}
  spec-deadline:
    strategy: speculative
    targets: [fast-bad, slow-good]
    gate: {json_schema: request}
    timeouts: {total_ms: 600}
  spec-broken:
    strategy: speculative
    targets: [broken, mid-good]
    gate: {json_schema: request}
    retry: {attempts: 1}
"""
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
ASK: Any = [{"role": "user", "content": "Extract the person: Ada, 36."}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with running_simulator() as sim:
        settings = sqlite_settings(tmp_path_factory.mktemp("speculative"))
        with running_gateway(config_from_yaml(CONFIG, {"SIM": sim}), settings) as running:
            yield running


@pytest.fixture(scope="module")
def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, route: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=route, messages=ASK, response_format=FORMAT
    )


def ledger(gw: RunningGateway, request_id: str) -> tuple[Any, dict[str, Any]]:
    url = ledger_url(gw)
    rows = wait_for_rows(
        url,
        "SELECT final_status, final_deployment, gate_outcome, cost_usd, attempts "
        "FROM requests WHERE id = :id",
        {"id": request_id},
    )
    assert rows
    attempts = sql_rows(
        url,
        "SELECT deployment, role, error_class, gate_outcome, input_uncached_tokens, "
        "output_tokens, cost_usd, token_source, latency_ms FROM attempts WHERE request_id = :id",
        {"id": request_id},
    )
    return rows[0], {a.deployment: a for a in attempts}


def test_fastest_fails_the_gate_next_passing_answer_wins_the_rest_cancelled(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    started = time.perf_counter()
    raw = ask(client, "spec")
    elapsed = time.perf_counter() - started
    content = raw.parse().choices[0].message.content
    assert set(json.loads(content)) == {"name", "age"}
    assert raw.headers["x-farebox-deployment"] == "mid-good"
    assert raw.headers["x-farebox-gate"] == "pass"
    assert raw.headers["x-farebox-speculative-cancelled"] == "1"
    assert elapsed < 1.5  # did not wait for slow-good's 2.5 s
    request, attempts = ledger(gw, raw.headers["x-request-id"])
    assert (request.final_status, request.final_deployment, request.gate_outcome) == (
        200,
        "mid-good",
        "pass",
    )
    assert set(attempts) == {"fast-bad", "mid-good", "slow-good"}
    assert attempts["fast-bad"].gate_outcome != "pass" and attempts["fast-bad"].error_class is None
    assert attempts["mid-good"].gate_outcome == "pass"
    slow = attempts["slow-good"]
    # Cancelled, and billed: input estimated, output prorated from the answers that came.
    assert slow.error_class == "cancelled" and slow.token_source == "estimated"
    assert slow.input_uncached_tokens > 0 and slow.output_tokens > 0
    assert slow.cost_usd > 0
    answered = [attempts["fast-bad"].output_tokens, attempts["mid-good"].output_tokens]
    assert slow.output_tokens <= max(answered)
    total = sum((Decimal(str(a.cost_usd)) for a in attempts.values()), Decimal(0))
    assert Decimal(str(request.cost_usd)) == total
    assert Decimal(raw.headers["x-farebox-cost-usd"]) == total


def test_a_failed_candidate_makes_way_for_the_next_target(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    # n=2: fast-bad and slow-good start; fast-bad fails the gate, so mid-good starts,
    # passes first, and slow-good is cancelled.
    raw = ask(client, "spec-two")
    assert raw.headers["x-farebox-deployment"] == "mid-good"
    _, attempts = ledger(gw, raw.headers["x-request-id"])
    assert attempts["mid-good"].role == "fallback"
    assert attempts["slow-good"].error_class == "cancelled"


def test_nothing_passes_returns_the_last_failed_answer_flagged(client: openai.OpenAI) -> None:
    raw = ask(client, "spec-none")
    assert raw.headers["x-farebox-gate"].startswith("fail; ")
    assert raw.headers["x-farebox-speculative-cancelled"] == "0"


@pytest.mark.serial  # CPU timing: not beside another test worker
def test_deadline_cancels_and_bills_the_slow_candidate(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    started = time.perf_counter()
    raw = ask(client, "spec-deadline")
    assert time.perf_counter() - started < 1.2
    assert raw.headers["x-farebox-gate"].startswith("fail; ")
    assert raw.headers["x-farebox-deployment"] == "fast-bad"
    _, attempts = ledger(gw, raw.headers["x-request-id"])
    slow = attempts["slow-good"]
    assert slow.error_class == "timeout" and slow.cost_usd > 0


def test_an_upstream_error_is_metered_and_the_other_answer_wins(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    raw = ask(client, "spec-broken")
    assert raw.headers["x-farebox-deployment"] == "mid-good"
    _, attempts = ledger(gw, raw.headers["x-request-id"])
    assert attempts["broken"].error_class == "http_503"
