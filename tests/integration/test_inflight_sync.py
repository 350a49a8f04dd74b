"""Replicas share in-flight counts of capacity-limited deployments through Redis."""

from __future__ import annotations

import asyncio

from gateway.inflight_sync import InFlightSync
from routing.live import DeploymentLoad
from routing.model import DeploymentSpec, RouteSpec, Timeouts
from routing.planner import LiveView, decide
from routing.shape import request_shape
from tests.services import RedisServer

GPU = DeploymentSpec("gpu", "gpu", "dedicated", "openai", "llama", max_concurrency=8)
CLOUD = DeploymentSpec("cloud", "cloud", "serverless", "openai", "llama")
ROUTE = RouteSpec("r", "cost", ("gpu", "cloud"), Timeouts(1000, 1000, 1000))


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
        await asyncio.sleep(0.3)
        assert loads["gpu"].remote_in_flight == 0
        assert sync.rounds == 0
        await sync.close()

    asyncio.run(run())
