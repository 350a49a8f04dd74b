"""Micro-benchmark: one routing decision for a route with 5 deployments.

    .venv/bin/python bench/routing_decision.py

Times what the gateway runs per request on a balancing route: measuring the request body
(routing.shape.request_shape) and ordering the plan (routing.planner.decide), for each
strategy, with live load, learned limits, prices and an affinity entry in place. Target:
median ≤ 50 µs. Reported as the median of per-batch means (batches of 200 calls).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing.live import DeploymentLoad, RouteStats
from routing.model import DeploymentSpec, Requirements, RouteSpec, Timeouts
from routing.planner import LiveView, decide
from routing.shape import request_shape

SYSTEM = "You are a careful assistant for a support desk. " * 80  # ~4 KB, a real prefix
PAYLOAD = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "My order 1234 has not arrived; what can I do?"},
    ],
    "max_tokens": 300,
    "user": "customer-42",
}


def deployments() -> dict[str, DeploymentSpec]:
    kinds = ["dedicated", "serverless", "serverless", "closed_api", "serverless"]
    out = {}
    for i, kind in enumerate(kinds):
        dep = DeploymentSpec(
            id=f"d{i}",
            provider=f"p{i}",
            provider_kind=kind,
            protocol="openai",
            upstream_model="meta-llama/Llama-3.3-70B-Instruct",
            context_window=131072,
            max_concurrency=8 if kind == "dedicated" else None,
            region="eu" if i % 2 == 0 else "us",
            rpm=10_000 if i == 2 else None,
        )
        out[dep.id] = dep
    return out


def live(deps: dict[str, DeploymentSpec]) -> LiveView:
    loads = {d: DeploymentLoad() for d in deps}
    now = time.time()
    loads["d0"].in_flight = 8  # the dedicated one is full: overflow
    for d, load in loads.items():
        load.ewma_ttft_ms = 100.0 + 10 * int(d[1:])
        load.requests.add(now, 50)
    rates = {d: (0.5 + i * 0.1, 0.05, 1.5) for i, d in enumerate(deps)}
    return LiveView(
        now=now,
        loads=loads,
        rates=rates,
        breaker_open={"d4": True},
        affinity={},
        route_stats=RouteStats(ewma_output_tokens=180.0),
    )


def measure(strategy: str, batches: int = 200, per_batch: int = 200) -> float:
    deps = deployments()
    route = RouteSpec(
        name="chat",
        strategy=strategy,
        targets=tuple(deps),
        timeouts=Timeouts(5000, 30000, 600000),
        weights=(5, 3, 2, 1, 1) if strategy == "weighted" else (),
        sticky="user" if strategy == "weighted" else None,
        require=Requirements(kinds=frozenset({"dedicated", "serverless", "closed_api"})),
    )
    view = live(deps)
    first = request_shape(PAYLOAD, "req_warm")
    assert first.prefix_key is not None
    view.affinity[first.prefix_key] = ("d2",)  # type: ignore[index]
    samples = []
    for b in range(batches):
        started = time.perf_counter()
        for i in range(per_batch):
            shape = request_shape(PAYLOAD, f"req_{b}_{i}", route.sticky)
            decide(route, deps, shape, view)
        samples.append((time.perf_counter() - started) / per_batch * 1e6)
    return statistics.median(samples)


def main() -> int:
    print("| strategy | decision time, median (µs) | target |")
    print("|---|---|---|")
    worst = 0.0
    for strategy in ("cost", "weighted", "latency"):
        us = measure(strategy)
        worst = max(worst, us)
        print(f"| {strategy} (5 deployments) | {us:.1f} | ≤ 50 |")
    return 0 if worst <= 50 else 1


if __name__ == "__main__":
    raise SystemExit(main())
