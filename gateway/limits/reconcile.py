"""Bring each key's month spend in Redis back to the ledger's, in the background.

Redis counts spend as requests settle; the ledger (Postgres) is the truth. They drift: a
settlement lost to a frozen Redis, one counted twice after a timeout that did reach it (exact
mode: lease-mode pushes are idempotent, gateway/limits/lease_lua.py), spend a killed replica
settled in its slice but never pushed, an attempt a killed replica never settled (it reaches
the ledger at restart as a `gateway_crashed` row). Nothing on a request's path corrects
that, so every `interval_s` one replica — whoever holds a Redis lock — compares, per budget
counter of the month, the ledger's sum with Redis's `spent`, and adds the difference to Redis
(HINCRBY, so settlements that land meanwhile are not overwritten). The same pass sets each
`reserved` to the sum of the reservations still held (expired ones dropped), which heals
counters left by older versions.

Rows still on their way make the two disagree for a moment, so only a difference that
persists is corrected. A request settles in Redis when its ledger row is handed to the
writer, a few ms before the row is committed, and the ledger is read before Redis: rows in
flight can only make Redis look *ahead*. Hence:
- Redis behind (ledger − Redis > 0) at two checks in a row: add the smaller of the two
  shortfalls — in-flight rows only shrink a shortfall, so this never over-corrects;
- Redis ahead at two checks in a row by exactly the same amount (nothing settled or landed
  in between): lower it by that. A busy key's excess waits for a quiet interval, because
  there an excess cannot be told from rows still in flight.
Corrections are counted in `farebox_limits_spend_corrections_total` and
`farebox_limits_spend_corrected_usd_total` (by direction) and logged with the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client import Counter

from gateway.limits.lua import LOCK, REPAIR
from gateway.runtime.redis import RedisClient
from routing import quota

log = logging.getLogger("farebox.limits")

CORRECTIONS = Counter(
    "farebox_limits_spend_corrections_total",
    "Budget counters in Redis set back to the ledger's month spend",
    ["direction"],
)
CORRECTED_USD = Counter(
    "farebox_limits_spend_corrected_usd_total",
    "USD added to (up) or taken from (down) budget counters in Redis to match the ledger",
    ["direction"],
)

SpendSource = Callable[[str, datetime], Awaitable[Decimal]]

# Differences below this (a micro-dollar) are rounding, not drift.
_TOLERANCE_NANO = 1_000
# One ledger read may take this long before the pass gives up (database trouble).
_LEDGER_TIMEOUT_S = 10.0


def month_of(now: datetime) -> str:
    return now.strftime("%Y-%m")


def month_start(month: str) -> datetime:
    year, mon = month.split("-")
    return datetime(int(year), int(mon), 1, tzinfo=UTC)


def correction(now_nano: int, before_nano: int | None) -> int:
    """What to add to Redis's spend, given ledger − Redis now and at the previous check."""
    if before_nano is None or abs(now_nano) < _TOLERANCE_NANO:
        return 0
    if now_nano > 0 and before_nano > 0:
        return min(now_nano, before_nano)
    if now_nano < 0 and now_nano == before_nano:
        return now_nano
    return 0


class Reconciler:
    def __init__(
        self,
        redis: RedisClient,
        spend: SpendSource,
        *,
        prefix: str,
        interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._redis = redis
        self._spend = spend
        self._prefix = prefix
        self._interval_s = interval_s
        self._clock = clock
        self._holder = uuid.uuid4().hex
        self._repair = redis.register_script(REPAIR)
        self._lock = redis.register_script(LOCK)
        self._task: asyncio.Task[None] | None = None
        self._month = ""
        # budget key -> ledger − Redis left after the previous check (nano-USD).
        self._previous: dict[str, int] = {}

    def ensure_started(self) -> None:
        """Started by the first limited request, so a replica that never sees one (or a
        CLI process) runs no loop; one attribute check per request otherwise."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or database trouble: try again next interval
                log.warning("budget reconciliation skipped (%s: %s)", type(exc).__name__, exc)

    async def run_once(self) -> int:
        """One pass if this replica holds the lock; returns how many counters it corrected."""
        lock_ms = int(3 * self._interval_s * 1000) + 1000
        if not await self._lock(
            keys=[f"{self._prefix}:lim-reconcile"], args=[self._holder, lock_ms]
        ):
            self._previous.clear()  # another replica reconciles; its view is not ours
            return 0
        month = month_of(datetime.fromtimestamp(self._clock(), UTC))
        if month != self._month:
            self._month, self._previous = month, {}
        head = f"{{{self._prefix}:lim:"
        tail = f"}}:budget:{month}"
        corrected = 0
        seen: dict[str, int] = {}
        async for raw in self._redis.scan_iter(match=f"{head}*{tail}", count=500):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            key_name = key[len(head) : -len(tail)]
            async with asyncio.timeout(_LEDGER_TIMEOUT_S):
                ledger = quota.to_nano(await self._spend(key_name, month_start(month)))
            # Read after the ledger: a row can only reach the ledger after it settled here.
            spent = await self._redis.hget(key, "spent")
            if spent is None:
                continue
            diff = ledger - int(spent)
            delta = correction(diff, self._previous.get(key))
            reservations = f"{head}{key_name}}}:resv:{month}"
            await self._repair(keys=[key, reservations], args=[delta])
            seen[key] = diff - delta
            if delta:
                corrected += 1
                self._report(key_name, month, delta)
        self._previous = seen
        return corrected

    def _report(self, key_name: str, month: str, delta: int) -> None:
        direction = "up" if delta > 0 else "down"
        CORRECTIONS.labels(direction).inc()
        CORRECTED_USD.labels(direction).inc(float(quota.from_nano(abs(delta))))
        log.warning(
            "key %s: %s budget counter in Redis was $%s %s the ledger; corrected",
            key_name,
            month,
            quota.from_nano(abs(delta)),
            "below" if delta > 0 else "above",
        )
