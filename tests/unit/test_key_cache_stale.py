"""A stale virtual-key entry keeps answering while one refresh runs behind it, and a
revocation still wins over it."""

from __future__ import annotations

import asyncio

from gateway.keys.auth import MISS
from tests.unit.test_key_cache import KNOWN, SECRET, Clock, Source, run, settled, store
from tests.waiting import until


def test_a_stale_entry_answers_at_once_while_one_refresh_hangs() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        keys = store(source, clock, ttl_s=30)
        principal = await keys.resolve(SECRET)
        source.gate = asyncio.Event()  # the database hangs from now on
        clock.now += 31
        for _ in range(1000):
            assert keys.cached(SECRET) == principal
        await until(lambda: source.calls == 2, "the refresh at the database")
        assert source.calls == 2 and source.concurrent == 1  # one refresh, not one per request
        source.gate.set()
        await settled(keys)
        assert keys.cached(SECRET) == principal
        assert source.calls == 2

    run(main)


def test_a_revoked_key_is_never_served_stale() -> None:
    async def main() -> None:
        source, clock = Source(), Clock()
        keys = store(source, clock, ttl_s=30)
        assert await keys.resolve(SECRET) is not None
        source.gate = asyncio.Event()
        clock.now += 31
        assert keys.cached(SECRET) is not MISS  # stale, refresh started (it reads the old row)
        await until(lambda: source.calls == 2, "the refresh at the database")
        del source.keys[KNOWN]
        keys.invalidate(KNOWN)  # the revocation arrives (pub/sub or the poll)
        assert keys.cached(SECRET) is MISS
        pending = asyncio.ensure_future(keys.resolve(SECRET))
        source.gate.set()
        # Not the refresh that started before the revocation: a lookup of its own.
        assert await pending is None
        assert keys.cached(SECRET) is None

    run(main)
