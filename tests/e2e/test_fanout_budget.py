"""Budgets hold on fan-out routes: a consensus request reserves its worst case for every
candidate it starts, so concurrent requests against a small budget never spend more than
the budget plus one reservation — in process and through Redis."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai

from gateway.limits.limiter import ask_for
from routing import quota
from routing.fanout import widen
from tests.conftest import sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows
from tests.services import RedisServer
from tests.simulator import running_simulator

BUDGET = Decimal("0.002")
CONFIG = f"""
auth:
  keys:
    - {{name: "${{KEY_NAME}}", key: sk-tight-0000001, budget_usd: {BUDGET}}}
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "${{SIM}}/v1"}}
deployments:
  a: {{provider: sim, model: "sim-a::reply=yes,latency=60", price: {{input: 1, output: 3}}}}
  b: {{provider: sim, model: "sim-b::reply=yes,latency=80", price: {{input: 1, output: 3}}}}
  c: {{provider: sim, model: "sim-c::reply=no,latency=40", price: {{input: 2, output: 6}}}}
routes:
  vote: {{strategy: consensus, targets: [a, b, c]}}
"""
MESSAGES: Any = [{"role": "user", "content": "Is the invoice total above the approval limit?"}]
MAX_TOKENS = 20
THREADS, PER_THREAD = 16, 12


def _reservation(gw: RunningGateway) -> Decimal:
    """What one request of this test reserves (the gateway's own arithmetic)."""
    state = gw.state
    plan = state.index.plan("vote")
    assert plan is not None
    body = {"messages": MESSAGES, "model": "vote", "max_tokens": MAX_TOKENS}
    ask = ask_for(
        plan,
        body,
        len(json.dumps(body)) + 16,  # give or take the SDK's spacing
        state.prices,
        state.config.limits.reserve_output_tokens,
        datetime.now(UTC),
    )
    single = quota.from_nano(ask.reserve_nano)
    widened = quota.from_nano(widen(ask, plan).reserve_nano)
    assert widened == 3 * single  # three candidates, three reservations
    return widened


def _hammer(gw: RunningGateway) -> tuple[int, int, Decimal, Decimal]:
    client = openai.OpenAI(base_url=gw.base_url, api_key="sk-tight-0000001", max_retries=0)

    def one(_: int) -> str:
        # A refused request returns at once, so the key keeps asking until spend catches up.
        try:
            client.chat.completions.create(
                model="vote",
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
            )
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            return "refused"
        return "ok"

    def many(_: int) -> list[str]:
        return [one(i) for i in range(PER_THREAD)]

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = [o for batch in pool.map(many, range(THREADS)) for o in batch]
    return outcomes.count("ok"), outcomes.count("refused"), _reservation(gw), BUDGET


def _spent(gw: RunningGateway, key: str, served: int) -> Decimal:
    """What the key's requests cost, once the ledger writer has flushed them all."""
    url = ledger_url(gw)
    sql = "SELECT count(*), sum(cost_usd) FROM requests WHERE key_id = :key"
    rows: list[Any] = sql_rows(url, sql, {"key": key})
    deadline = time.monotonic() + 10
    while rows[0][0] < served and time.monotonic() < deadline:
        time.sleep(0.05)  # poll: a condition wait
        rows = sql_rows(url, sql, {"key": key})
    assert rows[0][0] == served
    return Decimal(str(rows[0][1] or 0))


def _check(gw: RunningGateway, key: str) -> None:
    served, refused, reservation, budget = _hammer(gw)
    spent = _spent(gw, key, served)
    print(
        f"\nserved {served}, refused {refused}; spent ${spent} of ${budget} "
        f"(one reservation ${reservation})"
    )
    assert served >= 1 and refused >= 1  # the budget did run out
    assert spent <= budget + reservation


def test_concurrent_consensus_requests_stay_within_budget(tmp_path: Path) -> None:
    with running_simulator() as sim:
        settings = sqlite_settings(tmp_path)
        env = {"SIM": sim, "KEY_NAME": "tight"}
        with running_gateway(config_from_yaml(CONFIG, env), settings) as gw:
            _check(gw, "tight")


def test_concurrent_consensus_requests_stay_within_budget_through_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    key = f"tight-{uuid.uuid4().hex[:8]}"  # the budget lives in Redis: a fresh key per run
    with running_simulator() as sim:
        settings = sqlite_settings(tmp_path, redis_url=redis_server.url)
        env = {"SIM": sim, "KEY_NAME": key}
        with running_gateway(config_from_yaml(CONFIG, env), settings) as gw:
            _check(gw, key)
