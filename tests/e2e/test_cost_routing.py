"""Cost routing end to end: a paid-for GPU stays full, overflow goes to the cheapest
serverless deployment, and a provider that starts answering 429 loses its traffic."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.simulator import reset_simulator, simulator_process, simulator_stats

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
auth: none
providers:
  gpu: {kind: dedicated, protocol: openai, api_base: "${SIM}/v1", hourly_usd: 2.5}
  cheap: {kind: serverless, protocol: openai, api_base: "${SIM}/v1"}
  pricey: {kind: serverless, protocol: openai, api_base: "${SIM}/v1"}
deployments:
  gpu@gpu: {provider: gpu, model: "sim-gpu::latency=50,jitter=60,tokens=5", max_concurrency: 8}
  cheap@cheap:
    provider: cheap
    model: "sim-cheap::latency=50,jitter=60,tokens=5${CHEAP_EXTRA}"
    price: {input: 0.2, output: 0.4}
  pricey@pricey:
    provider: pricey
    model: "sim-pricey::latency=50,jitter=60,tokens=5"
    price: {input: 1.0, output: 2.0}
routes:
  balanced:
    strategy: cost
    targets: [pricey@pricey, cheap@cheap, gpu@gpu]   # configured order is not cost order
    retry: {attempts: 1}
"""
CONCURRENCY = 32


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with simulator_process() as url:
        yield url


BODY = json.dumps({"model": "balanced", "messages": [{"role": "user", "content": "Hello there."}]})


def _sample_in_flight(gw: RunningGateway, stop: threading.Event, out: list[int]) -> None:
    assert gw.state.live is not None
    load = gw.state.live.loads["gpu@gpu"]
    while not stop.is_set():
        out.append(load.in_flight)
        time.sleep(0.01)  # sampling interval


def _run(gw: RunningGateway, seconds: float) -> tuple[list[tuple[int, str, str]], list[int]]:
    """Load from another process (off this process's GIL) while sampling the GPU's
    in-flight count; (status, deployment, reason) per request."""
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_in_flight, args=(gw, stop, samples))
    sampler.start()
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.load_client",
                f"{gw.base_url}/chat/completions",
                BODY,
                str(seconds),
                str(CONCURRENCY),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    finally:
        stop.set()
        sampler.join()
    results = []
    for key, n in json.loads(out.stdout).items():
        status, dep, reason = key.split("|", 2)
        results += [(int(status), dep, reason)] * n
    return results, samples


def test_dedicated_stays_full_and_overflow_goes_to_the_cheapest(sim: str, tmp_path: Path) -> None:
    reset_simulator(sim)
    config = config_from_yaml(CONFIG, {"SIM": sim, "CHEAP_EXTRA": ""})
    settings = sqlite_settings(tmp_path)
    with running_gateway(config, settings) as gw:
        results, samples = _run(gw, 3.0)
    assert results and all(status == 200 for status, _, _ in results)
    served = Counter(dep for _, dep, _ in results)
    # The GPU is already paid for: it takes all it can (8 at a time), the rest overflows
    # to the cheaper of the two serverless deployments, and the pricey one idles.
    # Steady state only: from the load's first request in flight to its last (the load
    # client's start-up is not the gateway's), less a fifth at each end.
    first = next(i for i, n in enumerate(samples) if n)
    last = len(samples) - next(i for i, n in enumerate(reversed(samples)) if n)
    active = samples[first:last]
    busy = active[len(active) // 5 : -len(active) // 5]
    assert max(samples) == 8
    assert sum(busy) / len(busy) > 7.0
    assert served["gpu@gpu"] > 0.15 * len(results)
    assert served["cheap@cheap"] > 0.5 * len(results)
    assert served["pricey@pricey"] <= 0.02 * len(results)
    reasons = Counter(reason for _, _, reason in results)
    assert set(reasons) <= {"dedicated capacity free", "cheapest eligible"}
    assert reasons["dedicated capacity free"] == served["gpu@gpu"]
    # The ledger shows the same split, with the reason for each choice.
    rows = sql_rows(
        settings.database_url,
        "SELECT final_deployment, decision, count(*) FROM requests GROUP BY 1, 2",
    )
    ledger = {(dep, decision): n for dep, decision, n in rows}
    assert ledger[("gpu@gpu", "dedicated capacity free")] == served["gpu@gpu"]
    assert ledger[("cheap@cheap", "cheapest eligible")] == served["cheap@cheap"]
    stats = simulator_stats(sim)["requests"]
    assert stats["sim-gpu"]["total"] == served["gpu@gpu"]
    # Utilization of the paid-for GPU is exported for the reports.
    metrics = _metrics(gw)
    assert metrics.get('farebox_dedicated_capacity{deployment="gpu@gpu"}') == 8.0
    slot_seconds = metrics.get('farebox_dedicated_slot_seconds_total{deployment="gpu@gpu"}', 0)
    assert slot_seconds > 0.6 * 8 * 3.0  # busy share of its 8 slots over the 3 s run


def _metrics(gw: RunningGateway) -> dict[str, float]:
    from prometheus_client import REGISTRY, generate_latest

    out: dict[str, float] = {}
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith("farebox_dedicated") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_a_429_storm_moves_traffic_to_the_next_cheapest(sim: str, tmp_path: Path) -> None:
    """The cheap provider allows 150 requests a minute; once it says so (remaining: 0, or
    a 429 with retry-after) the gateway stops sending it traffic instead of hammering it."""
    reset_simulator(sim)
    config = config_from_yaml(CONFIG, {"SIM": sim, "CHEAP_EXTRA": ",rpm=150"})
    settings = sqlite_settings(tmp_path)
    with running_gateway(config, settings) as gw:
        results, _ = _run(gw, 4.0)
    assert results and all(status == 200 for status, _, _ in results)
    served = Counter(dep for _, dep, _ in results)
    upstream = simulator_stats(sim)["requests"]
    assert upstream["sim-cheap"]["by_status"].get("200", 0) == served["cheap@cheap"] <= 150
    # After its limit the overflow goes to the next cheapest, the pricey one.
    assert served["pricey@pricey"] > 0.2 * len(results)
    assert served["gpu@gpu"] > 0.15 * len(results)
    # Learned limits keep the 429s to the requests already on their way.
    limited = upstream["sim-cheap"]["by_status"].get("429", 0)
    assert limited <= CONCURRENCY
    rows = sql_rows(
        settings.database_url,
        "SELECT deployment, error_class, count(*) FROM attempts GROUP BY 1, 2",
    )
    attempts = {(dep, error): n for dep, error, n in rows}
    assert attempts.get(("cheap@cheap", "http_429"), 0) == limited
    assert attempts[("pricey@pricey", None)] == served["pricey@pricey"]
    # Requests that met a 429 on cheap were answered by pricey in the same call.
    fell_over = sql_rows(
        settings.database_url,
        "SELECT count(*) FROM requests WHERE attempts = 2 AND final_deployment = 'pricey@pricey'",
    )
    assert fell_over[0][0] == limited
