"""How many of a batch's lines may be in flight right now, per path.

- serverless: a fixed, low number (`batch.serverless_concurrency`);
- dedicated fill: what live traffic leaves free on the GPU — its `max_concurrency`, minus
  live requests in flight (this replica's and, through Redis, the fleet's; held at their
  peak of the last `batch.fill_hold_s`), minus this runner's own lines in flight, minus a
  headroom kept for live bursts. Re-read before each line starts, so the batch stops taking
  slots the moment live traffic comes back (lines already running finish; a GPU slot cannot
  be taken back mid-generation).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from routing.live import DeploymentLoad


class Slots(Protocol):
    def free(self, running: int) -> int:
        """Lines that may start now, given `running` of this batch's lines in flight."""
        ...


class FixedSlots:
    def __init__(self, size: int) -> None:
        self.size = size

    def free(self, running: int) -> int:
        return max(0, self.size - running)


class FillSlots:
    """Free GPU slots for batch lines: max_concurrency − headroom − live − batch in flight,
    where `live` is the highest live in-flight count seen in the last `hold_s`. Live
    traffic is bursty even at a steady rate: closed-loop clients leave gaps between their
    requests, and a line started in such a gap would hold, for its whole generation, a slot
    the next live request needs (measured: a 5,000-line fill reading the instantaneous count
    made 526 live requests wait for a slot; bench/BATCH.md)."""

    def __init__(
        self,
        max_concurrency: int,
        headroom: float,
        live_load: Callable[[], DeploymentLoad | None],
        batch_in_flight: Callable[[], int],
        hold_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrency = max_concurrency
        # At least one slot of headroom whenever any is asked for.
        self.headroom = math.ceil(max_concurrency * headroom) if headroom > 0 else 0
        self._live_load = live_load
        self._batch_in_flight = batch_in_flight
        self._hold_s = hold_s
        self._clock = clock
        # (when, count), counts decreasing: the front is the window's maximum.
        self._peaks: deque[tuple[float, int]] = deque()

    def live(self) -> int:
        """Live requests in flight on the deployment, held at their recent peak."""
        load = self._live_load()
        now_count = 0 if load is None else load.in_flight + load.remote_in_flight
        now = self._clock()
        peaks = self._peaks
        while peaks and peaks[-1][1] <= now_count:
            peaks.pop()
        peaks.append((now, now_count))
        while peaks[0][0] < now - self._hold_s:
            peaks.popleft()
        return peaks[0][1]

    def free(self, running: int) -> int:
        live = self.live()
        # Every batch line this process runs on the GPU (other batches' too).
        ours = max(running, self._batch_in_flight())
        return max(0, self.max_concurrency - self.headroom - live - ours)


class BatchTracker:
    """The batch service's tracker: counts batch lines in flight per deployment (kept apart
    from live routing's load, which must only see live traffic)."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}

    def started(self, deployment: str, shape: object) -> None:
        self.in_flight[deployment] = self.in_flight.get(deployment, 0) + 1

    def ended(self, deployment: str) -> None:
        self.in_flight[deployment] = self.in_flight.get(deployment, 1) - 1

    def succeeded(self, *args: object, **kwargs: object) -> None:
        return None

    def failed(self, *args: object, **kwargs: object) -> None:
        return None
