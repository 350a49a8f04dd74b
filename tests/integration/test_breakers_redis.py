"""Breakers shared through a real Redis by two replicas: this process and a child process.

The child is this module run with `-m ... --replica`: it owns a `Breakers` on its own event loop
and answers one JSON command per line on stdin, so the two replicas share nothing but Redis.
Every cross-replica expectation is polled against a deadline, never waited out with a sleep.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from gateway.core.breakers import Breakers
from gateway.runtime.redis import redis_client
from routing.breaker import BreakerPolicy
from tests.redis_topologies import on_every_topology

REPO = Path(__file__).resolve().parents[2]
POLICY = BreakerPolicy(
    consecutive_failures=3, cooldown_s=0.6, max_cooldown_s=5.0, probe_timeout_s=2.0
)
# Long enough to outlast a Redis restart, so a trip made during the outage is still cooling
# when the replicas reconnect.
SLOW_POLICY = BreakerPolicy(consecutive_failures=3, cooldown_s=5.0, probe_timeout_s=2.0)
DEADLINE_S = 3.0


def make_breakers(url: str | None, prefix: str, policy: BreakerPolicy = POLICY) -> Breakers:
    # Fast heartbeats and a low reconnect cap keep outage detection and recovery sub-second.
    return Breakers(
        policy, url, key_prefix=prefix, heartbeat_s=0.2, reconnect_max_s=0.5, op_timeout_s=0.5
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {DEADLINE_S}s: {what}")
        await asyncio.sleep(0.02)  # poll: a condition wait


class Replica:
    """The child-process replica, driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, url: str, prefix: str, policy: BreakerPolicy = POLICY) -> Replica:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.test_breakers_redis",
            "--replica",
            json.dumps({"url": url, "prefix": prefix, "policy": asdict(policy)}),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        replica = cls(proc)
        assert await replica.call("ready") is True
        return replica

    async def call(self, op: str, deployment: str = "", **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        line = json.dumps({"op": op, "deployment": deployment, **args}) + "\n"
        self.proc.stdin.write(line.encode())
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        if not reply:
            raise RuntimeError(f"replica exited with {await self.proc.wait()}")
        return json.loads(reply)["result"]

    async def allow(self, deployment: str) -> bool:
        return bool(await self.call("allow", deployment))

    async def shared_ok(self) -> bool:
        return bool(await self.call("shared_ok"))

    async def close(self) -> None:
        if self.proc.returncode is None:
            with_reply = self.call("close")
            try:
                await asyncio.wait_for(with_reply, 10)
            finally:
                if self.proc.returncode is None:
                    await asyncio.wait_for(self.proc.wait(), 10)


async def serve_replica(spec: dict[str, Any]) -> None:
    breakers = make_breakers(spec["url"], spec["prefix"], BreakerPolicy(**spec["policy"]))
    await breakers.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        op, deployment = cmd["op"], cmd["deployment"]
        result: Any = None
        if op == "ready":
            result = True
        elif op == "allow":
            result = breakers.allow(deployment)
        elif op == "record":
            breakers.record(deployment, cmd["success"])
        elif op == "shared_ok":
            result = breakers.shared_ok
        elif op == "view":
            view = breakers.snapshot().get(deployment)
            result = None if view is None else asdict(view)
        elif op == "close":
            await breakers.close()
        print(json.dumps({"result": result}), flush=True)
        if op == "close":
            return


def trip(breakers: Breakers, deployment: str) -> None:
    for _ in range(POLICY.consecutive_failures):
        breakers.record(deployment, False)
    assert not breakers.allow(deployment)


async def started(breakers: Breakers) -> Breakers:
    await breakers.start()
    return breakers


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@on_every_topology
def test_a_trip_on_one_replica_stops_traffic_on_both(redis_server: Any) -> None:
    async def scenario() -> None:
        key_prefix = prefix()
        a = await started(make_breakers(redis_server.url, key_prefix))
        b = await Replica.spawn(redis_server.url, key_prefix)
        try:
            assert a.shared_ok and await b.shared_ok()
            assert await b.allow("dep-a@p")
            trip(a, "dep-a@p")
            await eventually(lambda: _not(b.allow("dep-a@p")), "B sees A's trip")
            assert await b.allow("other@p"), "only the tripped deployment is affected"

            for _ in range(POLICY.consecutive_failures):
                await b.call("record", "dep-b@p", success=False)
            await eventually(lambda: _now(not a.allow("dep-b@p")), "A sees B's trip")
            assert a.open_map()["dep-b@p"] is True
            assert a.snapshot()["dep-b@p"].trips == 1
        finally:
            await b.close()
            await a.close()

    asyncio.run(scenario())


@on_every_topology
def test_a_replica_starting_late_reads_the_open_breakers(redis_server: Any) -> None:
    async def scenario() -> None:
        key_prefix = prefix()
        raw = redis_client(redis_server.url)
        await raw.set(f"{{{key_prefix}:breaker}}:junk@p", b"[not, a record")
        await raw.set(f"{{{key_prefix}:breaker}}:list@p", b"[1, 2]")
        a = await started(make_breakers(redis_server.url, key_prefix, SLOW_POLICY))
        trip(a, "down@p")
        key = f"{{{key_prefix}:breaker}}:down@p"
        await eventually(lambda: _is(raw.exists(key), bool), "A stored the trip")
        assert 5000 < await raw.pttl(key) <= 7000  # cooldown + probe timeout
        await raw.aclose()
        b = await started(make_breakers(redis_server.url, key_prefix, SLOW_POLICY))
        try:
            assert b.shared_ok, "garbage keys must not stop the catch-up read"
            assert not b.allow("down@p"), "the trip is known before any message arrives"
            assert b.snapshot()["down@p"].cooldown_remaining_s > 3.0
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


@on_every_topology
def test_half_open_probe_runs_on_one_replica_and_its_outcome_reaches_both(
    redis_server: Any,
) -> None:
    async def one_probe(a: Breakers, b: Replica, deployment: str, b_first: bool) -> str:
        """Poll both replicas past the cooldown; exactly one may be let through."""
        grants: list[str] = []

        async def somebody_probes() -> bool:
            if b_first and await b.allow(deployment):
                grants.append("b")
            if a.allow(deployment):
                grants.append("a")
            if not b_first and await b.allow(deployment):
                grants.append("b")
            return bool(grants)

        await eventually(somebody_probes, "a probe after the cooldown")
        # Keep asking for longer than a lock retry takes: nobody else may get through.
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.0
        while loop.time() < until:
            await somebody_probes()
            await asyncio.sleep(0.02)  # pace of the repeated asking
        assert len(grants) == 1, grants
        return grants[0]

    async def report(a: Breakers, b: Replica, who: str, deployment: str, ok: bool) -> None:
        if who == "a":
            a.record(deployment, ok)
        else:
            await b.call("record", deployment, success=ok)

    async def scenario() -> None:
        key_prefix = prefix()
        a = await started(make_breakers(redis_server.url, key_prefix))
        b = await Replica.spawn(redis_server.url, key_prefix)
        dep = "flaky@p"
        try:
            trip(a, dep)
            await eventually(lambda: _not(b.allow(dep)), "B sees the trip")

            # A failed probe reopens the breaker everywhere with a doubled cooldown.
            prober = await one_probe(a, b, dep, b_first=True)
            await report(a, b, prober, dep, False)
            # The prober knows at once; the other replica hears it through Redis.
            await eventually(
                lambda: _is(b.call("view", dep), lambda v: v is not None and v["trips"] == 2),
                "B sees the failed probe",
            )
            await eventually(lambda: _now(a.snapshot()[dep].trips == 2), "A sees it too")
            assert a.snapshot()[dep].cooldown_s == pytest.approx(2 * POLICY.cooldown_s)
            assert not a.allow(dep) and not await b.allow(dep)

            # A successful probe closes it everywhere.
            prober = await one_probe(a, b, dep, b_first=False)
            await report(a, b, prober, dep, True)
            await eventually(lambda: b.allow(dep), "B closed after the probe")
            await eventually(lambda: _now(a.allow(dep)), "A closed after the probe")
            assert a.snapshot()[dep].state == "closed"
        finally:
            await b.close()
            await a.close()

    asyncio.run(scenario())


@on_every_topology
def test_redis_outage_degrades_to_local_state_and_recovers_by_itself(redis_server: Any) -> None:
    async def scenario() -> None:
        key_prefix = prefix()
        a = await started(make_breakers(redis_server.url, key_prefix, SLOW_POLICY))
        b = await Replica.spawn(redis_server.url, key_prefix, SLOW_POLICY)
        try:
            assert a.shared_ok and await b.shared_ok()
            redis_server.stop()
            await eventually(lambda: _now(not a.shared_ok), "A notices the outage")
            await eventually(lambda: _not(b.shared_ok()), "B notices the outage")

            # Local breakers keep working; nothing is shared meanwhile.
            trip(a, "during@p")
            for _ in range(3):
                await b.call("record", "local-b@p", success=False)
            assert not await b.allow("local-b@p")
            assert await b.allow("during@p") and a.allow("local-b@p")

            redis_server.start()
            await eventually(lambda: _now(a.shared_ok), "A reconnects")
            await eventually(b.shared_ok, "B reconnects")
            # A's trip from the outage is still cooling, so reconnecting publishes it.
            await eventually(lambda: _not(b.allow("during@p")), "B learns the outage trip")
            trip(a, "after@p")
            await eventually(lambda: _not(b.allow("after@p")), "sharing works again")
        finally:
            redis_server.start()
            await b.close()
            await a.close()

    asyncio.run(scenario())


def test_redis_down_at_start_is_retried_until_it_comes_up(tmp_path: Path) -> None:
    from tests.services import start_redis

    server = start_redis(tmp_path)
    server.stop()

    async def scenario() -> None:
        key_prefix = prefix()
        a = await started(make_breakers(server.url, key_prefix))
        b = await started(make_breakers(server.url, key_prefix))
        try:
            assert not a.shared_ok and not b.shared_ok
            trip(a, "x@p")  # local state serves meanwhile
            assert b.allow("x@p")
            server.start()
            await eventually(lambda: _now(a.shared_ok and b.shared_ok), "both connect later")
            trip(b, "y@p")
            await eventually(lambda: _now(not a.allow("y@p")), "A sees B's trip")
        finally:
            await a.close()
            await b.close()

    try:
        asyncio.run(scenario())
    finally:
        server.close()


def test_without_redis_the_breakers_are_local() -> None:
    async def scenario() -> None:
        a = await started(make_breakers(None, prefix()))
        trip(a, "x@p")
        assert not a.shared_ok and a.open_map()["x@p"]
        await a.close()

    asyncio.run(scenario())


async def _now(value: bool) -> bool:
    return value


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


async def _is(value: Awaitable[Any], predicate: Callable[[Any], bool]) -> bool:
    return predicate(await value)


if __name__ == "__main__" and sys.argv[1:2] == ["--replica"]:
    asyncio.run(serve_replica(json.loads(sys.argv[2])))
