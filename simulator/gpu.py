"""A dedicated GPU with a fixed number of slots: the ``slots=N`` directive.

A model requested with ``slots=N`` (``"sim-gpu::slots=16,latency=50,tps=200"``) runs on one
GPU per *base* model (the name before ``::``, so every directive variant of a model shares
its GPU, as live and batch traffic to one served model do).  A request holds a slot for its
whole service time — from before its ``latency`` (the base time) through its generation at
``tps`` (the per-output-token time, non-stream and stream) until the handler returns.  A
request that finds every slot busy waits in a FIFO queue; a released slot passes straight
to the oldest waiter, so an over-filled GPU shows up as queue wait on top of the service
time, never as a rejection.  A waiter whose client goes away leaves the queue.

``N`` is the GPU's size; a request naming another ``N`` for the same base model resizes
it (growing admits waiters at once; shrinking lets the extra leases finish).

Counters, per base model, for ``GET /_stats`` under ``gpus`` (present once a GPU served)::

    {"slots": 16, "in_use": 3, "peak_in_use": 16, "waiting": 0, "peak_waiting": 4,
     "acquired": 812, "queued": 9, "busy_slot_seconds": 40.6, "window_s": 3.2,
     "utilization": 0.79, "clock": 12345.6,
     "queue_wait_ms": {"p50": 0.0, "p99": 12.5, "max": 20.1}}

``busy_slot_seconds`` integrates slots in use over time (leases still held count up to
now); ``utilization`` is that over ``slots × window_s`` since the window began (the GPU's
first use, or the last ``POST /_reset``).  ``clock`` is the simulator's monotonic time, so
a client can take the utilization of any window from two snapshots:
``Δbusy_slot_seconds / (slots × Δclock)``.  ``queue_wait_ms`` covers every acquisition in
the window (immediate ones as 0; the newest 200,000); ``queued`` counts those that waited.
``POST /_reset`` restarts the counters but keeps the leases and waiters in flight: a reset
between two measurement windows must not free slots that requests still hold.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["GpuPool", "Gpus", "holding"]

#: Queue waits kept for the percentiles (a window at 1,000 requests/s for 200 s).
_WAIT_SAMPLES = 200_000
#: The leases taken while one handler runs, released when it returns (see :func:`holding`).
_LEASES: ContextVar[list[GpuPool] | None] = ContextVar("simulator_gpu_leases", default=None)


class GpuPool:
    """One GPU: ``slots`` leases, a FIFO of waiters, and the counters of the window."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.in_use = 0
        self._waiters: deque[tuple[asyncio.Future[float], float]] = deque()
        self.reset_counters()

    def reset_counters(self) -> None:
        now = time.monotonic()
        self._since = now
        self._changed = now
        self._busy = 0.0
        self.peak_in_use = self.in_use
        self.peak_waiting = len(self._waiters)
        self.acquired = 0
        self.queued = 0
        self._waits: deque[float] = deque(maxlen=_WAIT_SAMPLES)

    def _tick(self, now: float) -> None:
        # Slot-seconds accrue piecewise: in_use was constant since the last change.
        self._busy += self.in_use * (now - self._changed)
        self._changed = now

    def resize(self, slots: int) -> None:
        self.slots = slots
        now = time.monotonic()
        self._drop_cancelled()
        while self._waiters and self.in_use < self.slots:
            self._tick(now)
            self.in_use += 1
            self.peak_in_use = max(self.peak_in_use, self.in_use)
            self._hand_over(now)
            self._drop_cancelled()

    async def acquire(self) -> None:
        """Take a slot, waiting FIFO behind earlier requests when none is free."""
        now = time.monotonic()
        self._drop_cancelled()
        if self.in_use < self.slots and not self._waiters:
            self._tick(now)
            self.in_use += 1
            self.peak_in_use = max(self.peak_in_use, self.in_use)
            self._record_wait(0.0)
            return
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        entry = (future, now)
        self._waiters.append(entry)
        self.peak_waiting = max(self.peak_waiting, len(self._waiters))
        try:
            await future
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif future.done() and not future.cancelled():
                # The slot was handed over as the client left: pass it on.
                self.release()
            raise

    def _drop_cancelled(self) -> None:
        # A waiter cancelled while queued leaves its entry until its task runs again; it
        # must not be handed a slot in between.
        while self._waiters and self._waiters[0][0].done():
            self._waiters.popleft()

    def _hand_over(self, now: float) -> None:
        """Give a slot that stays in use to the oldest waiter (the caller counted it)."""
        future, queued_at = self._waiters.popleft()
        self._record_wait(now - queued_at)
        self.queued += 1
        future.set_result(now)

    def _record_wait(self, seconds: float) -> None:
        self.acquired += 1
        self._waits.append(seconds)

    def release(self) -> None:
        now = time.monotonic()
        self._drop_cancelled()
        if self._waiters and self.in_use <= self.slots:
            self._hand_over(now)  # in_use unchanged: the slot changes hands
            return
        self._tick(now)
        self.in_use -= 1

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        busy = self._busy + self.in_use * (now - self._changed)
        window = now - self._since
        waits = sorted(self._waits)
        return {
            "slots": self.slots,
            "in_use": self.in_use,
            "peak_in_use": self.peak_in_use,
            "waiting": len(self._waiters),
            "peak_waiting": self.peak_waiting,
            "acquired": self.acquired,
            "queued": self.queued,
            "busy_slot_seconds": round(busy, 6),
            "window_s": round(window, 6),
            "utilization": round(busy / (self.slots * window), 6) if window > 0 else 0.0,
            "clock": round(now, 6),
            "queue_wait_ms": {
                "p50": _percentile(waits, 0.50),
                "p99": _percentile(waits, 0.99),
                "max": round(waits[-1] * 1000, 3) if waits else 0.0,
            },
        }


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))
    return round(ordered[rank] * 1000, 3)


class Gpus:
    """Every GPU the simulator plays, by base model."""

    def __init__(self) -> None:
        self._pools: dict[str, GpuPool] = {}

    async def acquire(self, base: str, slots: int) -> None:
        """Hold a slot of ``base``'s GPU until the running handler returns.

        Only inside :func:`holding` (every wire handler runs in one): the slot is released
        when it ends, whatever way the handler leaves.
        """
        leases = _LEASES.get()
        if leases is None:
            raise RuntimeError("a GPU slot can only be taken inside simulator.gpu.holding()")
        pool = self._pools.get(base)
        if pool is None:
            pool = self._pools[base] = GpuPool(slots)
        elif pool.slots != slots:
            pool.resize(slots)
        await pool.acquire()
        leases.append(pool)

    def reset(self) -> None:
        for pool in self._pools.values():
            pool.reset_counters()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {base: pool.snapshot() for base, pool in sorted(self._pools.items())}


@contextmanager
def holding() -> Iterator[None]:
    """Scope of one request: slots taken inside are released when it exits."""
    leases: list[GpuPool] = []
    token = _LEASES.set(leases)
    try:
        yield
    finally:
        _LEASES.reset(token)
        for pool in leases:
            pool.release()
