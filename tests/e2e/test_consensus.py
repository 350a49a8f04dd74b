"""strategy consensus end to end: three simulated deployments that answer as told (the
simulator's `reply=` directive), the real OpenAI SDK, and the ledger read back with SQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from tests.conftest import sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows, wait_for_rows
from tests.simulator import running_simulator

PARIS_JSON = '{"city": "Paris"%2C "country": "FR"%2C "population_m": 2.1}'
PARIS_JSON_REORDERED = '{"population_m":2.10%2C"country":"fr"%2C"city":"Paris"}'
LYON_JSON = '{"city": "Lyon"%2C "country": "FR"%2C "population_m": 0.5}'
CONFIG = f"""
auth: none
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "${{SIM}}/v1"}}
deployments:
  a: {{provider: sim, model: "sim-a::reply=Paris,latency=20", price: {{input: 1.0, output: 2.0}}}}
  b: {{provider: sim, model: "sim-b::reply=  paris.,latency=40",
       price: {{input: 2.0, output: 4.0}}}}
  c: {{provider: sim, model: "sim-c::reply=Lyon,latency=30", price: {{input: 3.0, output: 8.0}}}}
  d: {{provider: sim, model: "sim-d::reply=Marseille", price: {{input: 0.5, output: 1.0}}}}
  broken: {{provider: sim, model: "sim-x::status=500", price: {{input: 1.0, output: 2.0}}}}
  slow: {{provider: sim, model: "sim-s::reply=Paris,latency=3000",
          price: {{input: 1.0, output: 2.0}}}}
  ja: {{provider: sim, model: 'sim-ja::reply={PARIS_JSON}', price: {{input: 1.0, output: 2.0}}}}
  jb: {{provider: sim, model: 'sim-jb::reply={PARIS_JSON_REORDERED}',
        price: {{input: 1.0, output: 2.0}}}}
  jc: {{provider: sim, model: 'sim-jc::reply={LYON_JSON}', price: {{input: 1.0, output: 2.0}}}}
  ta: {{provider: sim, model: 'sim-ta::tool=weather,reply={{"city":"Paris"}}',
        price: {{input: 1.0, output: 2.0}}}}
  tb: {{provider: sim, model: 'sim-tb::tool=weather,reply={{ "city" : "paris" }}',
        price: {{input: 1.0, output: 2.0}}}}
  tc: {{provider: sim, model: 'sim-tc::tool=time,reply={{"city":"Paris"}}',
        price: {{input: 1.0, output: 2.0}}}}
  single: {{provider: sim, model: "sim-a::reply=Paris,latency=20",
            price: {{input: 1.0, output: 2.0}}}}
routes:
  majority: {{strategy: consensus, targets: [a, b, c]}}
  agree: {{strategy: consensus, targets: [a, b]}}
  split-fail: {{strategy: consensus, targets: [a, c, d], retry: {{attempts: 1}}}}
  split-cheapest:
    strategy: consensus
    targets: [a, c, d]
    consensus: {{on_disagree: pass, tie_break: cheapest}}
  split-strongest:
    strategy: consensus
    targets: [a, c, d]
    consensus: {{on_disagree: pass, tie_break: strongest}}
  json: {{strategy: consensus, targets: [ja, jb, jc]}}
  json-split: {{strategy: consensus, targets: [ja, jc]}}
  tools: {{strategy: consensus, targets: [ta, tb, tc]}}
  with-broken:
    strategy: consensus
    targets: [a, broken, b]
    fallbacks: [c]
    retry: {{attempts: 1}}
  deadline:
    strategy: consensus
    targets: [a, b, slow]
    timeouts: {{total_ms: 800}}
  two-of-three: {{strategy: consensus, targets: [a, b, c], consensus: {{n: 2}}}}
  no-stream: {{strategy: consensus, targets: [a, b], streaming: refuse}}
  hang-up: {{strategy: consensus, targets: [a, slow], workload: hang-up-test}}
  one: {{targets: [single]}}
"""
ASK: Any = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS: Any = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("time", "weather")
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with running_simulator() as sim:
        settings = sqlite_settings(tmp_path_factory.mktemp("consensus"))
        with running_gateway(config_from_yaml(CONFIG, {"SIM": sim}), settings) as running:
            yield running


@pytest.fixture(scope="module")
def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


def ask(client: openai.OpenAI, route: str, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model=route, messages=ASK, **extra)


def request_row(gw: RunningGateway, request_id: str) -> Any:
    rows = wait_for_rows(
        ledger_url(gw),
        "SELECT consensus, final_status, final_deployment, attempts, cost_usd, error_class "
        "FROM requests WHERE id = :id",
        {"id": request_id},
    )
    assert rows, request_id
    return rows[0]


def attempts_of(gw: RunningGateway, request_id: str) -> list[Any]:
    request_row(gw, request_id)  # written in the same batch as its attempts
    return sql_rows(
        ledger_url(gw),
        "SELECT deployment, role, error_class, input_uncached_tokens, output_tokens, cost_usd, "
        "token_source FROM attempts WHERE request_id = :id ORDER BY deployment",
        {"id": request_id},
    )


def test_one_different_answer_is_outvoted(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = ask(client, "majority")
    reply = raw.parse()
    assert reply.choices[0].message.content == "Paris"  # a's answer: first in target order
    assert raw.headers["x-farebox-consensus"] == "majority"
    assert raw.headers["x-farebox-consensus-votes"] == "2/3"
    assert raw.headers["x-farebox-deployment"] == "a"
    assert raw.headers["x-farebox-attempts"] == "3"
    row = request_row(gw, raw.headers["x-request-id"])
    assert row.consensus == "majority" and row.final_status == 200 and row.final_deployment == "a"
    attempts = attempts_of(gw, raw.headers["x-request-id"])
    assert [(a.deployment, a.error_class) for a in attempts] == [
        ("a", None),
        ("b", None),
        ("c", None),
    ]
    assert {a.role for a in attempts} == {"primary", "candidate"}
    # Every candidate is priced, and the request costs all of them together.
    total = sum((Decimal(str(a.cost_usd)) for a in attempts), Decimal(0))
    assert all(a.cost_usd and a.token_source == "provider" for a in attempts)
    assert Decimal(str(row.cost_usd)) == total
    assert Decimal(raw.headers["x-farebox-cost-usd"]) == total


def test_all_the_same_is_agree(client: openai.OpenAI) -> None:
    raw = ask(client, "agree")
    assert raw.headers["x-farebox-consensus"] == "agree"
    assert raw.headers["x-farebox-consensus-votes"] == "2/2"


def test_all_different_fails_closed_as_conflict_error(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.ConflictError) as caught:
        ask(client, "split-fail")
    err = caught.value
    assert err.status_code == 409
    assert err.code == "consensus_disagreement"
    assert err.response.headers["x-farebox-consensus"] == "disagree"
    body = err.body
    assert isinstance(body, dict)
    assert body["param"] is None and body["type"] == "invalid_request_error"
    candidates = body["candidates"]
    assert [(c["deployment"], c["answer"], c["group"]) for c in candidates] == [
        ("a", "Paris", 0),
        ("c", "Lyon", 1),
        ("d", "Marseille", 2),
    ]
    assert "split 1/1/1" in err.message
    row = request_row(gw, err.response.headers["x-request-id"])
    assert (row.consensus, row.final_status, row.error_class) == (
        "disagree",
        409,
        "consensus_disagreement",
    )
    assert row.final_deployment is None
    # Billed all the same: three priced attempts.
    assert len(attempts_of(gw, err.response.headers["x-request-id"])) == 3
    assert Decimal(err.response.headers["x-farebox-cost-usd"]) == Decimal(str(row.cost_usd))


def test_disagreement_can_pass_with_a_flag_and_a_tie_break(client: openai.OpenAI) -> None:
    cheapest = ask(client, "split-cheapest")
    assert cheapest.headers["x-farebox-consensus"] == "disagree"
    assert cheapest.headers["x-farebox-consensus-votes"] == "1/3"
    assert cheapest.parse().choices[0].message.content == "Marseille"  # d costs least
    strongest = ask(client, "split-strongest")
    assert strongest.headers["x-farebox-deployment"] == "c"  # highest output price
    assert strongest.parse().choices[0].message.content == "Lyon"


def test_json_answers_compare_field_by_field(client: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_object"}
    raw = ask(client, "json", response_format=fmt)
    assert raw.headers["x-farebox-consensus"] == "majority"
    assert json.loads(raw.parse().choices[0].message.content)["city"] == "Paris"
    with pytest.raises(openai.ConflictError) as caught:
        ask(client, "json-split", response_format=fmt)
    assert "differ in city, population_m" in caught.value.message
    answers = [c["answer"] for c in caught.value.body["candidates"]]  # type: ignore[index]
    assert answers[1] == {"city": "Lyon", "country": "FR", "population_m": 0.5}


def test_tool_calls_compare_name_and_arguments(client: openai.OpenAI) -> None:
    raw = ask(client, "tools", tools=TOOLS)
    assert raw.headers["x-farebox-consensus"] == "majority"
    call = raw.parse().choices[0].message.tool_calls[0]
    assert call.function.name == "weather"


def test_failed_candidate_is_replaced_and_billed(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = ask(client, "with-broken")
    # a and b say Paris, the fallback c that replaced `broken` says Lyon.
    assert raw.headers["x-farebox-consensus"] == "majority"
    assert raw.headers["x-farebox-consensus-votes"] == "2/3"
    attempts = attempts_of(gw, raw.headers["x-request-id"])
    by_dep = {a.deployment: a for a in attempts}
    assert set(by_dep) == {"a", "b", "broken", "c"}
    assert by_dep["broken"].error_class == "http_500"
    assert by_dep["broken"].input_uncached_tokens > 0  # a 500 is billed: estimated input
    assert by_dep["c"].role == "fallback"


@pytest.mark.serial  # CPU timing: not beside another test worker
def test_deadline_cancels_the_slow_candidate_and_bills_it(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    started = time.perf_counter()
    raw = ask(client, "deadline")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.5  # bounded by total_ms 800, not the slow candidate's 3 s
    assert raw.headers["x-farebox-consensus"] == "agree"
    assert raw.headers["x-farebox-consensus-votes"] == "2/2"
    attempts = {a.deployment: a for a in attempts_of(gw, raw.headers["x-request-id"])}
    slow = attempts["slow"]
    assert slow.error_class == "timeout" and slow.token_source == "estimated"
    assert slow.input_uncached_tokens > 0 and slow.output_tokens > 0 and slow.cost_usd > 0


def test_a_client_hang_up_cancels_and_bills_the_candidates(gw: RunningGateway) -> None:
    impatient = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=0.4)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="hang-up", messages=ASK)
    url = ledger_url(gw)
    rows = wait_for_rows(
        url, "SELECT id, final_status, error_class FROM requests WHERE workload = 'hang-up-test'"
    )
    assert [(r.final_status, r.error_class) for r in rows] == [(499, "client_cancelled")]
    attempts = {a.deployment: a for a in attempts_of(gw, rows[0].id)}
    assert attempts["a"].error_class is None  # answered in 20 ms, billed at its real usage
    slow = attempts["slow"]
    assert slow.error_class == "client_cancelled" and slow.input_uncached_tokens > 0
    assert slow.output_tokens == attempts["a"].output_tokens  # prorated, capped at a's


def test_n_limits_the_candidates(gw: RunningGateway, client: openai.OpenAI) -> None:
    raw = ask(client, "two-of-three")
    assert raw.headers["x-farebox-consensus"] == "agree"
    assert {a.deployment for a in attempts_of(gw, raw.headers["x-request-id"])} == {"a", "b"}


def test_streaming_is_buffered_or_refused(client: openai.OpenAI, gw: RunningGateway) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="majority", messages=ASK, stream=True
    ) as response:
        assert response.headers["x-farebox-consensus"] == "majority"
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )
    assert text == "Paris"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="no-stream", messages=ASK, stream=True)
    assert caught.value.code == "stream_not_supported"
    assert caught.value.param == "stream"
    # Refusing is cheap: nothing reached an upstream.
    raw = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={"model": "no-stream", "messages": ASK, "stream": True},
    )
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_latency_and_cost_against_a_single_call(gw: RunningGateway, client: openai.OpenAI) -> None:
    """Not a benchmark: the gateway's own latency (ledger) and cost of a consensus answer
    against one call to its first target (printed with -s)."""

    def measured(route: str) -> tuple[float, Decimal]:
        latencies, cost = [], Decimal(0)
        for _ in range(5):
            raw = ask(client, route)
            row = request_row(gw, raw.headers["x-request-id"])
            latency = sql_rows(
                ledger_url(gw),
                "SELECT latency_ms FROM requests WHERE id = :id",
                {"id": raw.headers["x-request-id"]},
            )[0][0]
            latencies.append(float(latency))
            cost = Decimal(str(row.cost_usd))
        return sorted(latencies)[len(latencies) // 2], cost

    single_ms, single_cost = measured("one")  # a alone: latency=20
    agree_ms, agree_cost = measured("agree")  # a + b (40 ms)
    majority_ms, majority_cost = measured("majority")  # a + b + c (30 ms)
    print(
        f"\nmedian latency / cost: single {single_ms:.1f} ms ${single_cost}; "
        f"agree (a+b) {agree_ms:.1f} ms ${agree_cost} ({agree_cost / single_cost:.2f}x); "
        f"majority (a+b+c) {majority_ms:.1f} ms ${majority_cost} "
        f"({majority_cost / single_cost:.2f}x)"
    )
    # In parallel: the slowest candidate (b, 40 ms) sets the pace, not the sum (90 ms).
    assert 40 <= agree_ms < 85 and 40 <= majority_ms < 85
    assert agree_cost > single_cost and majority_cost > agree_cost


def test_lcpr_reports_agreement_and_cost_multiple(
    gw: RunningGateway,
    client: openai.OpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _ in range(4):
        ask(client, "majority")
    with pytest.raises(openai.ConflictError):
        ask(client, "split-fail")
    last = ask(client, "majority")
    request_row(gw, last.headers["x-request-id"])  # flushed
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("SIM", "http://127.0.0.1:9")
    url = ledger_url(gw)
    result = CliRunner().invoke(
        app,
        ["lcpr", "--json", "--by", "route", "--config", str(config), "--database-url", url],
    )
    assert result.exit_code == 0, result.output
    lines = {line["route"]: line for line in json.loads(result.output)["consensus"]}
    majority = lines["majority"]
    print(f"\nfarebox lcpr, route majority: {majority}")
    assert majority["requests"] >= 5 and Decimal(majority["majority_rate"]) == 1
    # Three candidates at $1-3/M input: the request costs ~3 calls of their mean price.
    assert Decimal("2.5") < Decimal(majority["cost_multiple"]) < Decimal("3.5")
    assert Decimal(lines["split-fail"]["disagree_rate"]) == 1
