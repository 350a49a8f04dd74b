"""Lease mode: each replica admits limited requests in process against its slices.

A slice (routing/lease.py) is this replica's share of one key's RPM/TPM tokens, concurrency
slots and monthly budget, taken from Redis by one atomic script (gateway/limits/lease_lua.py).
A request takes its share from the slice with no await. Slices are synced in the background:
topped up when one falls below half its wanted size, re-armed before their Redis deadline,
their settled spend pushed to Redis within `_PUSH_DELAY_S`, and returned when the key has been
idle for `idle_s` and on shutdown. Only a request that finds its slice short waits for a sync
(with what it needs added to the ask); if Redis has nothing more, it gets the usual refusal.

Pushes are idempotent: a sync whose reply was lost after Redis applied it (a timeout, a
reset connection) leaves its spend unpushed here, and the next sync sends it again inside the
month's cumulative total, of which Redis adds only what it has not applied for this replica.

A replica killed with a slice unreturned: its slots and budget entry expire in Redis after
`ttl_ms`; its RPM/TPM tokens were taken and the buckets refill as usual. Spend it settled but
had not pushed is missing from Redis's `spent` until the reconciler brings it back from the
ledger: that, at most the sum of the slices outstanding (`farebox_limits_lease_outstanding`),
is lease mode's overspend bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge

from gateway.limits.lease_lua import LEASE
from gateway.limits.lua import limit_keys
from gateway.runtime.redis import RedisClient
from gateway.runtime.redis_health import REDIS_ERRORS
from routing import lease, lease_headers
from routing.lease import Grant, Sizing, Slice, Wants
from routing.quota import Ask, Limits, Verdict

log = logging.getLogger("farebox.limits")

OUTSTANDING = Gauge(
    "farebox_limits_lease_outstanding",
    "Held in lease slices by this replica (requests, tokens, slots, nano-USD): what lease "
    "mode can overspend by if the replicas holding them die",
    ["kind"],
    multiprocess_mode="livesum",
)
SYNCS = Counter(
    "farebox_limits_lease_syncs_total",
    "Lease slice syncs with Redis: top-ups, returns (idle or shutdown)",
    ["kind"],
)
WAITS = Counter(
    "farebox_limits_lease_waits_total",
    "Requests that found their slice short (of the limit named): they wait for a sync, or "
    "meet the failure policy while Redis is away",
    ["check"],
)
EXPIRED = Counter(
    "farebox_limits_lease_expired_total",
    "Slices of other replicas found expired in Redis (replicas that died holding them)",
)
_KINDS = ("requests", "tokens", "concurrency", "budget_nano")

# The background loop's period, and how long settled spend waits before it is pushed (the
# settlements of that moment share one sync).
_TICK_S = 0.2
# Syncs a request short of its slice waits for before it is refused all the same.
_MAX_SYNCS_WAITED = 4
_PUSH_DELAY_S = 0.05
# Unseeded month budget: seeded from the ledger, then the sync is sent once more.
Seed = Callable[[str, str, str], Awaitable[None]]


class Leases:
    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str,
        seed: Seed,
        ttl_ms: int,
        idle_s: float,
        budget_ttl_s: int,
        clock_ms: Callable[[], int],
        on_redis_error: Callable[[BaseException], None],
        redis_up: Callable[[], bool],
    ) -> None:
        self._script = redis.register_script(LEASE)
        self._prefix = prefix
        self._seed = seed
        self._ttl_ms = ttl_ms
        self._idle_ms = int(idle_s * 1000)
        self._budget_ttl_s = budget_ttl_s
        self._now_ms = clock_ms
        self._on_error = on_redis_error
        self._redis_up = redis_up
        self._holder = f"slice-{os.urandom(6).hex()}"
        self._slices: dict[str, Slice] = {}
        # Idle keys' slices are dropped, but Redis keeps what this holder pushed for them
        # this month (`pushed:<holder>`): a key's next slice goes on from that total, or its
        # pushes would count nothing until they passed it. key name -> (month, total).
        self._pushed_before: dict[str, tuple[str, int]] = {}
        self._month = ""
        self._syncing: dict[str, asyncio.Future[None]] = {}
        self._push_due: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- request path -------------------------------------------------------------------

    def slice_for(self, key_name: str, limits: Limits, month: str, sizing: Sizing) -> Slice:
        s = self._slices.get(key_name)
        if s is None:
            s = self._slices[key_name] = Slice(key_name, limits, month, sizing=sizing)
            if month != self._month:  # earlier months' totals are of no use any more
                self._month = month
                self._pushed_before = {
                    k: v for k, v in self._pushed_before.items() if v[0] == month
                }
            before = self._pushed_before.pop(key_name, None)
            if before is not None and before[0] == month:
                s.pushed_nano = before[1]
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._loop())
        elif s.limits != limits:
            s.limits = limits  # the key's limits changed: the next sync follows them
        if s.month != month:
            s.month = month
            lease.forget_redis_part(s)
        return s

    def take(self, s: Slice, ask: Ask) -> Verdict | None:
        """Admit in process, or None when the slice is short (then `take_after_sync`)."""
        short = lease.take(s, s.limits, ask, self._now_ms())
        if short is not None:
            WAITS.labels(short).inc()
            return None
        if s.key_name not in self._syncing and lease.low(s, s.limits) and self._redis_up():
            self._start_sync(s)
        return lease_headers.admitted_verdict(s, s.limits)

    async def take_after_sync(self, s: Slice, ask: Ask) -> Verdict:
        """Wait for a sync that asked for this request's share too, then admit or refuse.
        Raises Redis's errors (the caller applies `on_redis_failure`)."""
        limits = s.limits
        lease.add_pending(s, ask)
        counted_from = s.syncs_started
        try:
            short: str | None = None
            for _ in range(_MAX_SYNCS_WAITED):
                flight = self._syncing.get(s.key_name)
                # Done but not yet forgotten (its callback runs on the next loop step):
                # awaiting it would not yield, and the loop would spin on it.
                if flight is None or flight.done():
                    flight = self._start_sync(s)
                await asyncio.shield(flight)
                short = lease.take(s, limits, ask, self._now_ms())
                if short is None:
                    return lease_headers.admitted_verdict(s, limits)
                # Refused only once a sync that counted this request found Redis short:
                # a sync started before it, or one whose grant others took first, is not
                # an answer.
                if s.syncs_done > counted_from and s.starved:
                    break
            assert short is not None
            return lease_headers.refused_verdict(s, limits, ask, short)
        finally:
            lease.drop_pending(s, ask)

    def settle(self, s: Slice, limits: Limits, ask: Ask, used_tokens: int, cost: int) -> None:
        lease.settle(s, limits, ask, used_tokens, cost)
        if cost > 0:
            self._push_soon(s)

    def _push_soon(self, s: Slice) -> None:
        """Settled spend goes to Redis within `_PUSH_DELAY_S` (one sync for all the
        settlements meanwhile), as exact mode's settlements do: the reconciler reads a
        ledger row that Redis has not counted yet as Redis being behind."""
        if s.key_name in self._push_due or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # settled outside the loop: the upkeep tick pushes it
            return
        self._push_due.add(s.key_name)
        loop.call_later(_PUSH_DELAY_S, self._push, s)

    def _push(self, s: Slice) -> None:
        self._push_due.discard(s.key_name)
        if self._closed or not self._redis_up():
            return
        if s.key_name in self._syncing:
            return  # pushed again when that sync is done (see `_start_sync`)
        self._start_sync(s)

    # -- syncs --------------------------------------------------------------------------

    def _start_sync(self, s: Slice, wants: Wants | None = None) -> asyncio.Future[None]:
        flight = asyncio.ensure_future(self._sync(s, wants))
        self._syncing[s.key_name] = flight

        def done(f: asyncio.Future[None]) -> None:
            if self._syncing.get(s.key_name) is f:
                del self._syncing[s.key_name]
            if s.unpushed_nano > 0 and not f.cancelled() and f.exception() is None:
                self._push_soon(s)
            if not f.cancelled() and f.exception() is not None:
                exc = f.exception()
                if isinstance(exc, REDIS_ERRORS):
                    self._on_error(exc)
                else:
                    log.error("a lease sync failed", exc_info=exc)

        flight.add_done_callback(done)
        return flight

    async def _sync(self, s: Slice, wants: Wants | None) -> None:
        """One round trip: give back the excess, push settled spend, ask for what is missing
        (`wants` None: sized to recent demand; all zero: return the slice)."""
        limits = s.limits
        now = self._now_ms()
        returning = wants is not None and wants == Wants()
        lease.update_rates(s, now)
        if wants is None:
            wants = s.wanted = lease.wants(s, limits, s.sizing)
        plan = lease.plan_sync(s, limits, wants)
        keys = limit_keys(self._prefix, s.key_name, s.month)
        args: list[Any] = [
            limits.rpm or 0,
            limits.tpm or 0,
            limits.max_concurrency or 0,
            -1 if limits.budget_nano is None else limits.budget_nano,
            self._holder,
            self._ttl_ms,
            self._budget_ttl_s,
            plan.give_requests,
            plan.want_requests,
            plan.give_tokens,
            plan.want_tokens,
            s.member_slots,
            plan.keep_slots,
            plan.want_slots,
            s.member_nano,
            plan.push_nano,
            plan.keep_nano,
            plan.want_nano,
            plan.push_total_nano,
        ]
        try:
            out = await self._script(keys=list(keys), args=args)
            if int(out[0]) == 0:
                await self._seed(s.key_name, s.month, keys[3])
                out = await self._script(keys=list(keys), args=args)
        except BaseException:
            # No answer (a timeout may come after Redis applied it): the next sync re-sends
            # the spend as part of its cumulative total, which Redis applies only once.
            lease.sync_lost(s, plan)
            raise
        values = [int(v) for v in out]
        if values[0] == 0:
            raise RuntimeError(f"the {s.month} budget of a key was not seeded")
        grant = Grant(*values[1:9])
        lease.apply_grant(s, limits, plan, grant)
        if values[9]:
            EXPIRED.inc(values[9])
        SYNCS.labels("return" if returning else "top_up").inc()

    # -- background ---------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(_TICK_S)
            try:
                self._tick()
            except Exception:  # never let the loop die: slices would stop being re-armed
                log.exception("lease upkeep failed")

    def _tick(self) -> None:
        now = self._now_ms()
        up = self._redis_up()
        totals = [0, 0, 0, 0]
        for key_name, s in list(self._slices.items()):
            for i, amount in enumerate(lease.outstanding(s)):
                totals[i] += amount
            if key_name in self._syncing or not up:
                continue
            idle = now - s.used_ms >= self._idle_ms and s.inflight == 0 and s.reserved_nano == 0
            if idle:
                if s.holds_anything:
                    self._start_sync(s, Wants())
                elif s.pending_requests == 0:
                    del self._slices[key_name]
                    if s.pushed_nano:
                        self._pushed_before[key_name] = (s.month, s.pushed_nano)
            elif (
                now - s.synced_ms >= self._ttl_ms // 3 or s.unpushed_nano or lease.low(s, s.limits)
            ):
                self._start_sync(s)
        for kind, total in zip(_KINDS, totals, strict=True):
            OUTSTANDING.labels(kind).set(total)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Shutdown: stop the upkeep and hand every slice back (bounded: a frozen Redis lets
        them expire instead)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = list(self._syncing.values())
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*pending, return_exceptions=True)
                returns = [
                    self._start_sync(s, Wants()) for s in self._slices.values() if s.holds_anything
                ]
                await asyncio.gather(*returns, return_exceptions=True)
        for kind in _KINDS:
            OUTSTANDING.labels(kind).set(0)
