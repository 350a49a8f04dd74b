"""The Batch API end to end through the real OpenAI Python SDK, unchanged: `files.create` +
`batches.create` + `batches.retrieve` + `files.content`, on a gateway with a PostgreSQL
ledger, on each of the three paths a batch can run:

- `dedicated_fill` (a route whose plan has a dedicated GPU),
- `provider_batch` (a provider with `batch_api: true`: the simulator's own Batch API),
- `serverless` (neither: the cheapest serverless deployment, a few lines at a time).

Each path runs 1,000 lines, some of whose upstream calls fail (the simulator's `fail_rate`),
and the ledger must hold exactly one successful `batch` attempt per line plus one attempt per
retry, equal to the upstream calls the simulator counted, each priced at the rate the path
pays (the provider's batch rate, $0 on the GPU, the live price on serverless).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, sql_rows
from tests.openapi import check
from tests.waiting import wait_until

KEY = "sk-batch-tests-0001"
LINES = 1_000

CONFIG = f"""
auth:
  keys:
    - {{name: batcher, key: {KEY}}}
batch:
  serverless_concurrency: 16
  poll_interval_s: 0.1
  provider_poll_interval_s: 0.2
providers:
  gpu: {{kind: dedicated, protocol: openai, api_base: "${{SIM_URL}}/v1", api_key: "${{SIM_KEY}}",
        hourly_usd: 2.0, max_concurrency: 32}}
  bulk: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1", api_key: "${{SIM_KEY}}",
         batch_api: true}}
  cloud: {{kind: serverless, protocol: openai, api_base: "${{SIM_URL}}/v1",
          api_key: "${{SIM_KEY}}"}}
deployments:
  llama@gpu: {{provider: gpu, model: "sim-large::tokens=4,fail_rate=0.03"}}
  bulk@bulk: {{provider: bulk, model: "sim-medium::tokens=4",
              price: {{input: 2.0, output: 8.0, batch: {{input: 1.0, output: 4.0}}}}}}
  cloud@cloud: {{provider: cloud, model: "sim-small::tokens=4,fail_rate=0.03",
                price: {{input: 1.0, output: 2.0}}}}
  slow@cloud: {{provider: cloud, model: "sim-reasoning::tokens=4,latency=200",
               price: {{input: 1.0, output: 2.0}}}}
  embed@cloud: {{provider: cloud, model: "sim-embed", price: {{input: 0.1, output: 0}}}}
routes:
  gpu-route: {{targets: [llama@gpu], retry: {{attempts: 4, backoff_ms: 0}}}}
  bulk-route: {{targets: [bulk@bulk]}}
  cloud-route: {{targets: [cloud@cloud], retry: {{attempts: 4, backoff_ms: 0}}}}
  slow-route: {{targets: [slow@cloud]}}
  embed-route: {{targets: [embed@cloud]}}
"""


@pytest.fixture(scope="module")
def gw(
    simulator: str, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    directory = Path(tmp_path_factory.mktemp("batches"))
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    url = postgres.migrated_database("batches")
    settings = sqlite_settings(directory).model_copy(update={"database_url": url})
    with running_gateway(config, settings) as running:
        yield running


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)


def batch_file(model: str, lines: int, first: int = 1, url: str = "/v1/chat/completions") -> bytes:
    out = io.BytesIO()
    for n in range(first, first + lines):
        body: dict[str, Any] = {"model": model}
        if url == "/v1/chat/completions":
            body |= {"messages": [{"role": "user", "content": f"question {n}"}], "max_tokens": 16}
        elif url == "/v1/responses":
            body |= {"input": f"question {n}", "max_output_tokens": 16}
        else:
            body |= {"input": f"text {n}"}
        line = {"custom_id": f"q-{n}", "method": "POST", "url": url}
        out.write(orjson.dumps({**line, "body": body}) + b"\n")
    return out.getvalue()


def sim_stats(simulator: str) -> dict[str, Any]:
    return httpx.get(f"{simulator}/_stats", timeout=10).json()  # type: ignore[no-any-return]


def start_batch(
    gw: RunningGateway,
    model: str,
    lines: int,
    url: str = "/v1/chat/completions",
    window: str = "24h",
) -> Any:
    sdk = client(gw)
    uploaded = sdk.files.create(
        file=("in.jsonl", batch_file(model, lines, url=url)), purpose="batch"
    )
    return sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint=url,  # type: ignore[arg-type]
        completion_window=window,  # type: ignore[arg-type]
    )


def run_batch(
    gw: RunningGateway,
    model: str,
    lines: int,
    url: str = "/v1/chat/completions",
    window: str = "24h",
) -> Any:
    sdk = client(gw)
    batch = start_batch(gw, model, lines, url, window)
    check("Batch", batch.model_dump(mode="json", exclude_unset=True))
    assert batch.status == "validating"

    def finished() -> bool:
        nonlocal batch
        batch = sdk.batches.retrieve(batch.id)
        return batch.status in ("completed", "failed", "expired", "cancelled")

    wait_until(finished, f"batch {batch.id} to finish", within_s=120)
    check("Batch", batch.model_dump(mode="json", exclude_unset=True))
    return batch


def output_lines(gw: RunningGateway, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = client(gw).files.content(file_id).read()
    return [orjson.loads(line) for line in content.splitlines() if line]


def attempts_of(gw: RunningGateway, batch_id: str) -> list[Any]:
    return sql_rows(
        ledger_url(gw),
        "SELECT a.role, a.http_status, a.error_class, a.cost_usd, a.price_version, a.deployment,"
        " a.input_uncached_tokens, a.output_tokens, r.id"
        " FROM attempts a JOIN requests r ON r.id = a.request_id WHERE r.batch_id = :b",
        {"b": batch_id},
    )


@pytest.mark.parametrize(
    ("route", "path", "base_model"),
    [
        ("gpu-route", "dedicated_fill", "sim-large"),
        ("bulk-route", "provider_batch", "sim-medium"),
        ("cloud-route", "serverless", "sim-small"),
    ],
)
def test_a_thousand_lines_on_each_path(
    gw: RunningGateway, simulator: str, route: str, path: str, base_model: str
) -> None:
    before = sim_stats(simulator)["requests"].get(base_model, {}).get("total", 0)
    batch = run_batch(gw, route, LINES)
    assert batch.status == "completed", batch
    assert batch.metadata["farebox_path"] == path
    assert batch.request_counts.total == LINES
    assert batch.request_counts.completed == LINES
    assert batch.request_counts.failed == 0
    assert batch.error_file_id is None
    answers = output_lines(gw, batch.output_file_id)
    assert [a["custom_id"] for a in answers] == [f"q-{n}" for n in range(1, LINES + 1)]
    for answer in answers[:5]:
        assert answer["response"]["status_code"] == 200
        check("CreateChatCompletionResponse", answer["response"]["body"])
    calls = sim_stats(simulator)["requests"][base_model]["total"] - before

    attempts = attempts_of(gw, batch.id)
    assert {a.role for a in attempts} == {"batch"}
    successes = [a for a in attempts if a.http_status == 200 and a.error_class is None]
    assert len(successes) == LINES  # one per line ...
    assert len({a.id for a in successes}) == LINES  # ... each its own request
    assert len(attempts) == calls  # ... plus one per retry: every upstream call
    if path == "dedicated_fill":
        assert len(attempts) > LINES  # fail_rate made some retries
        assert all(a.cost_usd == 0 for a in attempts)
    elif path == "provider_batch":
        for a in successes:  # the batch rate: $1 / $4 per 1M
            expected = (Decimal(a.input_uncached_tokens) * 1 + Decimal(a.output_tokens) * 4) / (
                Decimal(1_000_000)
            )
            assert a.cost_usd == expected
            assert "+batch" in a.price_version
    else:
        assert len(attempts) > LINES
        for a in successes:  # the live price
            expected = (Decimal(a.input_uncached_tokens) * 1 + Decimal(a.output_tokens) * 2) / (
                Decimal(1_000_000)
            )
            assert a.cost_usd == expected


def test_listing_and_errors(gw: RunningGateway) -> None:
    sdk = client(gw)
    listed = sdk.batches.list(limit=2)
    check("ListBatchesResponse", listed.model_dump(mode="json", exclude_unset=True))
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    uploaded = sdk.files.create(file=("x.jsonl", batch_file("no-such-route", 2)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as unknown:
        sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "not routed" in str(unknown.value)
    mixed = batch_file("cloud-route", 2) + batch_file("gpu-route", 1, first=3)
    uploaded = sdk.files.create(file=("m.jsonl", mixed), purpose="batch")
    with pytest.raises(openai.BadRequestError) as mismatch:
        sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "Line 3" in str(mismatch.value)
    response = httpx.post(
        f"{gw.base_url}/batches",
        headers={"authorization": f"Bearer {KEY}"},
        content=b"{not json",
        timeout=10,
    )
    assert response.status_code == 400 and response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("url", "route", "schema"),
    [
        ("/v1/responses", "cloud-route", "Response"),
        ("/v1/embeddings", "embed-route", "CreateEmbeddingResponse"),
    ],
)
def test_responses_and_embeddings_lines(
    gw: RunningGateway, url: str, route: str, schema: str
) -> None:
    batch = run_batch(gw, route, 20, url=url)
    assert batch.status == "completed" and batch.request_counts.completed == 20
    answers = output_lines(gw, batch.output_file_id)
    assert len(answers) == 20
    for answer in answers:
        check(schema, answer["response"]["body"])
    endpoints = {
        r.endpoint
        for r in sql_rows(
            ledger_url(gw), "SELECT endpoint FROM requests WHERE batch_id = :b", {"b": batch.id}
        )
    }
    assert endpoints == {url.removeprefix("/v1/")}


def test_the_completion_window_ends_a_batch_with_what_it_has(gw: RunningGateway) -> None:
    # 300 lines of 200 ms, 16 at a time: ~4 s of work in a 2 s window.
    batch = run_batch(gw, "slow-route", 300, window="2s")
    assert batch.status == "expired"
    counts = batch.request_counts
    assert 0 < counts.completed < 300 and counts.completed + counts.failed == 300
    answered = output_lines(gw, batch.output_file_id)
    unrun = output_lines(gw, batch.error_file_id)
    assert len(answered) == counts.completed and len(unrun) == counts.failed
    assert {u["error"]["code"] for u in unrun} == {"batch_expired"}
    assert sorted(a["custom_id"] for a in answered + unrun) == sorted(
        f"q-{n}" for n in range(1, 301)
    )
    rows = attempts_of(gw, batch.id)
    assert sum(1 for a in rows if a.http_status == 200) == counts.completed


def test_cancel_keeps_the_answers_and_runs_nothing_more(gw: RunningGateway, simulator: str) -> None:
    sdk = client(gw)
    batch = start_batch(gw, "slow-route", 300)
    wait_until(
        lambda: sdk.batches.retrieve(batch.id).request_counts.completed >= 16,  # type: ignore[union-attr]
        "some lines to finish",
        within_s=60,
    )
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")

    def done() -> bool:
        nonlocal batch
        batch = sdk.batches.retrieve(batch.id)
        return batch.status == "cancelled"

    wait_until(done, "the batch to be cancelled", within_s=60)
    counts = batch.request_counts
    assert counts.completed + counts.failed == 300 and counts.completed < 300
    unrun = output_lines(gw, batch.error_file_id)
    assert {u["error"]["code"] for u in unrun} == {"batch_cancelled"}
    calls_at_end = sim_stats(simulator)["requests"]["sim-reasoning"]["total"]
    assert sum(1 for a in attempts_of(gw, batch.id) if a.http_status == 200) == counts.completed
    with pytest.raises(openai.BadRequestError):
        sdk.batches.cancel(batch.id)  # a finished batch cannot be cancelled
    assert sim_stats(simulator)["requests"]["sim-reasoning"]["total"] == calls_at_end


def test_output_files_expire_as_asked(gw: RunningGateway) -> None:
    sdk = client(gw)
    uploaded = sdk.files.create(file=("e.jsonl", batch_file("cloud-route", 3)), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )

    def done() -> bool:
        nonlocal batch
        batch = sdk.batches.retrieve(batch.id)
        return batch.status == "completed"

    wait_until(done, "the batch to complete", within_s=60)
    assert batch.output_file_id is not None
    output = sdk.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    assert output.expires_at is not None
    assert 7100 <= output.expires_at - output.created_at <= 7300
    with pytest.raises(openai.BadRequestError):
        sdk.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 5},
        )
