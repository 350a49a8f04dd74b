"""Bookkeeping the client's answer does not wait for, run right after it is written.

A non-stream answer goes out in the same event-loop step that meters it. What only the
books need — settling the key's limits, drill counts, metrics, the request log, spans, live
routing statistics — is queued here and runs on the loop's next pass: after the answer is
written, and after the other requests that became ready in the same pass (a burst of upstream
answers all reach their clients before any of their bookkeeping runs). What the answer or
crash safety needs (the attempt's price, the request row, its journal line and its place in
the writer's queue) stays before the write.

The queue is flushed by one callback per loop pass, however many answers it holds. Without a
running loop (a synchronous caller, a test) the work runs at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("farebox")

# Per thread (each runs at most one loop at a time): the queue a scheduled flush will run,
# and that loop. Asking asyncio for the running loop costs a getpid() system call on Python
# 3.11, so only the first answer of a loop pass asks.
_state = threading.local()


def after_answer(work: Callable[..., object], *args: Any) -> None:
    state = _state
    queued: list[_Work] | None = getattr(state, "queued", None)
    if queued and state.loop.is_running():  # a flush is due on this thread's loop
        queued.append((work, args))
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        work(*args)
        return
    if queued:  # left by a loop that stopped before flushing (tests run many): now
        _flush(queued)
    queued = state.queued = [(work, args)]
    state.loop = loop
    loop.call_soon(_flush, queued)


_Work = tuple[Callable[..., object], tuple[Any, ...]]


def _flush(queued: list[_Work]) -> None:
    while queued:
        batch = queued[:]
        queued.clear()
        for work, args in batch:
            try:
                work(*args)
            except Exception:  # one failure must not drop the others' bookkeeping
                log.exception("bookkeeping after an answer failed")
