"""Whether the ledger database answers, for /readyz: a background ping, read from memory.

The ledger writer only learns the database is down when a write fails, and with no traffic
nothing is written; a readiness probe that waited on the database itself would hang (and
time out, and flap) exactly when the database does. So a task pings every `interval_s`,
each ping bounded by `timeout_s` (a stopped or frozen server counts as down after that
long), and /readyz reports the last result and its age.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.runtime.background import within

log = logging.getLogger("farebox")


class DatabaseProbe:
    def __init__(self, interval_s: float = 5.0, timeout_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        # None until the first ping has answered (or timed out).
        self.up: bool | None = None
        self.error: str | None = None
        self.checked_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, ping: Callable[[], Awaitable[None]]) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(ping), name="db-probe")

    async def check(self, ping: Callable[[], Awaitable[None]]) -> bool:
        """One ping; records and returns whether the database answered in time."""
        try:
            await within(ping(), self.timeout_s)
        except Exception as exc:  # any failure to answer is "down", whatever the driver says
            error = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            if self.up is not False:
                log.error("ledger database ping failed (%s): /readyz reports it down", error)
            self.up, self.error = False, error
        else:
            if self.up is False:
                log.warning("ledger database answers again")
            self.up, self.error = True, None
        self.checked_at = time.monotonic()
        return self.up

    async def _run(self, ping: Callable[[], Awaitable[None]]) -> None:
        while True:
            await self.check(ping)
            await asyncio.sleep(self.interval_s)

    def report(self) -> dict[str, Any]:
        checked = self.checked_at
        return {
            "database_checked_s_ago": (
                None if checked is None else round(time.monotonic() - checked, 1)
            ),
            "database_error": self.error,
        }

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
