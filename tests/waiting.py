"""Wait for a condition instead of sleeping and hoping: a test that polls returns as soon as
the thing happened, and one that times out says what it was waiting for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.01


def wait_until(
    predicate: Callable[[], bool], what: str, within_s: float = 10.0, poll_s: float = POLL_S
) -> None:
    """`poll_s`: longer for a predicate that costs something each time (a request)."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s:g}s waiting for {what}")
        time.sleep(poll_s)  # the poll interval


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, within_s: float = 10.0
) -> None:
    deadline = time.monotonic() + within_s
    while True:
        got = predicate()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s:g}s waiting for {what}")
        await asyncio.sleep(POLL_S)  # the poll interval
