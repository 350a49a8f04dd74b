"""Dedicated fill backs off at once when live traffic returns (issue 24, acceptance 2's e2e half;
the timed half is bench/batch_fill_bench.py).

The simulator plays a GPU with N = 8 slots (`slots=8`, simulator/gpu.py: a request holds a slot
for its 100 ms, the rest wait FIFO); the gateway knows it as a dedicated provider with
`max_concurrency: 8` and `batch.fill_headroom: 0.25` (2 slots). A batch submitted through the
OpenAI SDK first fills the idle GPU up to N − headroom; then live clients come back one at a
time (closed loop, SDK too) until they hold N − headroom slots themselves. Throughout, no request
may wait for a slot at the simulator (its `queued` stays 0, its peak in use stays ≤ N): the
batch gave the slots back as live traffic came. Then the live clients leave, the batch finishes,
and the ledger has one $0 `batch` attempt per line. Counts and ordering only, never speed.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from functools import partial
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

KEY = "sk-batch-fill-0001"
SLOTS = 8
HEADROOM_SLOTS = 2  # ceil(8 × 0.25)
LINES = 400
GPU = f"sim-fill-{uuid.uuid4().hex[:8]}"  # this module's own GPU in the shared simulator

CONFIG = f"""
auth:
  keys:
    - {{name: filler, key: {KEY}}}
batch: {{fill_headroom: 0.25, poll_interval_s: 0.1}}
providers:
  gpu: {{kind: dedicated, protocol: openai, api_base: "${{SIM_URL}}/v1", api_key: "${{SIM_KEY}}",
        hourly_usd: 2.0, max_concurrency: {SLOTS}}}
deployments:
  llama@gpu: {{provider: gpu, model: "{GPU}::slots={SLOTS},latency=100,tokens=4"}}
routes:
  chat: {{targets: [llama@gpu]}}
"""


@pytest.fixture(scope="module")
def gw(
    simulator: str, pg_url_module: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    directory = Path(tmp_path_factory.mktemp("fill"))
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    settings = sqlite_settings(directory).model_copy(update={"database_url": pg_url_module})
    with running_gateway(config, settings) as running:
        yield running


@pytest.fixture(scope="module")
def pg_url_module(postgres: Any) -> str:
    url: str = postgres.migrated_database("fill")
    return url


def sdk(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)


def gpu(simulator: str) -> dict[str, Any]:
    stats = httpx.get(f"{simulator}/_stats", timeout=10).json()
    found: dict[str, Any] = stats.get("gpus", {}).get(GPU, {})
    return found


def batch_file(lines: int) -> bytes:
    out = io.BytesIO()
    for n in range(1, lines + 1):
        body = {"model": "chat", "messages": [{"role": "user", "content": f"ticket {n}"}]}
        line = {"custom_id": f"t-{n}", "method": "POST", "url": "/v1/chat/completions"}
        out.write(orjson.dumps({**line, "body": body}) + b"\n")
    return out.getvalue()


class LiveClient:
    """One closed-loop live client: its next request as soon as the last one answered."""

    def __init__(self, gw: RunningGateway) -> None:
        self.client = sdk(gw)
        self.answers: list[int] = []  # HTTP status per request, in order
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "live"}]
                )
                self.answers.append(200)
            except openai.APIStatusError as exc:
                self.answers.append(exc.status_code)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(15)


def answered_more(clients: list[LiveClient], marks: list[int], more: int) -> bool:
    return all(len(c.answers) >= m + more for c, m in zip(clients, marks, strict=True))


def test_live_traffic_coming_back_takes_its_slots_back_at_once(
    gw: RunningGateway, simulator: str
) -> None:
    client = sdk(gw)
    uploaded = client.files.create(file=("fill.jsonl", batch_file(LINES)), purpose="batch")
    httpx.post(f"{simulator}/_reset", timeout=10)  # this window's GPU counters
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    # Alone on the GPU, the batch fills it up to N − headroom, and no further.
    wait_until(
        lambda: gpu(simulator).get("in_use", 0) >= SLOTS - HEADROOM_SLOTS,
        "the batch filling the idle GPU",
    )
    assert gpu(simulator)["peak_in_use"] == SLOTS - HEADROOM_SLOTS

    # Live traffic comes back one client at a time, up to N − headroom of them.
    clients: list[LiveClient] = []
    try:
        for _ in range(SLOTS - HEADROOM_SLOTS):
            clients.append(LiveClient(gw))
            marks = [len(c.answers) for c in clients]
            # Each client, the new one too, answered twice more: every batch line that held
            # a slot when it came has finished (lines take 100 ms, like live requests).
            wait_until(
                partial(answered_more, list(clients), marks, 2),
                f"{len(clients)} live clients answered",
            )
        marks = [len(c.answers) for c in clients]
        wait_until(
            partial(answered_more, clients, marks, 5),
            "the live clients holding N − headroom slots for a while",
        )
        during = gpu(simulator)
        still = client.batches.retrieve(batch.id)
    finally:
        for c in clients:
            c.stop()
    # The batch was still running the whole time (else this proved nothing) ...
    assert still.status == "in_progress", still
    assert still.request_counts is not None and still.request_counts.completed < LINES
    # ... and nobody ever waited for a slot: it gave them back as live traffic came.
    assert during["queued"] == 0, during
    assert during["queue_wait_ms"]["max"] == 0.0, during
    assert during["peak_in_use"] <= SLOTS
    assert {s for c in clients for s in c.answers} == {200}

    def finished() -> bool:
        nonlocal batch
        batch = client.batches.retrieve(batch.id)
        return batch.status in ("completed", "failed", "expired", "cancelled")

    wait_until(finished, "the batch to finish once live traffic left", within_s=60)
    assert batch.status == "completed", batch
    assert batch.metadata is not None and batch.metadata["farebox_path"] == "dedicated_fill"
    assert batch.request_counts is not None and batch.request_counts.completed == LINES
    attempts = sql_rows(
        ledger_url(gw),
        "SELECT a.role, a.http_status, a.cost_usd, a.provider_kind FROM attempts a"
        " JOIN requests r ON r.id = a.request_id WHERE r.batch_id = :b",
        {"b": batch.id},
    )
    assert len(attempts) == LINES  # no failures configured: one attempt per line
    assert {(a.role, a.http_status, a.provider_kind) for a in attempts} == {
        ("batch", 200, "dedicated")
    }
    assert all(a.cost_usd == 0 for a in attempts)  # $0 marginal cost on the GPU
