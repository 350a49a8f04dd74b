"""The virtual-key cache in KeyStore: TTLs, the bounded negative cache, invalidation, single
flight, and what happens while the key database is down."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import pytest

from gateway.errors import GatewayError
from gateway.keys.auth import MISS, KeyStore, Principal
from tests.waiting import until

SECRET = b"fbx-known-secret"
KNOWN = hashlib.sha256(SECRET).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A key database with one key, counting lookups; can be made slow or broken."""

    def __init__(self, principal: Principal | None = None) -> None:
        self.keys: dict[str, Principal] = {
            KNOWN: principal or Principal("key_1", key_id="key_1", team="t")
        }
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None
        self.concurrent = self.max_concurrent = 0

    async def principal(self, key_hash: str) -> Principal | None:
        self.calls += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.down:
                raise ConnectionRefusedError("database down")
            return self.keys.get(key_hash)
        finally:
            self.concurrent -= 1


def store(source: Source, clock: Clock, **kw: float) -> KeyStore:
    return KeyStore(
        [("static", "sk-static-key")],
        source=source,
        clock=clock,
        wall_clock=lambda: 1_700_000_000.0,
        **kw,  # type: ignore[arg-type]
    )


async def settled(keys: KeyStore) -> None:
    """Wait for the background lookups the store has running."""
    while keys._inflight:
        await asyncio.gather(*(f for f, _ in keys._inflight.values()), return_exceptions=True)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def test_static_keys_never_ask_the_database() -> None:
    source, clock = Source(), Clock()
    keys = store(source, clock)
    found = keys.cached(b"sk-static-key")
    assert isinstance(found, Principal) and found.key_name == "static"
    assert source.calls == 0


def test_known_key_is_cached_for_its_ttl_then_refreshed() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        keys = store(source, clock, ttl_s=30)
        assert keys.cached(SECRET) is MISS
        principal = await keys.resolve(SECRET)
        assert principal is not None and principal.key_id == "key_1"
        for _ in range(100):
            assert keys.cached(SECRET) == principal
        assert source.calls == 1
        clock.now += 31
        # Stale: still answered from memory at once, while one refresh runs behind it.
        assert keys.cached(SECRET) == principal
        assert keys.cached(SECRET) == principal
        await settled(keys)
        assert source.calls == 2
        for _ in range(100):
            assert keys.cached(SECRET) == principal
        assert source.calls == 2

    run(main)


def test_unknown_keys_are_remembered_briefly_and_the_memory_is_bounded() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        keys = store(source, clock, negative_ttl_s=5, max_negative=100)
        assert await keys.resolve(b"fbx-wrong") is None
        assert keys.cached(b"fbx-wrong") is None  # no second lookup within the window
        assert source.calls == 1
        clock.now += 6
        assert keys.cached(b"fbx-wrong") is MISS
        # A flood of distinct made-up keys: memory stays at the bound.
        for i in range(1000):
            assert await keys.resolve(f"fbx-random-{i}".encode()) is None
        assert keys.cache_sizes() == (0, 100)
        # The known key still resolves and is cached on its own side.
        assert await keys.resolve(SECRET) is not None
        assert keys.cache_sizes() == (1, 100)

    run(main)


def test_concurrent_misses_share_one_lookup_and_lookups_are_bounded() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        source.gate = asyncio.Event()
        keys = store(source, clock, lookup_concurrency=2)
        same = [asyncio.ensure_future(keys.resolve(SECRET)) for _ in range(50)]
        others = [asyncio.ensure_future(keys.resolve(f"fbx-x{i}".encode())) for i in range(10)]
        await until(lambda: source.concurrent == 2, "two lookups at the database")
        assert source.max_concurrent <= 2
        source.gate.set()
        results = await asyncio.gather(*same)
        assert all(r is not None and r.key_id == "key_1" for r in results)
        assert await asyncio.gather(*others) == [None] * 10
        assert source.calls == 11  # one for the shared digest, one per distinct other
        assert source.max_concurrent <= 2

    run(main)


def test_too_many_distinct_pending_lookups_get_a_503_not_a_queue() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        source.gate = asyncio.Event()
        keys = store(source, clock, max_pending=5)
        waiting = [asyncio.ensure_future(keys.resolve(f"fbx-p{i}".encode())) for i in range(5)]
        await asyncio.sleep(0)  # one loop turn: the five lookups start and become pending
        with pytest.raises(GatewayError) as err:
            await keys.resolve(b"fbx-one-too-many")
        assert err.value.status == 503
        source.gate.set()
        await asyncio.gather(*waiting)

    run(main)


def test_a_cancelled_caller_does_not_cancel_the_shared_lookup() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        source.gate = asyncio.Event()
        keys = store(source, clock)
        first = asyncio.ensure_future(keys.resolve(SECRET))
        second = asyncio.ensure_future(keys.resolve(SECRET))
        await asyncio.sleep(0)  # one loop turn: both start, the second joins the first's lookup
        first.cancel()
        source.gate.set()
        assert (await second) is not None
        assert source.calls == 1

    run(main)


def test_invalidation_drops_the_entry_and_a_racing_lookup_is_not_cached() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        keys = store(source, clock)
        assert await keys.resolve(SECRET) is not None
        del source.keys[KNOWN]  # revoked in the database...
        assert keys.cached(SECRET) is not MISS  # ...still cached until told
        keys.invalidate(KNOWN)
        assert keys.cached(SECRET) is MISS
        assert await keys.resolve(SECRET) is None

        # A lookup that read the old row before an invalidation landed must not cache it.
        source.keys[KNOWN] = Principal("key_1", key_id="key_1")
        keys.invalidate(KNOWN)
        source.gate = asyncio.Event()
        pending = asyncio.ensure_future(keys.resolve(SECRET))
        await asyncio.sleep(0.01)  # the lookup is now waiting on the database
        keys.invalidate(KNOWN)
        source.gate.set()
        assert (await pending) is not None
        assert keys.cached(SECRET) is MISS

    run(main)


def test_invalidate_key_drops_every_cached_secret_of_a_rotated_key() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        keys = store(source, clock)
        assert await keys.resolve(SECRET) is not None
        keys.invalidate_key("key_other")
        assert keys.cached(SECRET) is not MISS
        keys.invalidate_key("key_1")
        assert keys.cached(SECRET) is MISS

    run(main)


def test_database_down_cached_keys_keep_working_unknown_get_503() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        keys = store(source, clock, ttl_s=30, negative_ttl_s=5)
        assert await keys.resolve(SECRET) is not None
        source.down = True
        clock.now += 31  # the entry is stale and its refresh fails: it keeps working
        assert keys.cached(SECRET) is not MISS
        await settled(keys)
        calls = source.calls
        assert calls == 2
        assert keys.cached(SECRET) is not MISS  # re-armed briefly: no lookup per request
        assert source.calls == calls
        with pytest.raises(GatewayError) as err:
            await keys.resolve(b"fbx-never-seen")
        assert err.value.status == 503
        assert "unreachable" in err.value.message
        assert "fbx-never-seen" not in err.value.message
        # Within a second of a failure, unseen keys are answered without asking again.
        assert source.calls == calls
        clock.now += 1.5
        with pytest.raises(GatewayError):
            await keys.resolve(b"fbx-never-seen")
        assert source.calls == calls + 1
        source.down = False
        clock.now += 1.5
        assert await keys.resolve(b"fbx-never-seen") is None

    run(main)


def test_an_expired_key_is_refused_with_a_clear_message() -> None:
    async def main() -> None:
        source, clock = Source(Principal("key_1", key_id="key_1", expires_at=1.0)), Clock()
        keys = store(source, clock)
        with pytest.raises(GatewayError) as err:
            await keys.resolve(SECRET)
        assert err.value.status == 401
        assert err.value.message == "This API key has expired."
        with pytest.raises(GatewayError):  # cached, and still refused
            keys.cached(SECRET)
        assert source.calls == 1

    run(main)


def test_without_a_source_unknown_keys_are_simply_unknown() -> None:
    keys = KeyStore([("a", "sk-alpha-123")])
    assert keys.cached(b"fbx-anything") is None
    assert not keys.virtual
