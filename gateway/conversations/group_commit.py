"""Group commit: concurrent saves queued and written together, one transaction per batch, by
one writer task (the stored-Responses store's saves, gateway/conversations/store.py).

Why: a save that is its own transaction pays a pool checkout (with its pre-ping), BEGIN, the
statement, COMMIT and a durable flush on the server, and the request waits on all of it. Under
load the writer takes whatever queued while the previous batch was being written, so batches
grow with the load, while a lone save on an idle gateway is written at once (no timer, no
linger). One writer means one connection at a time for all saves, instead of a pool's worth
opened and closed as the load comes and goes.

Each caller waits for its own item's outcome, bounded by `timeout_s` from the moment it
queued: None only once the batch holding its item has committed. A batch that fails or
outlasts the bound fails every caller in it. An item whose caller has given up (timed out,
cancelled) before its batch was taken is dropped from the queue, never written later; a batch
abandoned mid-write is cancelled, though its COMMIT may already be on its way (a commit given
up on is in doubt, as a single save's always was).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gateway.runtime.background import Background

__all__ = ["MAX_BYTES", "MAX_ROWS", "Closed", "GroupCommit"]

_I = TypeVar("_I")

log = logging.getLogger("farebox.group_commit")

# One batch: at most this many items, and no more than about this many bytes of them (a
# conversation can be hundreds of kilobytes; one item larger than this goes alone).
MAX_ROWS = 200
MAX_BYTES = 8 * 1024 * 1024


class Closed(Exception):
    """The writer was closed before the item was written (the gateway is stopping)."""


@dataclass(slots=True)
class _Pending(Generic[_I]):
    item: _I
    size: int
    # When its caller stops waiting (the event loop's clock).
    deadline: float
    # The outcome: None when committed, else why not. A result, never a future's exception:
    # one exception raised in many callers would pile their frames onto one traceback, and
    # an exception nobody retrieves gets logged by asyncio with its message.
    outcome: asyncio.Future[BaseException | None]


def _expire(outcome: asyncio.Future[BaseException | None]) -> None:
    if not outcome.done():
        outcome.set_result(TimeoutError())


def _ended(task: asyncio.Task[Any]) -> None:
    # The writer only ends when closed; anything else is a bug, told by type (the message
    # may hold an item), and the next put starts a new writer.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error(
            "the group-commit writer stopped (%s); restarting on the next save", type(exc).__name__
        )


def _quiet(task: asyncio.Task[Any]) -> None:
    # A batch nobody waits for any more (timed out): take its exception, so asyncio never
    # logs it as "never retrieved" with a message that may hold the rows.
    if not task.cancelled():
        task.exception()


class GroupCommit(Generic[_I]):
    """`write(items)` writes its items in one transaction, all or none, and raises if not.
    `on_batch(n)` is told each batch's size. `split_on(exc)`: whether a batch that failed with
    `exc` failed on an item's own values (a value too long for its column, say): that batch is
    then written again one item at a time, so one bad item fails only its own caller."""

    def __init__(
        self,
        write: Callable[[Sequence[_I]], Coroutine[Any, Any, object]],
        *,
        timeout_s: float,
        tasks: Background,
        max_rows: int = MAX_ROWS,
        max_bytes: int = MAX_BYTES,
        on_batch: Callable[[int], None] | None = None,
        split_on: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self._write = write
        self.timeout_s = timeout_s
        self._tasks = tasks
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._on_batch = on_batch
        self._split_on = split_on
        self._queue: deque[_Pending[_I]] = deque()
        self._writing: list[_Pending[_I]] = []
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    async def put(self, item: _I, size: int) -> BaseException | None:
        """Queue `item` (`size`: about its bytes) and wait until it is written: None once its
        batch has committed; otherwise why not (TimeoutError after `timeout_s`, the batch's
        exception, Closed). Starts the writer if it is not running."""
        if self._closed:
            return Closed()
        runner = self._runner
        if runner is None or runner.done():
            self.start()
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[BaseException | None] = loop.create_future()
        deadline = loop.time() + self.timeout_s
        self._queue.append(_Pending(item, size, deadline, outcome))
        self._wake.set()
        timer = loop.call_at(deadline, _expire, outcome)
        try:
            # Cancelled here (the caller went away): the future is cancelled with it, and
            # the writer skips the item if it has not taken it yet.
            return await outcome
        finally:
            timer.cancel()

    def start(self) -> None:
        """Start the writer (once; `put` starts it when it is not running, also after a
        bug ended it, so saves would not all wait out their timeout)."""
        runner = self._runner
        if (runner is None or runner.done()) and not self._closed:
            self._runner = self._tasks.spawn(self._run())
            self._runner.add_done_callback(_ended)

    async def close(self) -> None:
        """Stop the writer; every caller still waiting gets Closed (the batch being written
        too: its commit can no longer be told apart from a failure)."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        for pending in (*self._writing, *self._queue):
            if not pending.outcome.done():
                pending.outcome.set_result(Closed())
        self._writing = []
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._writing = batch
            if self._on_batch is not None:
                self._on_batch(len(batch))
            outcome = await self._bounded(batch)
            split = self._split_on
            if outcome is not None and len(batch) > 1 and split is not None and split(outcome):
                for pending in batch:
                    if not pending.outcome.done():
                        pending.outcome.set_result(await self._bounded([pending]))
            for pending in batch:
                if not pending.outcome.done():
                    pending.outcome.set_result(outcome)
            self._writing = []

    def _take(self) -> list[_Pending[_I]]:
        """The next batch: queued items whose callers still wait, up to the bounds."""
        batch: list[_Pending[_I]] = []
        size = 0
        queue = self._queue
        while queue and len(batch) < self.max_rows:
            pending = queue[0]
            if pending.outcome.done():  # the caller gave up: not written
                queue.popleft()
                continue
            if batch and size + pending.size > self.max_bytes:
                break
            queue.popleft()
            batch.append(pending)
            size += pending.size
        return batch

    async def _bounded(self, batch: list[_Pending[_I]]) -> BaseException | None:
        # Its own task, abandoned (cancelled, not awaited) once the last caller in the batch
        # has stopped waiting: on a frozen database the cancelled statement's cleanup waits
        # as long as the freeze, and the next batch must not.
        task = self._tasks.spawn(self._write([pending.item for pending in batch]))
        task.add_done_callback(_quiet)
        left = max(pending.deadline for pending in batch) - asyncio.get_running_loop().time()
        try:
            done, _ = await asyncio.wait((task,), timeout=max(left, 0.0))
        except BaseException:  # the writer is being closed
            task.cancel()
            raise
        if not done:
            task.cancel()
            return TimeoutError()
        if task.cancelled():
            return Closed()
        return task.exception()
