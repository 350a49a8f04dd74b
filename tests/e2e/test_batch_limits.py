"""A batch and its key's limits (real Postgres and Redis, the OpenAI SDK): a batch whose worst
case does not fit in the key's monthly budget is refused at submission with the SDK's
RateLimitError (`insufficient_quota`); a key may only batch on its routes (403); and each line
is admitted and settled through the key's limits like a live request, so the key's budget
counter in Redis ends equal to what the ledger says the batch cost, with nothing left
reserved.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import redis

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows
from tests.services import RedisServer
from tests.waiting import wait_until

RICH = "sk-batch-rich-0001"
POOR = "sk-batch-poor-0001"
NARROW = "sk-batch-narrow-01"

CONFIG = f"""
auth:
  keys:
    - {{name: rich, key: {RICH}, budget_usd: 5, rpm: 100000}}
    - {{name: poor, key: {POOR}, budget_usd: 0.0001}}
    - {{name: narrow, key: {NARROW}, routes: [other]}}
batch: {{poll_interval_s: 0.1, serverless_concurrency: 8}}
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1", api_key: "${{SIM_KEY}}"}}
deployments:
  small@sim: {{provider: sim, model: "sim-small::tokens=7", price: {{input: 3.0, output: 9.0}}}}
routes:
  chat: {{targets: [small@sim]}}
  other: {{targets: [small@sim]}}
"""


@pytest.fixture
def gw(
    simulator: str, postgres: Any, redis_server: RedisServer, tmp_path: Path
) -> Iterator[RunningGateway]:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    url = postgres.migrated_database("blimits")
    settings = sqlite_settings(tmp_path).model_copy(
        update={"database_url": url, "redis_url": redis_server.url}
    )
    with running_gateway(config, settings) as running:
        yield running


def upload(gw: RunningGateway, key: str, lines: int, max_tokens: int) -> tuple[openai.OpenAI, str]:
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    out = io.BytesIO()
    for n in range(lines):
        body = {"model": "chat", "messages": [{"role": "user", "content": f"n{n}"}]}
        line = {"custom_id": f"l{n}", "method": "POST", "url": "/v1/chat/completions"}
        out.write(orjson.dumps({**line, "body": {**body, "max_tokens": max_tokens}}) + b"\n")
    uploaded = sdk.files.create(file=("b.jsonl", out.getvalue()), purpose="batch")
    return sdk, uploaded.id


def test_budget_and_routes_at_submission(gw: RunningGateway) -> None:
    sdk, file_id = upload(gw, POOR, 50, 1_000)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert refused.value.code == "insufficient_quota"
    assert "monthly budget" in str(refused.value)
    sdk, file_id = upload(gw, NARROW, 2, 10)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )


def test_each_line_settles_in_the_keys_budget(
    gw: RunningGateway, redis_server: RedisServer
) -> None:
    sdk, file_id = upload(gw, RICH, 40, 32)
    batch = sdk.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    def finished() -> bool:
        nonlocal batch
        batch = sdk.batches.retrieve(batch.id)
        return batch.status == "completed"

    wait_until(finished, "the batch to complete", within_s=60)
    cost = sql_rows(
        ledger_url(gw),
        "SELECT sum(cost_usd), count(*) FROM requests WHERE batch_id = :b",
        {"b": batch.id},
    )
    assert cost[0][1] == 40
    spent_nano = int(Decimal(cost[0][0]) * 1_000_000_000)
    store = redis.Redis.from_url(redis_server.url)
    month = datetime.now(UTC).strftime("%Y-%m")
    budget_key = f"{{farebox:lim:rich}}:budget:{month}"

    def settled() -> bool:
        counters = store.hgetall(budget_key)
        return (
            int(counters.get(b"spent", 0)) == spent_nano and int(counters.get(b"reserved", 0)) == 0
        )

    wait_until(settled, f"Redis to hold the batch's ${cost[0][0]} spent and nothing reserved")
    store.close()
