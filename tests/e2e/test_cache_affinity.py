"""Prompt-cache affinity: requests sharing a long system prompt keep landing where that
prefix is cached, so the provider reports more cached tokens and the ledger cost drops.

The simulator caches per deployment (per upstream model name) like a real provider: a
prefix is only a hit where it was seen before. Two identical routes spread traffic over
three deployments by request id; only one of them has affinity on.
"""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.conftest import sqlite_settings
from tests.gateway_harness import config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.simulator import running_simulator, simulator_stats

PRICE = "{input: 1.0, cached_input: 0.1, output: 2.0}"
CONFIG = f"""
auth: none
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "${{SIM}}/v1"}}
deployments:
  a1: {{provider: sim, model: "sim-a1::prompt_cache,tokens=5", price: {PRICE}}}
  a2: {{provider: sim, model: "sim-a2::prompt_cache,tokens=5", price: {PRICE}}}
  a3: {{provider: sim, model: "sim-a3::prompt_cache,tokens=5", price: {PRICE}}}
  b1: {{provider: sim, model: "sim-b1::prompt_cache,tokens=5", price: {PRICE}}}
  b2: {{provider: sim, model: "sim-b2::prompt_cache,tokens=5", price: {PRICE}}}
  b3: {{provider: sim, model: "sim-b3::prompt_cache,tokens=5", price: {PRICE}}}
routes:
  with-affinity: {{strategy: weighted, targets: [a1, a2, a3]}}
  without-affinity: {{strategy: weighted, targets: [b1, b2, b3], affinity: false}}
"""
TENANTS = 20  # distinct 4,000-token system prompts
ROUNDS = 3  # requests per prompt


def system_prompt(tenant: int) -> str:
    # ~16,000 characters: about 4,000 tokens by the simulator's count (4 chars per token).
    line = f"Tenant {tenant:02d} policy: answer politely, cite the handbook, never guess. "
    return (line * (16_000 // len(line) + 1))[:16_000]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    """Per route: cached share of prompt tokens (the simulator's count) and ledger cost."""
    out: dict[str, dict[str, float]] = {}
    with running_simulator(seed=2) as sim:
        settings = sqlite_settings(tmp_path_factory.mktemp("affinity"))
        config = config_from_yaml(CONFIG, {"SIM": sim})
        with running_gateway(config, settings) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
            for _ in range(ROUNDS):
                for tenant in range(TENANTS):
                    for route in ("with-affinity", "without-affinity"):
                        client.chat.completions.create(
                            model=route,
                            messages=[
                                {"role": "system", "content": system_prompt(tenant)},
                                {"role": "user", "content": f"Question {tenant}?"},
                            ],
                        )
        tokens = simulator_stats(sim)["tokens"]
    for route, prefix in (("with-affinity", "sim-a"), ("without-affinity", "sim-b")):
        mine = [t for model, t in tokens.items() if model.startswith(prefix)]
        prompt = sum(t["prompt"] for t in mine)
        cached = sum(t["cached"] for t in mine)
        cost = sql_rows(
            settings.database_url,
            f"SELECT sum(cost_usd), count(*) FROM requests WHERE route = '{route}'",
        )[0]
        used = sql_rows(
            settings.database_url,
            f"SELECT count(DISTINCT final_deployment) FROM requests WHERE route = '{route}'",
        )[0][0]
        out[route] = {
            "cached_share": cached / prompt,
            "cost_usd": float(Decimal(str(cost[0]))),
            "requests": cost[1],
            "deployments_used": used,
        }
    return out


def test_affinity_raises_the_cached_share(served: dict[str, dict[str, float]]) -> None:
    with_, without = served["with-affinity"], served["without-affinity"]
    print(
        f"\ncached share: {with_['cached_share']:.1%} with affinity, "
        f"{without['cached_share']:.1%} without"
    )
    assert with_["requests"] == without["requests"] == TENANTS * ROUNDS
    assert without["deployments_used"] == 3 and with_["deployments_used"] == 3
    # With affinity only each prompt's first request misses: (ROUNDS-1)/ROUNDS of the
    # prefix tokens are cached. Without, a prompt misses on every deployment it lands on.
    assert with_["cached_share"] > 0.6
    assert with_["cached_share"] > without["cached_share"] + 0.2


def test_affinity_lowers_the_ledger_cost(served: dict[str, dict[str, float]]) -> None:
    with_, without = served["with-affinity"], served["without-affinity"]
    print(
        f"\nledger cost: ${with_['cost_usd']:.4f} with affinity, ${without['cost_usd']:.4f} without"
    )
    assert with_["cost_usd"] < 0.75 * without["cost_usd"]
