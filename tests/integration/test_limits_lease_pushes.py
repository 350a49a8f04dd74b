"""Lease mode's spend pushes are idempotent, against real Redis: a sync whose reply is lost
after Redis applied it (a timeout, a reset connection, a Redis that froze after running the
script) must not make the next sync count the same spend again. The reply is lost by a
script call that raises after Redis ran it, and by a TCP proxy that drops Redis's replies
(redis-py's own timeout); the script is also called alone as retries and late duplicates
would call it. Each of these fails against the script before pushes were idempotent.

The replica's side of it (cumulative totals in the slice) is tests/unit/test_lease_pushes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from redis.exceptions import TimeoutError as RedisTimeout

from gateway.limits.lease_lua import LEASE
from gateway.limits.limiter import LEASE as LEASE_MODE
from gateway.limits.limiter import Limiter
from gateway.limits.lua import limit_keys
from gateway.runtime.redis import redis_client
from routing.quota import Ask
from tests.integration.test_limits import principal, row
from tests.redis_topologies import on_every_topology
from tests.waiting import until

BUDGET_NANO = 5_000_000_000  # $5
COST = "0.0005"  # what each request settles at: 500,000 nano-USD
COST_NANO = 500_000


@on_every_topology
def test_a_sync_whose_reply_is_lost_after_redis_applied_it_pushes_nothing_twice(
    redis_server: Any,
) -> None:
    """The first sync that pushes spend runs in Redis, then its caller sees a timeout (the
    reply lost). The slice keeps that spend unpushed; the retry after Redis is back sends it
    again with what settled meanwhile, and Redis's `spent` ends equal to the settled spend."""

    async def scenario() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        limiter = Limiter(
            redis_server.url,
            key_prefix=prefix,
            mode=LEASE_MODE,
            lease_idle_s=60.0,
            probe_interval_s=0.1,
        )
        leases = limiter._leases
        assert leases is not None
        script = leases._script
        lost: list[list[Any]] = []

        async def reply_lost_once(*, keys: list[str], args: list[Any]) -> Any:
            out = await script(keys=keys, args=args)  # applied in Redis
            if not lost and int(args[15]) > 0:  # the first sync that pushes spend
                lost.append(args)
                raise RedisTimeout("Timeout reading from socket")
            return out

        leases._script = reply_lost_once  # type: ignore[assignment]
        who = principal(rpm=600, budget_usd=Decimal("5"))
        budget_key = limit_keys(prefix, who.key_name, datetime.now(UTC).strftime("%Y-%m"))[3]
        client = redis_client(redis_server.url)

        async def spent() -> int:
            return int(await client.hget(budget_key, "spent") or 0)

        try:
            first = await limiter.admit(who, Ask(10, 1_000_000))
            held = first.slice
            assert held is not None
            first.settle(row(10, COST))
            await until(lambda: bool(lost), "the first push (its reply then lost)")
            assert await spent() == COST_NANO  # Redis did apply it
            assert held.unpushed_nano == COST_NANO  # the replica cannot know that
            # Marked down by the timeout; more spend settles in process meanwhile.
            for _ in range(2):
                admission = await limiter.admit(who, Ask(10, 1_000_000))
                admission.settle(row(10, COST))
            await until(
                lambda: limiter.redis_up and held.unpushed_nano == 0,
                "Redis back and every settled spend pushed and confirmed",
            )
            # Exactly the three settlements: the lost sync's spend is not counted twice.
            assert await spent() == 3 * COST_NANO
            assert held.pushed_nano == 3 * COST_NANO
        finally:
            await limiter.close()
            await client.aclose()
        # The shutdown's return pushed nothing more.
        client = redis_client(redis_server.url)
        try:
            assert int(await client.hget(budget_key, "spent") or 0) == 3 * COST_NANO
        finally:
            await client.aclose()

    asyncio.run(scenario())


class ReplyDroppingProxy:
    """A TCP proxy in front of Redis that can drop Redis's replies: commands still reach
    Redis and run, and the client times out waiting (a reply lost on the way, or a Redis that
    froze right after applying the command)."""

    def __init__(self, redis_port: int) -> None:
        self._redis_port = redis_port
        self.dropping = False
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self._redis_port)
        self._writers += [client_w, redis_w]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            while data := await src.read(65536):
                if replies and self.dropping:
                    self.dropped += 1
                    continue
                dst.write(data)
                await dst.drain()
            dst.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(pump(client_r, redis_w, False), pump(redis_r, client_w, True))

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def test_a_push_whose_reply_redis_never_sends_is_counted_once(redis_server: Any) -> None:
    """The same over a real socket: Redis runs the sync that pushes spend, its reply never
    comes back, redis-py times out and the limiter marks Redis down. Once replies flow again
    the slice pushes again, and `spent` is still the settled spend."""

    async def scenario() -> None:
        proxy = ReplyDroppingProxy(redis_server.port)
        limiter = Limiter(
            await proxy.start(),
            key_prefix=f"t{uuid.uuid4().hex[:8]}",
            mode=LEASE_MODE,
            lease_idle_s=60.0,
            probe_interval_s=0.1,
            timeout_s=0.3,
        )
        leases = limiter._leases
        assert leases is not None
        who = principal(budget_usd=Decimal("5"))
        budget_key = limit_keys(limiter._prefix, who.key_name, datetime.now(UTC).strftime("%Y-%m"))[
            3
        ]
        client = redis_client(redis_server.url)  # straight to Redis, not through the proxy

        async def spent() -> int:
            return int(await client.hget(budget_key, "spent") or 0)

        try:
            first = await limiter.admit(who, Ask(10, 1_000_000))
            held = first.slice
            assert held is not None
            first.settle(row(10, COST))
            second = await limiter.admit(who, Ask(10, 1_000_000))
            await until(
                lambda: held.pushed_nano == COST_NANO and not leases._syncing,
                "the first spend pushed, and no sync in flight",
            )
            proxy.dropping = True
            second.settle(row(10, COST))
            await until(lambda: not limiter.redis_up, "the push's reply timing out")

            async def ran() -> bool:
                return await spent() == 2 * COST_NANO

            await until(ran, "Redis running the push all the same")
            assert proxy.dropped >= 1 and held.unpushed_nano == COST_NANO
            proxy.dropping = False
            await until(
                lambda: limiter.redis_up and held.unpushed_nano == 0,
                "Redis back and the spend pushed again, and confirmed",
            )
            assert await spent() == 2 * COST_NANO
            assert held.pushed_nano == 2 * COST_NANO
        finally:
            await limiter.close()
            await client.aclose()
            await proxy.close()

    asyncio.run(scenario())


def test_a_key_idle_long_enough_to_drop_its_slice_still_has_its_next_spend_counted(
    redis_server: Any,
) -> None:
    """Redis's record of what this replica pushed for a key outlives the key's slice (dropped
    once idle and returned): the next slice goes on from that total, so its pushes count."""

    async def scenario() -> None:
        limiter = Limiter(
            redis_server.url,
            key_prefix=f"t{uuid.uuid4().hex[:8]}",
            mode=LEASE_MODE,
            lease_idle_s=0.3,
        )
        leases = limiter._leases
        assert leases is not None
        who = principal(budget_usd=Decimal("5"))
        budget_key = limit_keys(limiter._prefix, who.key_name, datetime.now(UTC).strftime("%Y-%m"))[
            3
        ]
        client = redis_client(redis_server.url)

        async def spent_is(nano: int) -> bool:
            return int(await client.hget(budget_key, "spent") or 0) == nano

        try:
            first = await limiter.admit(who, Ask(10, 1_000_000))
            first.settle(row(10, COST))
            await until(lambda: spent_is(COST_NANO), "the first spend pushed")
            await until(lambda: who.key_name not in leases._slices, "the idle key's slice dropped")
            again = await limiter.admit(who, Ask(10, 1_000_000))
            held = again.slice
            assert held is not None and held.pushed_nano == COST_NANO
            again.settle(row(10, COST))
            await until(lambda: spent_is(2 * COST_NANO), "the second spend pushed")
        finally:
            await limiter.close()
            await client.aclose()

    asyncio.run(scenario())


@on_every_topology
def test_the_script_applies_a_push_once_whatever_order_its_retries_arrive_in(
    redis_server: Any,
) -> None:
    """The script alone, called as retries would call it: the same sync twice, a stale one
    after a newer one, a replica's first push, and a hash reseeded from the ledger."""

    async def scenario() -> None:
        client = redis_client(redis_server.url)
        script = client.register_script(LEASE)
        keys = list(limit_keys(f"t{uuid.uuid4().hex[:8]}", "k", "2026-12"))
        budget, reservations = keys[3], keys[4]
        a, b = "slice-aaaa", "slice-bbbb"

        async def sync(*args: Any) -> list[int]:
            out = await script(keys=keys, args=args)
            return [int(v) for v in out]

        async def spent() -> int:
            return int(await client.hget(budget, "spent") or 0)

        async def entries(holder: str) -> list[str]:
            members = await client.zrange(reservations, 0, -1)
            names = [m.decode() for m in members if isinstance(m, bytes)]
            return [m for m in names if m.startswith(holder + ":")]

        try:
            await client.hset(budget, mapping={"spent": 1_000, "reserved": 0})
            # A's first push of the month: 300 (with nothing recorded, all of it).
            first = await sync(*_argv(a, 0, 300, 0, 10_000, 300))
            assert await spent() == 1_300 and first[6] == 10_000
            # Its reply was lost: A sends it again, with 200 more settled since (and, not
            # knowing its entry of 10,000, asks for a budget entry of 8,000).
            await sync(*_argv(a, 0, 500, 0, 8_000, 500))
            assert await spent() == 1_500
            # One reservation entry for A: the one the lost reply made is replaced, not
            # left holding budget until it expires.
            assert await entries(a) == [f"{a}:8000"]
            assert int(await client.hget(budget, "reserved") or 0) == 8_000
            # The same sync delivered twice, and the older one arriving last: nothing added.
            await sync(*_argv(a, 8_000, 500, 0, 8_000, 500))
            await sync(*_argv(a, 8_000, 300, 0, 10_000, 300))
            assert await spent() == 1_500
            # Another replica's pushes are its own.
            await sync(*_argv(b, 0, 50, 0, 0, 50))
            assert await spent() == 1_550
            # The month's hash reseeded from the ledger (which counted all the above): A's
            # record is gone, so what A saw confirmed (500) is the base, not 0.
            await client.delete(budget)
            await client.hset(budget, mapping={"spent": 1_550, "reserved": 0})
            await sync(*_argv(a, 10_000, 25, 0, 10_000, 525))
            assert await spent() == 1_575
            assert await entries(a) == [f"{a}:10000"]
            assert int(await client.hget(budget, "reserved") or 0) == 10_000
        finally:
            await client.delete(*keys)
            await client.aclose()

    asyncio.run(scenario())


def _argv(holder: str, old_nano: int, push: int, keep: int, want: int, total: int) -> list[Any]:
    head: list[Any] = [0, 0, 0, BUDGET_NANO, holder, 30_000, 3_600]
    return [*head, 0, 0, 0, 0, 0, 0, 0, old_nano, push, keep, want, total]
