"""Idle keep-alive connections closed by one coarse ticker per event loop, not a timer each.

uvicorn arms a `call_later` timer after every response (the keep-alive timeout) and cancels
it when the next request arrives: ~2 µs per request under uvloop, about a tenth of the whole
HTTP protocol's cost per request (bench/http_layer.py --micro). LeanHttpProtocol instead
notes when a connection went idle; this ticker, running while the loop has connections,
closes those idle past the timeout. A connection closes between `timeout` and `timeout` +
one tick after its last response (the tick is at most 1 s, and a quarter of short timeouts).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol


class Idle(Protocol):
    """A connection as the sweeper sees it."""

    idle_deadline: float | None

    def timeout_keep_alive_handler(self) -> None: ...


class KeepAliveSweeper:
    __slots__ = ("connections", "loop", "tick_s", "ticker")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connections: set[Idle] = set()
        self.ticker: asyncio.Task[None] | None = None
        self.tick_s = 1.0

    def add(self, connection: Idle, timeout_s: float) -> None:
        self.connections.add(connection)
        self.tick_s = min(self.tick_s, max(timeout_s / 4, 0.01))
        if self.ticker is None:
            self.ticker = self.loop.create_task(self._tick())

    def discard(self, connection: Idle) -> None:
        self.connections.discard(connection)

    async def _tick(self) -> None:
        try:
            while self.connections:
                await asyncio.sleep(self.tick_s)
                now = self.loop.time()
                for connection in list(self.connections):
                    deadline = connection.idle_deadline
                    if deadline is not None and deadline <= now:
                        connection.idle_deadline = None
                        connection.timeout_keep_alive_handler()
        finally:
            self.ticker = None


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, KeepAliveSweeper] = (
    weakref.WeakKeyDictionary()
)


def sweeper(loop: asyncio.AbstractEventLoop) -> KeepAliveSweeper:
    found = _SWEEPERS.get(loop)
    if found is None:
        found = _SWEEPERS[loop] = KeepAliveSweeper(loop)
    return found
