"""Gate pass rates as the router sees them: rebuilt from the ledger, updated live.

Every gated attempt is in the ledger with its outcome, so the ledger is the store that
replicas and restarts share: every `refresh_s` this replica rebuilds its posteriors from
the last `window_days` there, and adds its own outcomes as they happen in between. No
request waits for any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from routing.quality_stats import BAND_EDGES, BAND_NAMES, Posterior, QualityStats, band_of

if TYPE_CHECKING:  # SQLAlchemy: a serving worker on Postgres passes ServingLedger
    from gateway.ledger.repository import LedgerRepository

log = logging.getLogger("farebox.quality")


class QualityLive:
    def __init__(
        self,
        repository: LedgerRepository | None,
        refresh_s: float = 60.0,
        window_days: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stats = QualityStats()
        self._repository = repository
        self._refresh_s = refresh_s
        self._window = timedelta(days=window_days)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.refreshed_at: float | None = None

    def observe(self, route: str, deployment: str, input_tokens: int, passed: bool) -> None:
        key = (route, deployment, band_of(input_tokens))
        self.stats.observe(key, passed, self._clock())

    def posterior(self, route: str, deployment: str, input_tokens: int) -> Posterior:
        return self.stats.posterior((route, deployment, band_of(input_tokens)), self._clock())

    async def start(self) -> None:
        if self._repository is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="farebox-quality-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the ledger may be down: keep the live counts
                log.warning("gate statistics not refreshed from the ledger: %s", exc)
            await asyncio.sleep(self._refresh_s)

    async def refresh(self) -> None:
        assert self._repository is not None
        now = self._clock()
        since = datetime.fromtimestamp(now, UTC) - self._window
        rows = await self._repository.gate_history(since, BAND_EDGES, BAND_NAMES)
        # A day's outcomes are dated to its middle: close enough for a week's half-life.
        self.stats.replace_all(
            (
                ((route, dep, band), passed, day.timestamp() + 43_200, count)
                for route, dep, band, passed, day, count in rows
            ),
            now,
        )
        self.refreshed_at = now
