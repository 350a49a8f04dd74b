"""Background tasks that no request awaits, kept until they finish, and bounded waits.

asyncio keeps only weak references to tasks, so a fire-and-forget task must be held
somewhere or it can be collected mid-flight; every component that spawns work (breakers,
key sync, drills, limits, cache, reload) holds its tasks in one of these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

_V = TypeVar("_V")


class Background:
    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self, seconds: float) -> None:
        """Let running tasks finish, for at most `seconds`."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=seconds)

    async def cancel(self) -> None:
        """Cancel every task and wait until each has ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def within(awaitable: Awaitable[_V], seconds: float) -> _V:
    # Not asyncio.wait_for: on 3.11 it swallows a cancellation that lands as the awaited
    # call completes, which left close() waiting forever on a worker that missed it.
    async with asyncio.timeout(seconds):
        return await awaitable
