"""Guard models on the wire (issue 27): a route's check asks a classifier deployment about
each request before it is sent, through the OpenAI SDK unchanged.

The classifier is the simulator's `classifier` (it answers `unsafe\\nS1` when a prompt holds
`forbidden-topic`, else `safe`); a slow one (`hang`: counted by the simulator on arrival,
where one abandoned during a `latency=` wait is not) runs past the check's timeout and
an erroring one (`status=500`) or one that answers no label gives no verdict, which
`on_error` lets by (`open`) or counts as a finding (`closed`), the header saying so either
way. Every question is an upstream call, so a ledger attempt with role `guard`: attempts
equal the simulator's calls, and the request's cost holds the classifier's.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows, wait_for_rows
from tests.simulator import simulator_stats
from tests.waiting import wait_until
from tests.wire_recorder import validated_openai

pytestmark = pytest.mark.e2e

KEY = "sk-guard-model-e2e-01"
FLAGGED = "Tell me everything about the forbidden-topic, step by step."
CLEAN = "What is the capital of France?"
# Upstream model (simulator) -> deployment: the simulator counts calls per base model.
MODELS = {
    "gm-main": "api@closed",
    "gm-cls": "cls@gpu",
    "gm-cls-slow": "slow@gpu",
    "gm-cls-err": "err@gpu",
    "gm-cls-odd": "odd@gpu",
}
CONFIG = """
auth: {keys: [{name: g, key: "CLIENT_KEY"}]}
server: {breaker: {consecutive_failures: 50}}  # the failing classifiers' failures are the tests
providers:
  closed: {kind: closed_api, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
  gpu: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
deployments:
  api@closed: {provider: closed, model: "gm-main::tokens=4", price: {input: 0.1, output: 0.2}}
  cls@gpu: {provider: gpu, model: "gm-cls::classifier", price: PRICE}
  slow@gpu: {provider: gpu, model: "gm-cls-slow::classifier,hang", price: PRICE}
  err@gpu: {provider: gpu, model: "gm-cls-err::classifier,status=500", price: PRICE}
  odd@gpu: {provider: gpu, model: "gm-cls-odd::reply=maybe", price: PRICE}
routes:
  guarded:
    targets: [api@closed]
    guard: [{name: classifier, model: {deployment: cls@gpu}, action: block}]
  slow-open:
    targets: [api@closed]
    guard: [{name: classifier, model: {deployment: slow@gpu, timeout_ms: 200}, action: block}]
  slow-closed:
    targets: [api@closed]
    guard:
      - name: classifier
        model: {deployment: slow@gpu, timeout_ms: 200, on_error: closed}
        action: block
  err-open:
    targets: [api@closed]
    guard: [{name: classifier, model: {deployment: err@gpu, on_error: open}, action: block}]
  err-closed:
    targets: [api@closed]
    guard: [{name: classifier, model: {deployment: err@gpu, on_error: closed}, action: block}]
  odd-closed:
    targets: [api@closed]
    guard: [{name: classifier, model: {deployment: odd@gpu, on_error: closed}, action: block}]
  two-models:
    targets: [api@closed]
    guard:
      - {name: classifier, model: {deployment: cls@gpu}, action: flag}
      - {name: slow, model: {deployment: slow@gpu, timeout_ms: 200}, action: flag}
""".replace("CLIENT_KEY", KEY).replace("PRICE", "{input: 1.0, output: 2.0}")


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    with running_gateway(config, sqlite_settings(tmp_path_factory.mktemp("guard-model"))) as gw:
        yield gw


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[openai.OpenAI]:
    """Every body and stream event the SDK gets is validated against the OpenAI spec."""
    yield from validated_openai(gw.base_url, KEY)


def _calls(simulator: str, model: str) -> int:
    return int(simulator_stats(simulator)["requests"].get(model, {}).get("total", 0))


def _ask(client: openai.OpenAI, route: str, text: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": text}]
    )


def _blocked(client: openai.OpenAI, route: str, text: str) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, route, text)
    return caught.value


def test_a_flagged_prompt_is_blocked_and_never_sent(client: openai.OpenAI, simulator: str) -> None:
    main, cls = _calls(simulator, "gm-main"), _calls(simulator, "gm-cls")
    error = _blocked(client, "guarded", FLAGGED)
    assert error.code == "guardrail_blocked" and "'classifier'" in error.message
    assert "forbidden" not in error.message  # the check is named, never the text
    assert error.response.headers["x-farebox-guard"] == "block; blocked=classifier"
    assert _calls(simulator, "gm-main") == main  # the main deployment never called
    assert _calls(simulator, "gm-cls") == cls + 1
    raw = _ask(client, "guarded", CLEAN)
    assert raw.parse().choices[0].message.content
    assert "x-farebox-guard" not in raw.headers
    assert raw.headers["x-farebox-attempts"] == "2"  # the question and the answer
    assert _calls(simulator, "gm-main") == main + 1
    assert _calls(simulator, "gm-cls") == cls + 2
    stream = client.chat.completions.create(
        model="guarded", messages=[{"role": "user", "content": CLEAN}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert _calls(simulator, "gm-cls") == cls + 3


def test_a_slow_classifier_fails_open_or_closed(client: openai.OpenAI, simulator: str) -> None:
    main = _calls(simulator, "gm-main")
    raw = _ask(client, "slow-open", FLAGGED)  # no verdict in time: let by, and said so
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-farebox-guard"] == "pass; model-timeout=classifier"
    assert _calls(simulator, "gm-main") == main + 1
    error = _blocked(client, "slow-closed", CLEAN)
    assert error.code == "guardrail_blocked" and "timeout" in error.message
    assert error.response.headers["x-farebox-guard"] == (
        "block; blocked=classifier; model-timeout=classifier"
    )
    assert _calls(simulator, "gm-main") == main + 1


def test_an_erroring_or_unreadable_classifier_fails_open_or_closed(
    client: openai.OpenAI, simulator: str
) -> None:
    main, err = _calls(simulator, "gm-main"), _calls(simulator, "gm-cls-err")
    raw = _ask(client, "err-open", CLEAN)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-farebox-guard"] == "pass; model-error=classifier"
    error = _blocked(client, "err-closed", CLEAN)
    assert error.response.headers["x-farebox-guard"] == (
        "block; blocked=classifier; model-error=classifier"
    )
    assert _calls(simulator, "gm-cls-err") == err + 2  # a guard question is never retried
    odd = _blocked(client, "odd-closed", CLEAN)  # "maybe" is no label
    assert odd.response.headers["x-farebox-guard"].endswith("model-error=classifier")
    assert _calls(simulator, "gm-main") == main + 1


def test_several_models_are_each_asked(client: openai.OpenAI, simulator: str) -> None:
    cls, slow = _calls(simulator, "gm-cls"), _calls(simulator, "gm-cls-slow")
    raw = _ask(client, "two-models", FLAGGED)
    assert raw.headers["x-farebox-guard"] == "flag; flagged=classifier; model-timeout=slow"
    assert raw.headers["x-farebox-attempts"] == "3"
    assert (_calls(simulator, "gm-cls"), _calls(simulator, "gm-cls-slow")) == (cls + 1, slow + 1)


def test_ledger_guard_attempts_equal_the_classifiers_calls(
    gw: RunningGateway, client: openai.OpenAI, simulator: str
) -> None:
    """After the tests above (and a blocked and an answered request here): one `guard`
    attempt per classifier call, attempts per deployment equal to the simulator's calls,
    and a request's cost the sum of its attempts', the classifier's included."""
    url = ledger_url(gw)
    blocked = _blocked(client, "guarded", FLAGGED).response.headers["x-request-id"]
    answered = _ask(client, "guarded", CLEAN)
    calls = {deployment: _calls(simulator, model) for model, deployment in MODELS.items()}

    def attempts() -> dict[str, int]:
        rows = sql_rows(url, "SELECT deployment, COUNT(*) FROM attempts GROUP BY deployment")
        return {deployment: count for deployment, count in rows}

    wait_until(lambda: attempts() == calls, f"attempts {attempts()} == simulator calls {calls}")
    roles = sql_rows(url, "SELECT deployment, role, COUNT(*) FROM attempts GROUP BY 1, 2")
    guard = {d: n for d, role, n in roles if role == "guard"}
    assert guard == {d: n for d, n in calls.items() if d != "api@closed" and n}
    assert all(role != "guard" for d, role, _ in roles if d == "api@closed")
    (row,) = wait_for_rows(
        url,
        "SELECT attempts, final_status, error_class, cost_usd FROM requests WHERE id = :id",
        {"id": blocked},
    )
    assert row[:3] == (1, 400, "guardrail_blocked") and Decimal(str(row[3])) > 0
    request_id = answered.headers["x-request-id"]
    (total,) = wait_for_rows(
        url, "SELECT cost_usd FROM requests WHERE id = :id", {"id": request_id}
    )
    parts = sql_rows(
        url, "SELECT role, cost_usd FROM attempts WHERE request_id = :id", {"id": request_id}
    )
    assert sorted(role for role, _ in parts) == ["guard", "primary"]
    summed = sum(Decimal(str(cost)) for _, cost in parts)
    assert all(Decimal(str(cost)) > 0 for _, cost in parts)
    assert Decimal(str(total[0])) == summed
    assert Decimal(answered.headers["x-farebox-cost-usd"]) == summed
