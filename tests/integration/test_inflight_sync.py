"""Replicas share in-flight counts of capacity-limited deployments through Redis."""

from __future__ import annotations

import asyncio

from gateway.limits.inflight_sync import InFlightSync
from routing.live import DeploymentLoad
from routing.model import DeploymentSpec, RouteSpec, Timeouts
from routing.planner import LiveView, decide
from routing.shape import request_shape
from tests.redis_topologies import on_every_topology
from tests.services import RedisServer
from tests.waiting import until

GPU = DeploymentSpec("gpu", "gpu", "dedicated", "openai", "llama", max_concurrency=8)
CLOUD = DeploymentSpec("cloud", "cloud", "serverless", "openai", "llama")
ROUTE = RouteSpec("r", "cost", ("gpu", "cloud"), Timeouts(1000, 1000, 1000))


@on_every_topology
def test_two_replicas_see_each_others_load(redis_server: RedisServer) -> None:
    async def run() -> None:
        a_loads = {"gpu": DeploymentLoad(), "cloud": DeploymentLoad()}
        b_loads = {"gpu": DeploymentLoad(), "cloud": DeploymentLoad()}
        a = InFlightSync(redis_server.url, a_loads, ["gpu"], replica="a")
        b = InFlightSync(redis_server.url, b_loads, ["gpu"], replica="b")
        a.connect()  # no background loops: the test drives the rounds
        b.connect()
        try:
            a_loads["gpu"].in_flight = 5
            await a.sync_once()
            await b.sync_once()
            assert b_loads["gpu"].remote_in_flight == 5
            # Replica b has 3 of its own: together the GPU is full, so b overflows.
            b_loads["gpu"].in_flight = 3
            shape = request_shape({"messages": [{"role": "user", "content": "hi"}]}, "req")
            view = LiveView(now=0.0, loads=b_loads, rates={"cloud": (1.0, 0.1, 2.0)})
            decision = decide(ROUTE, {"gpu": GPU, "cloud": CLOUD}, shape, view)
            assert [a.deployment.id for a in decision.plan.attempts] == ["cloud", "gpu"]
            skipped = {c.deployment.id: c.skipped for c in decision.candidates}
            assert skipped["gpu"] == "at capacity (8/8 in flight)"
            # a replica that goes away stops counting once its hash expires or is removed
            await a.close()
            await b.sync_once()
            assert b_loads["gpu"].remote_in_flight == 0
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_redis_outage_falls_back_to_local_counts(redis_server: RedisServer) -> None:
    async def run() -> None:
        loads = {"gpu": DeploymentLoad()}
        sync = InFlightSync("redis://127.0.0.1:9/0", loads, ["gpu"], interval_s=0.05)
        loads["gpu"].remote_in_flight = 6  # stale from before the outage
        await sync.start()
        await until(lambda: loads["gpu"].remote_in_flight == 0, "the fall back to local counts")
        assert sync.rounds == 0
        await sync.close()

    asyncio.run(run())


def test_provider_rpm_and_tpm_hold_across_replicas(redis_server: RedisServer) -> None:
    """A provider account's requests/min is one number for the fleet, not per replica."""
    cheap = DeploymentSpec("cheap", "p", "serverless", "openai", "m", rpm=10, tpm=1_000)
    dear = DeploymentSpec("dear", "q", "serverless", "openai", "m")
    route = RouteSpec("r", "cost", ("cheap", "dear"), Timeouts(1000, 1000, 1000))
    rates = {"cheap": (0.1, 0.01, 0.2), "dear": (5.0, 0.5, 15.0)}
    shape = request_shape({"messages": [{"role": "user", "content": "hi"}]}, "req")

    async def run() -> None:
        now = 1_000.0
        a_loads = {"cheap": DeploymentLoad(), "dear": DeploymentLoad()}
        b_loads = {"cheap": DeploymentLoad(), "dear": DeploymentLoad()}
        a = InFlightSync(redis_server.url, a_loads, ["cheap"], replica="ra", clock=lambda: now)
        b = InFlightSync(redis_server.url, b_loads, ["cheap"], replica="rb", clock=lambda: now)
        a.connect()
        b.connect()
        try:
            for _ in range(7):
                a_loads["cheap"].started(now, 10)
            b_loads["cheap"].started(now, 10)
            await a.sync_once()
            await b.sync_once()
            assert (b_loads["cheap"].remote_requests, b_loads["cheap"].remote_tokens) == (7, 70)
            view = LiveView(now=now, loads=b_loads, rates=rates)
            deps = {"cheap": cheap, "dear": dear}
            # 7 + 1 of 10: still room on the cheap one.
            assert decide(route, deps, shape, view).plan.attempts[0].deployment.id == "cheap"
            for _ in range(2):
                a_loads["cheap"].started(now, 10)
            await a.sync_once()
            await b.sync_once()
            decision = decide(route, deps, shape, view)
            # 9 elsewhere + 1 here = 10: b overflows although it sent only one itself.
            assert decision.plan.attempts[0].deployment.id == "dear"
            skipped = {c.deployment.id: c.skipped for c in decision.candidates}
            assert skipped["cheap"] == "at its 10 requests/min limit"
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())
