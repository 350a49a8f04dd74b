"""The official OpenAI Python SDK pointed straight at the simulator's Files and Batch APIs:
upload, batch, poll, read the output (bodies valid against the spec and equal to what the
live endpoint answers), failing lines in the error file, cancel, expiry on the simulator
clock, `/_stats` per batch endpoint and batch line items at half price on the invoice."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.openapi import check
from tests.simulator import simulator_stats, start_simulator
from tests.waiting import wait_until

KEY = "sk-sim"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "count these words please"}]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    url, stop = start_simulator(require_key=KEY)
    yield url
    stop()


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    httpx.post(f"{base_url}/_reset")
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=5)


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def _chat_lines(models: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": MESSAGES},
        }
        for i, model in enumerate(models)
    ]


def _submit(client: openai.OpenAI, lines: list[dict[str, Any]], endpoint: str, **extra: Any) -> str:
    upload = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(_jsonl(lines))
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **extra,
    )
    assert batch.status == "validating"
    return batch.id


def _settled(client: openai.OpenAI, batch_id: str, status: str) -> Any:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen["batch"] = client.batches.retrieve(batch_id)
        return bool(seen["batch"].status == status)

    wait_until(done, f"batch {batch_id} {status}")
    return seen["batch"]


def _content(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines()]


def test_chat_batch_completes_with_one_line_per_input_and_failures_in_error_file(
    client: openai.OpenAI, base_url: str
) -> None:
    models = ["sim-a::tokens=3", "sim-a::tokens=5", "sim-a::status=500", "sim-a::tokens=4"]
    batch_id = _submit(client, _chat_lines(models), "/v1/chat/completions")
    batch = _settled(client, batch_id, "completed")
    raw = httpx.get(f"{base_url}/v1/batches/{batch_id}", headers=AUTH).json()
    check("Batch", raw)
    assert batch.request_counts.model_dump() == {"total": 4, "completed": 3, "failed": 1}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    out = _content(client, batch.output_file_id)
    assert [line["custom_id"] for line in out] == ["req-0", "req-1", "req-3"]
    for line, tokens in zip(out, (3, 5, 4), strict=True):
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_")
        body = line["response"]["body"]
        check("CreateChatCompletionResponse", body)
        assert body["usage"]["completion_tokens"] == tokens
    # The same body the live endpoint answers, ids and timestamps aside.
    live = httpx.post(
        f"{base_url}/v1/chat/completions",
        headers=AUTH,
        json={"model": "sim-a::tokens=3", "messages": MESSAGES},
    ).json()
    first = out[0]["response"]["body"]
    assert first.keys() == live.keys()
    assert (first["choices"], first["usage"]) == (live["choices"], live["usage"])
    errors = _content(client, batch.error_file_id)
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("req-2", 500)]
    assert errors[0]["response"]["body"]["error"]["type"] == "server_error"
    stats = simulator_stats(base_url)
    assert stats["endpoints"]["batch_chat"] == 4
    assert stats["endpoints"]["chat"] == 1
    assert stats["requests"]["sim-a"]["by_status"] == {"200": 4, "500": 1}
    assert batch.usage is not None
    assert batch.usage.output_tokens == 3 + 5 + 4
    listed = client.batches.list()
    assert [b.id for b in listed.data] == [batch_id]


def test_responses_and_embeddings_batches(client: openai.OpenAI, base_url: str) -> None:
    responses = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "sim-r::tokens=2", "input": f"hello {i}"},
        }
        for i in range(3)
    ]
    embeds = [
        {
            "custom_id": "e0",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "sim-embed", "input": "some words"},
        }
    ]
    r_id = _submit(client, responses, "/v1/responses")
    e_id = _submit(client, embeds, "/v1/embeddings")
    r_out = _content(client, _settled(client, r_id, "completed").output_file_id)
    e_out = _content(client, _settled(client, e_id, "completed").output_file_id)
    assert len(r_out) == 3
    for line in r_out:
        check("Response", line["response"]["body"])
        assert line["response"]["body"]["output"][-1]["content"][0]["text"] == "tok0 tok1"
    check("CreateEmbeddingResponse", e_out[0]["response"]["body"])
    endpoints = simulator_stats(base_url)["endpoints"]
    assert endpoints["batch_responses"] == 3 and endpoints["batch_embeddings"] == 1


def test_invalid_line_fails_the_batch_naming_the_line(client: openai.OpenAI) -> None:
    lines = _chat_lines(["sim-a"])
    lines.append({**lines[0], "custom_id": "other", "url": "/v1/embeddings"})
    batch = _settled(client, _submit(client, lines, "/v1/chat/completions"), "failed")
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("mismatched_endpoint", 2)]


def test_cancel_keeps_partial_output(client: openai.OpenAI) -> None:
    lines = _chat_lines(["sim-a::tokens=2"] * 50)
    batch_id = _submit(
        client, lines, "/v1/chat/completions", extra_headers={"x-mock-batch-delay": "5"}
    )
    wait_until(
        lambda: client.batches.retrieve(batch_id).request_counts.completed >= 1,  # type: ignore[union-attr]
        "first line answered",
    )
    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = _settled(client, batch_id, "cancelled")
    counts = batch.request_counts
    assert 1 <= counts.completed < 50 and counts.completed + counts.failed == 50
    assert len(_content(client, batch.output_file_id)) == counts.completed
    unrun = _content(client, batch.error_file_id)
    assert len(unrun) == counts.failed
    assert {e["error"]["code"] for e in unrun} == {"batch_cancelled"}


def test_expires_when_the_clock_passes_the_window(client: openai.OpenAI, base_url: str) -> None:
    batch_id = _submit(
        client,
        _chat_lines(["sim-a"] * 20),
        "/v1/chat/completions",
        metadata={"sim_delay": "60"},
    )
    wait_until(lambda: client.batches.retrieve(batch_id).status == "in_progress", "running")
    httpx.post(f"{base_url}/_clock", params={"advance": 86_400})
    batch = _settled(client, batch_id, "expired")
    assert batch.expired_at and batch.metadata == {"sim_delay": "60"}
    assert batch.request_counts.failed == 20 - batch.request_counts.completed
    unrun = _content(client, batch.error_file_id)
    assert {e["error"]["code"] for e in unrun} == {"batch_expired"}


def test_files_list_retrieve_delete(client: openai.OpenAI) -> None:
    upload = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert client.files.retrieve(upload.id).filename == "a.jsonl"
    assert [f.id for f in client.files.list()] == [upload.id]
    raw = httpx.get(f"{client.base_url}files/{upload.id}", headers=AUTH).json()
    check("OpenAIFile", raw)
    assert client.files.delete(upload.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)


def test_invoice_bills_batch_lines_apart_at_half_price(
    client: openai.OpenAI, base_url: str
) -> None:
    httpx.post(f"{base_url}/_clock", params={"day": "2026-11-03"})
    try:
        client.chat.completions.create(model="sim-p::tokens=10", messages=MESSAGES)  # type: ignore[arg-type]
        batch_id = _submit(client, _chat_lines(["sim-p::tokens=10"]), "/v1/chat/completions")
        _settled(client, batch_id, "completed")
        price = {"price": "sim-p:2/8", "format": "generic"}
        text = httpx.get(f"{base_url}/_invoice", params=price).text
    finally:
        httpx.post(f"{base_url}/_clock", params={"day": ""})
    rows = {r["token_type"]: r for r in csv.DictReader(io.StringIO(text))}
    assert set(rows) == {"input_uncached", "output", "batch_input_uncached", "batch_output"}
    for kind in ("input_uncached", "output"):
        live, batch = rows[kind], rows[f"batch_{kind}"]
        assert live["tokens"] == batch["tokens"] != "0"
        assert Decimal(batch["amount_usd"]) * 2 == Decimal(live["amount_usd"]) > 0
    usage = orjson.loads(httpx.get(f"{base_url}/_invoice?format=openai_usage").content)
    results = usage["data"][0]["results"]
    assert [(r["batch"], r["num_model_requests"]) for r in results] == [(None, 1), (True, 1)]
