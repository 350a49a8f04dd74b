"""`POST /admin/routes/{route}/explain` on a running gateway: master-key auth, errors in the
OpenAI format, and a plan computed from live state (affinity, in-flight, breakers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.settings import Settings
from tests.conftest import SIM_KEY
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway

MASTER = "sk-admin-master-0001"
CLIENT = "sk-client-key-0001"

CONFIG = f"""
auth:
  keys:
    - {{name: client, key: "{CLIENT}"}}
providers:
  sim: {{kind: serverless, api_base: "${{SIM_URL}}/v1", api_key: "${{SIM_KEY}}"}}
  simgpu:
    kind: dedicated
    api_base: "${{SIM_URL}}/v1"
    api_key: "${{SIM_KEY}}"
deployments:
  a@sim: {{provider: sim, model: sim-a, price: {{input: 1, output: 2, cached_input: 0.1}}}}
  b@sim: {{provider: sim, model: sim-b, price: {{input: 2, output: 4}}}}
  p@sim: {{provider: sim, model: sim-p, price: {{input: 1, output: 1}}}}
  q@sim: {{provider: sim, model: sim-q, price: {{input: 5, output: 5}}}}
  slow@simgpu: {{provider: simgpu, model: "sim-slow::latency=1500", max_concurrency: 1}}
routes:
  mix: {{strategy: cost, targets: [b@sim, a@sim]}}
  pair: {{strategy: cost, targets: [p@sim, q@sim]}}
  gpu: {{strategy: cost, targets: [slow@simgpu, b@sim]}}
  steady: {{strategy: failover, targets: [q@sim, p@sim]}}
"""

# ≥ 1024 tokens of system prompt: long enough for providers to cache, so for affinity.
SYSTEM = {"role": "system", "content": "You answer questions about invoices. " * 160}
CHAT = {"messages": [SYSTEM, {"role": "user", "content": "What is due?"}], "max_tokens": 20}


@pytest.fixture(scope="module")
def gw(simulator: str) -> Iterator[RunningGateway]:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    with running_gateway(config, Settings(master_key=MASTER, ledger_enabled=False)) as running:
        yield running


def explain(
    gw: RunningGateway, route: str, body: Any = None, key: str | None = MASTER, **kw: Any
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    headers |= kw.pop("headers", {})
    return httpx.post(
        f"{gw.root}/admin/routes/{route}/explain",
        json=CHAT if body is None else body,
        headers=headers,
        timeout=10,
        **kw,
    )


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    data: dict[str, Any] = response.json()
    return data


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_requires_the_master_key(gw: RunningGateway) -> None:
    missing = error(explain(gw, "mix", key=None), 401)
    assert missing["code"] == "invalid_api_key"
    assert "FAREBOX_MASTER_KEY" in missing["message"]
    assert error(explain(gw, "mix", key="sk-wrong-key-123"), 401)["code"] == "invalid_api_key"
    basic = explain(gw, "mix", key=None, headers={"authorization": f"Basic {MASTER}"})
    assert error(basic, 401)["code"] == "invalid_api_key"
    client = error(explain(gw, "mix", key=CLIENT), 403)
    assert client["code"] == "admin_key_required"
    assert "master key" in client["message"]
    ok(explain(gw, "mix"))


def test_the_admin_api_is_off_without_a_master_key(simulator: str) -> None:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    with running_gateway(config, Settings(master_key=None, ledger_enabled=False)) as off:
        for key in (None, CLIENT, MASTER):
            body = error(explain(off, "mix", key=key), 403)
            assert body["code"] == "admin_disabled"
            assert "set FAREBOX_MASTER_KEY" in body["message"]


def test_unknown_route_is_404_with_a_suggestion(gw: RunningGateway) -> None:
    body = error(explain(gw, "mxi"), 404)
    assert body["code"] == "route_not_found"
    assert body["message"].startswith("Unknown route 'mxi' (did you mean 'mix'?)")
    assert "is a deployment id, not a route" in error(explain(gw, "a@sim"), 404)["message"]


def test_bad_bodies_are_400(gw: RunningGateway) -> None:
    headers = {"authorization": f"Bearer {MASTER}", "content-type": "application/json"}
    url = f"{gw.root}/admin/routes/mix/explain"
    broken = httpx.post(url, content=b"{nope", headers=headers)
    assert "not valid JSON" in error(broken, 400)["message"]
    assert "must be a JSON object" in error(explain(gw, "mix", [1]), 400)["message"]
    missing = error(explain(gw, "mix", {"model": "mix"}), 400)
    assert missing["param"] == "messages"
    assert error(httpx.post(url, headers=headers), 400)["message"].startswith("Request body is")
    assert httpx.get(url, headers=headers).status_code == 405


def test_explaining_sends_nothing_upstream(gw: RunningGateway) -> None:
    assert gw.state.live is not None
    loads = gw.state.live.loads
    before = {
        dep: (load.in_flight, load.requests.total(time.time())) for dep, load in loads.items()
    }
    pinned = ok(explain(gw, "mix", params={"request_id": "req_pinned"}))
    assert pinned["request_id"] == "req_pinned"
    assert error(explain(gw, "mix", params={"request_id": "é"}), 400)["message"].startswith(
        "request_id must be"
    )
    after = {dep: (load.in_flight, load.requests.total(time.time())) for dep, load in loads.items()}
    assert after == before


def test_prompt_cache_affinity_learned_from_real_traffic(gw: RunningGateway) -> None:
    idle = ok(explain(gw, "mix"))
    assert idle["snapshot"] == "live"
    assert [e["deployment"] for e in idle["plan"]] == ["a@sim", "b@sim"]
    assert all(e["cached_tokens"] == 0 for e in idle["plan"])

    client = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT, max_retries=0)
    reply = client.chat.completions.with_raw_response.create(model="mix", **CHAT)
    assert reply.headers["x-farebox-deployment"] == "a@sim"

    data = ok(explain(gw, "mix"))
    first = data["plan"][0]
    assert first["deployment"] == "a@sim"
    # a@sim served this prefix last: the estimate now reads most of it from its cache.
    assert first["cached_tokens"] >= 1024
    assert first["note"] == f"~{first['cached_tokens']} prefix tokens cached here"
    assert first["expected_cost_usd"] < first["cost_without_cache_usd"]
    assert data["plan"][1]["cached_tokens"] == 0


def test_an_open_breaker_shows_as_a_soft_skip(gw: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT, max_retries=0)
    for _ in range(3):
        reply = client.chat.completions.with_raw_response.create(model="pair", **CHAT)
        assert reply.headers["x-farebox-deployment"] == "p@sim"
    assert [e["deployment"] for e in ok(explain(gw, "pair"))["plan"]] == ["p@sim", "q@sim"]

    breakers = gw.state.breakers
    assert breakers is not None
    breakers.force_open("p@sim")
    data = ok(explain(gw, "pair"))
    assert data["reason"] == "cheapest eligible"
    assert [e["deployment"] for e in data["plan"]] == ["q@sim", "p@sim"]
    assert data["plan"][1]["skipped"] == "circuit breaker open"
    assert data["soft_skipped"] == [
        {"position": 2, "deployment": "p@sim", "reason": "circuit breaker open"}
    ]
    assert data["left_out"] == []

    # A fixed plan keeps its order, but says the open breaker's target will be passed over.
    fixed = ok(explain(gw, "steady"))
    assert fixed["fixed_plan"] is True and fixed["cost_planned"] is False
    assert [e["deployment"] for e in fixed["plan"]] == ["q@sim", "p@sim"]
    assert [e["deployment"] for e in fixed["soft_skipped"]] == ["p@sim"]
    assert fixed["soft_skipped"][0]["reason"].startswith("circuit breaker open")


def test_a_busy_dedicated_deployment_overflows_while_in_flight(gw: RunningGateway) -> None:
    idle = ok(explain(gw, "gpu"))
    assert idle["reason"] == "dedicated capacity free"
    assert idle["plan"][0]["note"] == "dedicated, 0/1 in flight"

    client = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT, max_retries=0)
    served: list[str] = []

    def call() -> None:
        reply = client.chat.completions.with_raw_response.create(model="gpu", **CHAT)
        served.append(reply.headers["x-farebox-deployment"])

    worker = threading.Thread(target=call)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while True:
            busy = ok(explain(gw, "gpu"))
            if busy["soft_skipped"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # poll: a condition wait
        assert [e["deployment"] for e in busy["plan"]] == ["b@sim", "slow@simgpu"]
        assert busy["soft_skipped"] == [
            {"position": 2, "deployment": "slow@simgpu", "reason": "at capacity (1/1 in flight)"}
        ]
        assert busy["plan"][1]["note"] == "dedicated, 1/1 in flight"
    finally:
        worker.join(timeout=10)
    assert served == ["slow@simgpu"]
    assert ok(explain(gw, "gpu"))["plan"][0]["deployment"] == "slow@simgpu"
