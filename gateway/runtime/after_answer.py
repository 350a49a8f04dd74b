"""Bookkeeping the client's answer does not wait for, run right after it is written.

A non-stream answer goes out in the same event-loop step that meters it. What only the
books need — settling the key's limits, drill counts, metrics, the request log, spans, live
routing statistics — is queued here and runs on the loop's next pass: after the answer is
written, and after the other requests that became ready in the same pass (a burst of upstream
answers all reach their clients before any of their bookkeeping runs). What the answer or
crash safety needs (the attempt's price, the request row, its journal line and its place in
the writer's queue) stays before the write.

Without a running loop (a synchronous caller, a test) the work runs at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def after_answer(work: Callable[..., object], *args: Any) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        work(*args)
        return
    loop.call_soon(work, *args)
