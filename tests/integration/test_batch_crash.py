"""A gateway killed (`kill -9`) in the middle of a batch, then restarted, finishes the batch
with no line run twice and none lost, and a ledger equal to the upstream calls.

Real `farebox serve` processes, real Postgres, the simulator over HTTP, the OpenAI SDK. The
simulator logs the `x-client-request-id` of every call (the attempt's ledger id), so the
ledger is compared with what reached the upstream id by id. A line whose call was in flight
at the kill has no answer: it is billed as `gateway_crashed` (the provider did run it) and
runs again after the restart; every line ends with exactly one successful attempt.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import openai
import orjson

from tests.gateway_process import gateway_process
from tests.integration.test_crash_ledger import (
    kill_when_every_open_call_reached_the_upstream,
    ledger_ids,
    received_ids,
    sim,  # noqa: F401  (fixture)
    wait_until,
)
from tests.ledger_reads import sql_rows

KEY = "sk-batch-crash-01"
LINES = 400
CONFIG = """
auth: {keys: [{name: crash, key: KEY}]}
batch: {serverless_concurrency: 8, poll_interval_s: 0.1, lease_s: 2}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: k}
deployments:
  slow@sim: {provider: sim, model: "sim-slow::latency=30", price: {input: 0.5, output: 1.5}}
routes:
  chat: {targets: [slow@sim]}
""".replace("KEY", KEY)


def batch_file() -> bytes:
    out = io.BytesIO()
    for n in range(1, LINES + 1):
        body = {"model": "chat", "messages": [{"role": "user", "content": f"line {n}"}]}
        line = {"custom_id": f"c-{n}", "method": "POST", "url": "/v1/chat/completions"}
        out.write(orjson.dumps({**line, "body": {**body, "max_tokens": 8}}) + b"\n")
    return out.getvalue()


def lines_done(pg_url: str, batch_id: str) -> int:
    rows = sql_rows(pg_url, "SELECT count(*) FROM batch_lines WHERE batch_id = :b", {"b": batch_id})
    return int(rows[0][0])


def test_kill_9_mid_batch_resumes_without_running_a_line_twice(
    sim: str,  # noqa: F811
    pg_url: str,
    tmp_path: Path,
) -> None:
    env = {"SIM_URL": sim, "FAREBOX_DATABASE_URL": pg_url}
    with gateway_process(CONFIG, tmp_path, env) as gw:
        sdk = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
        uploaded = sdk.files.create(file=("in.jsonl", batch_file()), purpose="batch")
        batch = sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_until(lambda: lines_done(pg_url, batch.id) >= LINES // 4, "a quarter of the lines")
        in_flight = kill_when_every_open_call_reached_the_upstream(gw, sim, tmp_path)
    done_at_kill = lines_done(pg_url, batch.id)
    assert done_at_kill < LINES, "the batch finished before the kill: nothing was tested"

    with gateway_process(CONFIG, tmp_path, env) as gw:  # recovers the journal, resumes
        sdk = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
        final: Any = None

        def finished() -> bool:
            nonlocal final
            final = sdk.batches.retrieve(batch.id)
            return final.status in ("completed", "failed", "expired", "cancelled")

        wait_until(finished, "the batch to finish after the restart", timeout=120)
        assert final.status == "completed"
        assert final.request_counts.completed == LINES and final.request_counts.failed == 0
        content = sdk.files.content(final.output_file_id).read()
        wait_until(lambda: len(ledger_ids(pg_url)) >= len(received_ids(sim)), "the ledger")

    answers = [orjson.loads(line) for line in content.splitlines() if line]
    assert [a["custom_id"] for a in answers] == [f"c-{n}" for n in range(1, LINES + 1)]
    # Every upstream call is one attempt in the ledger, and nothing else is.
    sent = received_ids(sim)
    ids = ledger_ids(pg_url)
    assert len(sent) == len(set(sent)) and len(ids) == len(set(ids))
    assert set(ids) == set(sent), (
        f"lost: {len(set(sent) - set(ids))}, invented: {len(set(ids) - set(sent))}"
    )
    # Exactly one successful attempt per line: none ran to an answer twice.
    per_line = sql_rows(
        pg_url,
        "SELECT l.line_no, count(a.id) FROM batch_lines l"
        " JOIN attempts a ON a.request_id = l.request_id"
        " WHERE l.batch_id = :b AND a.http_status = 200 AND a.error_class IS NULL"
        " GROUP BY l.line_no",
        {"b": batch.id},
    )
    assert len(per_line) == LINES and all(n == 1 for _, n in per_line)
    successes = sql_rows(
        pg_url,
        "SELECT count(*) FROM attempts WHERE role = 'batch' AND http_status = 200"
        " AND error_class IS NULL",
    )
    assert successes[0][0] == LINES
    # The calls cut by the kill: billed as crashed, still the batch's.
    crashed = sql_rows(
        pg_url,
        "SELECT r.batch_id, a.role FROM attempts a JOIN requests r ON r.id = a.request_id"
        " WHERE a.error_class = 'gateway_crashed'",
    )
    assert len(crashed) == in_flight
    assert all(row[0] == batch.id and row[1] == "batch" for row in crashed)
    print(
        f"\nkill -9 mid-batch: {done_at_kill}/{LINES} lines done at the kill, {in_flight} calls"
        f" cut, {len(sent)} upstream calls = {len(ids)} attempts"
    )
