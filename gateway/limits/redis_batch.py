"""One Redis round trip for many requests' limit checks: per-key limits at full load.

Every limited request runs the limit script twice (admit before the upstream call, settle
after it). Sent one by one, each costs a pooled connection, a write, an awaited read, an
event-loop wake-up and redis-py packing some fifteen arguments; at a few thousand requests
a second that was most of what a key's limits cost, and 64 concurrent requests plus their
settlements exhausted redis-py's connection pool. Here calls that arrive while a round trip
is in flight wait for the next one. Calls on the same Redis keys (one API key's counters)
become one EVALSHA of a batch script whose items run in order, each exactly as it would
alone; calls on different keys go in the same pipeline as separate EVALSHAs, so each stays
on its own hash slot (Redis Cluster). A request waits at most for the round trip in front
of it plus its own, and at most `max_in_flight` connections are used.

Calls nobody waits for (settlements) are `urgent=False`: they ride along with the next
admission's round trip, or go on their own after `lazy_s`. So at low load an admission
never queues behind a settlement, and at high load settlements cost no round trip at all.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError

from gateway.runtime.redis import RedisClient

Orphan = Callable[[bytes], None]


class _Item:
    __slots__ = ("arg", "future", "on_orphan")

    def __init__(self, arg: str, future: asyncio.Future[bytes], on_orphan: Orphan | None) -> None:
        self.arg, self.future, self.on_orphan = arg, future, on_orphan


Groups = dict[tuple[str, ...], list[_Item]]


class RedisBatch:
    def __init__(
        self,
        redis: RedisClient,
        script: str,
        *,
        max_items: int = 1024,
        max_in_flight: int = 2,
        lazy_s: float = 0.01,
    ) -> None:
        self._redis = redis
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._pending: Groups = {}
        self._count = 0
        self._scheduled = False
        self._lazy_s = lazy_s
        self._lazy: asyncio.TimerHandle | None = None
        self._urgent = False
        self._sends: set[asyncio.Task[None]] = set()

    def call(
        self,
        keys: tuple[str, ...],
        arg: str,
        *,
        urgent: bool = True,
        on_orphan: Orphan | None = None,
    ) -> asyncio.Future[bytes]:
        """The script's answer for `arg` on `keys`, from the next round trip (at most
        `lazy_s` away when not `urgent`). `on_orphan` gets the answer when the caller stopped
        waiting (a cancelled request) but the item ran anyway, so what it reserved can be
        handed back."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        group = self._pending.get(keys)
        if group is None:
            group = self._pending[keys] = []
        group.append(_Item(arg, future, on_orphan))
        self._count += 1
        if urgent:
            self._urgent = True
            self._kick(loop)
        elif self._lazy is None and not self._scheduled:
            self._lazy = loop.call_later(self._lazy_s, self._lazy_due, loop)
        return future

    async def drain(self) -> None:
        """Wait until every call made so far has its answer (shutdown, tests)."""
        while self._pending or self._sends or self._scheduled:
            if self._sends:
                await asyncio.wait(set(self._sends))
            elif self._pending and not self._scheduled:
                self._lazy_due(asyncio.get_running_loop())
            else:
                await asyncio.sleep(0)

    def _lazy_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lazy = None
        self._urgent = True
        self._kick(loop)

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._scheduled or not self._pending or len(self._sends) >= self._max_in_flight:
            return
        self._scheduled = True
        # call_soon, not now: requests handled in this loop iteration join the batch.
        loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        if not self._pending:
            return
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None
        if self._count <= self._max_items:
            groups, self._pending, self._count = self._pending, {}, 0
        else:
            groups = self._take(self._max_items)
        self._urgent = bool(self._pending)  # what is left over goes next, without waiting
        task = loop.create_task(self._send(groups))
        self._sends.add(task)
        task.add_done_callback(self._sent)

    def _take(self, limit: int) -> Groups:
        taken: Groups = {}
        for keys in list(self._pending):
            if limit <= 0:
                break
            group = self._pending[keys]
            taken[keys], rest = group[:limit], group[limit:]
            limit -= len(taken[keys])
            self._count -= len(taken[keys])
            if rest:
                self._pending[keys] = rest
            else:
                del self._pending[keys]
        return taken

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not self._pending:
            return
        loop = asyncio.get_running_loop()
        if self._urgent:
            self._kick(loop)
        elif self._lazy is None and not self._scheduled:
            self._lazy = loop.call_later(self._lazy_s, self._lazy_due, loop)

    async def _send(self, groups: Groups) -> None:
        try:
            answers = await self._execute(groups)
        except BaseException as exc:
            for items in groups.values():
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(_fresh(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for items, answer in zip(groups.values(), answers, strict=True):
            if isinstance(answer, Exception):
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(_fresh(answer))
                continue
            for item, result in zip(items, answer, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
                elif item.on_orphan is not None:  # the caller went away while it ran
                    item.on_orphan(result)

    async def _execute(self, groups: Groups) -> list[Any]:
        answers = await self._pipeline(groups)
        if any(isinstance(a, NoScriptError) for a in answers):
            # Redis restarted or flushed its script cache: load the script, rerun those.
            await self._redis.script_load(self._script)
            missing = {
                keys: items
                for (keys, items), a in zip(groups.items(), answers, strict=True)
                if isinstance(a, NoScriptError)
            }
            again = iter(await self._pipeline(missing))
            answers = [next(again) if isinstance(a, NoScriptError) else a for a in answers]
        return answers

    async def _pipeline(self, groups: Groups) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for keys, items in groups.items():
            pipe.execute_command(
                "EVALSHA", self._sha, len(keys), *keys, *(item.arg for item in items)
            )
        return list(await pipe.execute(raise_on_error=False))


def _fresh(exc: BaseException) -> BaseException:
    """One exception object per waiter: tracebacks attach to the instance."""
    try:
        return type(exc)(*exc.args)
    except TypeError:  # its constructor takes other arguments: share the one instance
        return exc
