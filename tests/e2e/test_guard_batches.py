"""A route's guard checks hold for the Batch API too (issue 27), through the OpenAI SDK: a
line is refused, masked (its values back in its answer) and its answer checked as a live
request would be, on the gateway's own path and on the provider's Batch API, where a line a
request check fires on never reaches the provider's batch; every ledger attempt is an
upstream call the simulator counted.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

KEY = "sk-guard-batches-0001"
CONFIG = f"""
auth: {{keys: [{{name: batcher, key: {KEY}}}]}}
batch: {{serverless_concurrency: 4, poll_interval_s: 0.1, provider_poll_interval_s: 0.2}}
providers:
  bulk: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1", api_key: "${{SIM_KEY}}",
         batch_api: true}}
  cloud: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1",
          api_key: "${{SIM_KEY}}"}}
deployments:
  echo@cloud: {{provider: cloud, model: "gb-live::echo", price: {{input: 1.0, output: 2.0}}}}
  echo@bulk: {{provider: bulk, model: "gb-bulk::echo",
              price: {{input: 2.0, output: 8.0, batch: {{input: 1.0, output: 4.0}}}}}}
guard:
  - {{name: no-keys, detect: [secret], action: block}}
  - {{name: mail, detect: [email], action: mask}}
  - {{name: no-cards-out, detect: [card], reads: [answer], action: mask}}
routes:
  live-route: {{targets: [echo@cloud]}}
  kept-route:
    targets: [echo@cloud]
    guard: [{{name: mail, detect: [email], action: mask, restore: false}}]
  bulk-route: {{targets: [echo@bulk]}}
"""
LINES = {
    "clean": "What is the capital of France?",
    "mail": "Write to jane@example.com about the order.",
    "key": "Debug with sk-proj-ABCDEFGHIJ0123456789abcd please.",
    "card": "My card is 4111 1111 1111 1111.",
}


@pytest.fixture(scope="module")
def gw(
    simulator: str, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    directory = Path(tmp_path_factory.mktemp("guard-batches"))
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    url = postgres.migrated_database("guard_batches")
    settings = sqlite_settings(directory).model_copy(update={"database_url": url})
    with running_gateway(config, settings) as running:
        yield running


def _run(gw: RunningGateway, route: str) -> tuple[Any, dict[str, dict[str, Any]]]:
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
    out = io.BytesIO()
    for custom_id, text in LINES.items():
        body = {"model": route, "messages": [{"role": "user", "content": text}]}
        line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
        out.write(orjson.dumps({**line, "body": body}) + b"\n")
    uploaded = sdk.files.create(file=("in.jsonl", out.getvalue()), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    def finished() -> bool:
        nonlocal batch
        batch = sdk.batches.retrieve(batch.id)
        return batch.status in ("completed", "failed", "expired", "cancelled")

    wait_until(finished, f"batch {batch.id} to finish", within_s=120)
    lines: dict[str, dict[str, Any]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id is not None:
            for raw in sdk.files.content(file_id).read().splitlines():
                answer = orjson.loads(raw)
                lines[answer["custom_id"]] = answer
    return batch, lines


def _calls(simulator: str, model: str) -> int:
    stats = httpx.get(f"{simulator}/_stats", timeout=10).json()
    return int(stats["requests"].get(model, {}).get("total", 0))


def _content(answer: dict[str, Any]) -> str:
    return str(answer["response"]["body"]["choices"][0]["message"]["content"])


@pytest.mark.parametrize(("route", "model"), [("live-route", "gb-live"), ("bulk-route", "gb-bulk")])
def test_batch_lines_are_guarded_like_live_requests(
    gw: RunningGateway, simulator: str, route: str, model: str
) -> None:
    live_before, model_before = _calls(simulator, "gb-live"), _calls(simulator, model)
    batch, lines = _run(gw, route)
    assert batch.status == "completed"
    assert batch.metadata["farebox_path"] == (
        "provider_batch" if route == "bulk-route" else "serverless"
    )
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
    refused = lines["key"]["response"]
    assert refused["status_code"] == 400
    assert refused["body"]["error"]["code"] == "guardrail_blocked"
    assert "sk-proj" not in orjson.dumps(refused).decode()
    assert _content(lines["clean"]) == LINES["clean"]
    assert _content(lines["mail"]) == LINES["mail"]  # masked upstream, restored here
    assert _content(lines["card"]) == "My card is <CARD_1>."  # the answer check
    rows = sql_rows(
        ledger_url(gw),
        "SELECT r.error_class, r.guard, COUNT(a.id) FROM requests r"
        " LEFT JOIN attempts a ON a.request_id = r.id WHERE r.batch_id = :b"
        " GROUP BY r.id, r.error_class, r.guard ORDER BY r.guard NULLS FIRST",
        {"b": batch.id},
    )
    assert sorted(((e or ""), g, n) for e, g, n in rows if g) == [
        ("", "mask; answer-masked=no-cards-out", 1),
        ("", "mask; masked=mail", 1),
        ("guardrail_blocked", "block; blocked=no-keys", 0),
    ]
    calls = (_calls(simulator, "gb-live") - live_before) + (
        _calls(simulator, model) - model_before if model != "gb-live" else 0
    )
    assert sum(n for _e, _g, n in rows) == calls == 3
    if route == "bulk-route":
        # The masked line ran live; only the lines no request check fired on went upstream
        # in the provider's batch.
        assert _calls(simulator, "gb-live") - live_before == 0
        assert _calls(simulator, "gb-bulk") - model_before == 3


def test_a_batch_line_leaves_masked(gw: RunningGateway) -> None:
    _batch, lines = _run(gw, "kept-route")
    assert _content(lines["mail"]) == "Write to <EMAIL_1> about the order."
