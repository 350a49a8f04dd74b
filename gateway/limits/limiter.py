"""Per-key limits that hold across replicas: RPM, TPM, concurrency and monthly budgets.

With a Redis URL every replica admits through one atomic Lua script (gateway/limits/lua.py);
without one, the same rules run in process (routing/quota.py). A request reserves its
estimated tokens and worst-case cost before any upstream call and settles to what it used
when its ledger row is written, so N replicas can overspend a budget by at most the
reservations in flight.

Redis trouble is a policy, per check (`limits.on_redis_failure`): `fail_open` serves and
counts in process (and says so in a metric), `fail_closed` answers 503. While Redis is down
no request waits on it: a probe re-checks it every `probe_interval_ms` and enforcement moves
back as soon as it answers; spend settled meanwhile is added to Redis then.

In lease mode (`limits.mode: lease`, the default; gateway/limits/lease.py) a request is
admitted in process against this replica's slice of its key's limits, synced with Redis in
the background; `exact` keeps one Redis check per request. Per key (by name, id or team),
`key_modes` overrides the mode and the slice cap.

Nothing stays taken when a request never settles (a killed replica, a frozen Redis): its
concurrency lease and budget reservation expire after `hold_ms` (see `_hold_ms`), and a
background reconciler (gateway/limits/reconcile.py) brings each key's spend in Redis back
to the ledger's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from gateway.keys.auth import Principal
from gateway.ledger.db_errors import database_errors
from gateway.ledger_rows import RequestRow
from gateway.limits.answers import (
    ask_for,
    enabled_checks,
    limits_of,
    limits_unavailable,
    rate_headers,
    refusal,
    too_large,
)
from gateway.limits.lease import Leases
from gateway.limits.lua import ADD_SPEND, BATCH, SEED, batch_item, limit_keys, verdict_of
from gateway.limits.reconcile import Reconciler, SpendSource, month_of, month_start
from gateway.limits.redis_batch import RedisBatch
from gateway.runtime.redis import RedisClient, redis_client
from gateway.runtime.redis_health import REDIS_ERRORS, RedisHealth
from routing import quota
from routing.lease import Sizing, Slice
from routing.quota import BUDGET, CHECKS, TPM, Ask, KeyState, Limits, Verdict

# Re-exported: the API edge imports these from here.
__all__ = ["Admission", "Limiter", "ask_for", "limits_unavailable", "rate_headers", "refusal"]

log = logging.getLogger("farebox.limits")

FAIL_OPEN = "fail_open"
FAIL_CLOSED = "fail_closed"
LEASE = "lease"
EXACT = "exact"

# The least healthy worker's view (multiprocess mode with several workers).
REDIS_UP = Gauge(
    "farebox_limits_redis_up",
    "1 while the shared limit store answers",
    multiprocess_mode="livemin",
)
DEGRADED = Counter(
    "farebox_limits_degraded_total",
    "Limit checks answered in process because Redis was unreachable",
    ["check"],
)
REFUSED = Counter("farebox_limits_refused_total", "Requests refused by a key limit", ["check"])
# No key label: virtual keys are unbounded; the warning log names the key.
BUDGET_ALERTS = Counter(
    "farebox_budget_alerts_total", "Keys that crossed their soft budget threshold"
)

# How long a lease and a reservation outlive their request's deadline (route total timeout)
# by default: time for the ledger row to be recorded and the settlement to reach Redis.
_HOLD_GRACE_MS = 60_000
# With an explicit `limits.reservation_ttl_s`, still never shorter than the deadline + this.
_HOLD_MIN_GRACE_MS = 1_000
# For an ask that names no deadline.
_DEFAULT_HOLD_MS = 15 * 60 * 1000
# A lease slice's deadline in Redis (re-armed at a third of it while the replica lives)
# unless `limits.reservation_ttl_s` says otherwise.
_LEASE_TTL_MS = 15_000
# Budget counters live a little longer than their month.
_BUDGET_TTL_S = 40 * 24 * 3600
# Principals whose limits are remembered (cleared when full: keys change rarely).
_LIMITS_SEEN_MAX = 10_000
_LEASE_PREFIX = os.urandom(4).hex()
_LEASE_IDS = itertools.count(1)


@dataclass(slots=True)
class Admission:
    """One admitted request's reservation; `settle` hands it back exactly once."""

    limiter: Limiter
    principal: Principal
    limits: Limits
    ask: Ask
    lease: str
    month: str
    verdict: Verdict
    # Checks admitted in process (Redis was away for them); the rest went through Redis.
    local: frozenset[str] = field(default_factory=frozenset)
    # Lease mode: the slice it was admitted against (settles there, not in Redis).
    slice: Slice | None = None
    settled: bool = False

    def settle(self, row: RequestRow | None) -> None:
        if self.settled:
            return
        self.settled = True
        if row is None:
            used, cost = 0, 0
        else:
            used = (
                row.input_uncached_tokens
                + row.cached_read_tokens
                + row.cache_write_tokens
                + row.output_tokens
            )
            cost = quota.to_nano(row.cost_usd)
        self.limiter.settle(self, used, cost)


class Limiter:
    def __init__(
        self,
        redis_url: str | None,
        *,
        policies: dict[str, str] | None = None,
        spend_source: SpendSource | None = None,
        key_prefix: str = "farebox",
        probe_interval_s: float = 0.5,
        timeout_s: float = 1.0,
        reservation_ttl_s: float | None = None,
        reconcile_interval_s: float = 60.0,
        mode: str = EXACT,
        lease_sizing: Sizing | None = None,
        lease_idle_s: float = 5.0,
        key_modes: dict[str, tuple[str, Sizing]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        policies = dict(policies or {})
        default = policies.pop("default", FAIL_OPEN)
        self.policies = {check: policies.get(check, default) for check in CHECKS}
        self._spend = spend_source
        self._prefix = key_prefix
        self._probe_s = probe_interval_s
        self._reservation_ttl_ms = (
            None if reservation_ttl_s is None else int(reservation_ttl_s * 1000)
        )
        self._clock = clock
        self._reconciler: Reconciler | None = None
        self._local: dict[str, KeyState] = {}
        self._alerted: set[tuple[str, str]] = set()
        # Spend settled in process while Redis was away, added to Redis once it is back.
        self._owed: dict[tuple[str, str], int] = {}
        self._seeding: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._redis: RedisClient | None = None
        self._health: RedisHealth | None = None
        self._leases: Leases | None = None
        self._mode = mode
        self._sizing = lease_sizing or Sizing()
        # key name, id or team -> (mode, sizing), looked up in that order.
        self._key_modes = dict(key_modes or {})
        self._month_now = ""
        # id(principal) -> (that principal, its limits); the principal is kept so the id
        # cannot be reused by another object while the entry lives.
        self._limits_seen: dict[int, tuple[Principal, Limits]] = {}
        self._month_starts = self._month_ends = 0.0
        if redis_url:
            self._redis = redis_client(redis_url, timeout_s=timeout_s)
            self._seed_script = self._redis.register_script(SEED)
            self._add_script = self._redis.register_script(ADD_SPEND)
            # Admissions and settlements of concurrent requests share round trips.
            self._batch = RedisBatch(self._redis, BATCH)
            # Spend settled in process meanwhile goes to Redis before it counts as back.
            self._health = RedisHealth(
                self._redis,
                what="limit store",
                gauge=REDIS_UP,
                probe_interval_s=probe_interval_s,
                on_recover=self._pay_owed,
            )
            if spend_source is not None:
                self._reconciler = Reconciler(
                    self._redis,
                    spend_source,
                    prefix=key_prefix,
                    interval_s=reconcile_interval_s,
                    clock=clock,
                )
            if mode == LEASE or any(m == LEASE for m, _ in self._key_modes.values()):
                ttl_ms = (
                    _LEASE_TTL_MS
                    if reservation_ttl_s is None
                    else max(1000, int(reservation_ttl_s * 1000))
                )
                self._leases = Leases(
                    self._redis,
                    prefix=key_prefix,
                    seed=self._seed,
                    ttl_ms=ttl_ms,
                    idle_s=lease_idle_s,
                    budget_ttl_s=_BUDGET_TTL_S,
                    clock_ms=self._now_ms,
                    on_redis_error=self._went_down,
                    redis_up=lambda: self.redis_up,
                )
        else:
            REDIS_UP.set(0)

    @property
    def redis_up(self) -> bool:
        return self._health is not None and self._health.up

    async def flush(self) -> None:
        """Wait for settlements still on their way to Redis."""
        if self._health is not None:
            await self._batch.drain()
            await self._health.flush()

    async def close(self) -> None:
        if self._reconciler is not None:
            await self._reconciler.close()
        if self._leases is not None:
            await self._leases.close()
        if self._health is not None:
            await self._batch.drain()
            await self._health.close()

    # -- admission ----------------------------------------------------------------------

    async def admit(self, principal: Principal, ask: Ask) -> Admission:
        """Take `ask` from the key's limits or raise the 429 / 503 the client should see."""
        limits = self._limits_of(principal)
        if limits.tpm is not None:
            fitted = quota.fit_tpm(ask, limits.tpm)
            if fitted is None:
                REFUSED.labels(TPM).inc()
                raise too_large(principal, limits, ask)
            ask = fitted
        if self._reconciler is not None:
            self._reconciler.ensure_started()
        month = self._month()
        verdict: Verdict | None = None
        sizing = self._lease_sizing(principal) if self._leases is not None else None
        if sizing is not None:
            assert self._leases is not None
            held = self._leases.slice_for(principal.key_name, limits, month, sizing)
            verdict = self._leases.take(held, ask)
            if verdict is None and self.redis_up:
                try:
                    verdict = await self._leases.take_after_sync(held, ask)
                except REDIS_ERRORS as exc:
                    self._went_down(exc)
            if verdict is not None:
                return self._admitted(principal, limits, ask, "", month, verdict, frozenset(), held)
        lease = f"{_LEASE_PREFIX}-{next(_LEASE_IDS)}"
        enabled = enabled_checks(limits)
        local: frozenset[str] = frozenset()
        if sizing is None and self._redis is not None and self.redis_up:
            try:
                verdict = await self._admit_redis(principal, limits, ask, lease, month)
            except REDIS_ERRORS as exc:
                self._went_down(exc)
        if verdict is None:
            if self._redis is not None:
                closed = sorted(c for c in enabled if self.policies[c] == FAIL_CLOSED)
                if closed:
                    raise limits_unavailable(closed)
                for check in enabled:
                    DEGRADED.labels(check).inc()
            local = enabled
            verdict = await self._admit_local(principal, limits, ask, lease, month, enabled)
        return self._admitted(principal, limits, ask, lease, month, verdict, local, None)

    def _admitted(
        self,
        principal: Principal,
        limits: Limits,
        ask: Ask,
        lease: str,
        month: str,
        verdict: Verdict,
        local: frozenset[str],
        held: Slice | None,
    ) -> Admission:
        if not verdict.allowed:
            assert verdict.refused_by is not None
            REFUSED.labels(verdict.refused_by).inc()
            raise refusal(principal, limits, ask, verdict)
        admission = Admission(self, principal, limits, ask, lease, month, verdict, local, held)
        self._check_soft_budget(principal, limits, verdict, month)
        return admission

    def _limits_of(self, principal: Principal) -> Limits:
        """The key's limits, built once per principal object (the key store hands out the
        same one until the key changes) rather than a Decimal conversion per request."""
        cached = self._limits_seen.get(id(principal))
        if cached is not None and cached[0] is principal:
            return cached[1]
        if len(self._limits_seen) >= _LIMITS_SEEN_MAX:
            self._limits_seen.clear()
        limits = limits_of(principal)
        self._limits_seen[id(principal)] = (principal, limits)
        return limits

    def _month(self) -> str:
        """This month (UTC), recomputed only when the clock leaves the one last computed."""
        now = self._clock()
        if not self._month_starts <= now < self._month_ends:
            start = datetime.fromtimestamp(now, UTC)
            self._month_now = month_of(start)
            first = datetime(start.year, start.month, 1, tzinfo=UTC)
            following = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
            self._month_starts = first.timestamp()
            self._month_ends = datetime(*following, 1, tzinfo=UTC).timestamp()
        return self._month_now

    def _lease_sizing(self, principal: Principal) -> Sizing | None:
        """The slice sizing of a key in lease mode; None when it is admitted exactly."""
        if self._key_modes:
            for name in (principal.key_name, principal.key_id, principal.team):
                found = self._key_modes.get(name) if name is not None else None
                if found is not None:
                    return found[1] if found[0] == LEASE else None
        return self._sizing if self._mode == LEASE else None

    async def _admit_redis(
        self, principal: Principal, limits: Limits, ask: Ask, lease: str, month: str
    ) -> Verdict:
        keys = self._keys(principal.key_name, month)
        args: list[str | int] = [
            limits.rpm or 0,
            limits.tpm or 0,
            ask.tokens,
            limits.max_concurrency or 0,
            lease,
            self._hold_ms(ask),
            -1 if limits.budget_nano is None else limits.budget_nano,
            ask.reserve_nano,
            _BUDGET_TTL_S,
        ]
        out = await self._admit_batched(principal, limits, ask, lease, month, keys, args)
        # Refused with code 5: this month's spend is not in Redis yet; seed it from the ledger.
        if out.startswith(b"0,5,"):
            await self._seed(principal.key_name, month, keys[3])
            out = await self._admit_batched(principal, limits, ask, lease, month, keys, args)
        return verdict_of(out)

    async def _seed(self, key_name: str, month: str, budget_key: str) -> None:
        """One ledger read and seed per key and month, however many requests ask at once
        (the first burst of a month would otherwise read the ledger once per request)."""
        flight = self._seeding.get((key_name, month))
        if flight is None:

            async def seed() -> None:
                try:
                    spent = await self._spent_from_ledger(key_name, month)
                    await self._seed_script(keys=[budget_key], args=[spent, _BUDGET_TTL_S])
                finally:
                    del self._seeding[(key_name, month)]

            flight = self._seeding[(key_name, month)] = asyncio.ensure_future(seed())
        await asyncio.shield(flight)

    def _admit_batched(
        self,
        principal: Principal,
        limits: Limits,
        ask: Ask,
        lease: str,
        month: str,
        keys: tuple[str, ...],
        args: list[str | int],
    ) -> asyncio.Future[bytes]:
        def orphaned(out: bytes) -> None:
            # The request was cancelled while its admission ran: hand the reservation back.
            verdict = verdict_of(out)
            if verdict.allowed:
                Admission(self, principal, limits, ask, lease, month, verdict).settle(None)

        return self._batch.call(keys, batch_item("A", args), on_orphan=orphaned)

    async def _admit_local(
        self,
        principal: Principal,
        limits: Limits,
        ask: Ask,
        lease: str,
        month: str,
        checks: frozenset[str],
    ) -> Verdict:
        state = self._local.get(principal.key_name)
        if state is None or (limits.budget_nano is not None and state.month != month):
            spent = 0
            if limits.budget_nano is not None:
                spent = await self._spent_from_ledger(principal.key_name, month)
            # Another request may have created it while we awaited the ledger.
            state = self._local.get(principal.key_name)
            if state is None or state.month != month:
                previous = state
                state = KeyState(spent_nano=spent, month=month)
                if previous is not None:
                    state.requests, state.tokens = previous.requests, previous.tokens
                    state.leases = previous.leases
                self._local[principal.key_name] = state
        return quota.admit(state, limits, ask, lease, self._hold_ms(ask), self._now_ms(), checks)

    def _hold_ms(self, ask: Ask) -> int:
        """How long a request's lease and reservation last unless settled first: past its
        route's total timeout (the longest it can run) by time for its ledger row and
        settlement; `limits.reservation_ttl_s` overrides that, but never below the
        deadline plus a second, so a reservation cannot expire under a live request."""
        if ask.hold_ms <= 0:
            return self._reservation_ttl_ms or _DEFAULT_HOLD_MS
        if self._reservation_ttl_ms is None:
            return ask.hold_ms + _HOLD_GRACE_MS
        return max(self._reservation_ttl_ms, ask.hold_ms + _HOLD_MIN_GRACE_MS)

    async def _spent_from_ledger(self, key_name: str, month: str) -> int:
        if self._spend is None:
            return 0
        try:
            return quota.to_nano(await self._spend(key_name, month_start(month)))
        except database_errors() as exc:
            # Budgets must not lock everyone out while the database is away; the ledger
            # spools meanwhile and the Redis counter carries the month once seeded.
            log.warning("could not read this month's spend for a key (%s)", type(exc).__name__)
            return 0

    # -- settlement ---------------------------------------------------------------------

    def settle(self, admission: Admission, used_tokens: int, cost_nano: int) -> None:
        """Never awaited by a request: Redis work runs in the background."""
        if admission.slice is not None:
            assert self._leases is not None
            self._leases.settle(
                admission.slice, admission.limits, admission.ask, used_tokens, cost_nano
            )
            return
        key = admission.principal.key_name
        state = self._local.get(key)
        if admission.local and state is not None:
            quota.settle(
                state,
                admission.limits,
                admission.ask,
                admission.lease,
                used_tokens,
                cost_nano,
                self._now_ms(),
                admission.local,
            )
            if BUDGET in admission.local and cost_nano > 0:
                owed = (key, admission.month)
                self._owed[owed] = self._owed.get(owed, 0) + cost_nano
        if self._redis is None or admission.local == enabled_checks(admission.limits):
            return
        self._settle_redis(admission, used_tokens, cost_nano)

    def _settle_redis(self, admission: Admission, used_tokens: int, cost_nano: int) -> None:
        limits = admission.limits
        keys = self._keys(admission.principal.key_name, admission.month)
        args: list[str | int] = [
            limits.tpm or 0,
            admission.ask.tokens,
            used_tokens,
            admission.lease if limits.max_concurrency else "",
            admission.ask.reserve_nano,
            cost_nano,
            "1" if limits.budget_nano is not None else "0",
            admission.lease,
        ]

        def settled(future: asyncio.Future[Any]) -> None:
            exc = None if future.cancelled() else future.exception()
            if exc is None:
                return
            if not isinstance(exc, REDIS_ERRORS):
                log.error("settling a key's limits failed", exc_info=exc)
                return
            # The reservation stays until it expires; the spend is owed.
            self._went_down(exc)
            if limits.budget_nano is not None and cost_nano > 0:
                owed = (admission.principal.key_name, admission.month)
                self._owed[owed] = self._owed.get(owed, 0) + cost_nano

        # No task per request, and no round trip of its own under load: it rides along with
        # the next admission (or goes within 10 ms).
        self._batch.call(keys, batch_item("S", args), urgent=False).add_done_callback(settled)

    # -- Redis health -------------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        assert self._health is not None
        policies = ", ".join(f"{c} {p}" for c, p in self.policies.items())
        self._health.went_down(exc, f": {policies}")

    async def _pay_owed(self) -> None:
        for (key, month), nano in list(self._owed.items()):
            await self._add_script(keys=[self._keys(key, month)[3]], args=[nano])
            del self._owed[(key, month)]

    # -- helpers ------------------------------------------------------------------------

    def _keys(self, key_name: str, month: str) -> tuple[str, ...]:
        return limit_keys(self._prefix, key_name, month)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _check_soft_budget(
        self, principal: Principal, limits: Limits, verdict: Verdict, month: str
    ) -> None:
        ratio = principal.soft_budget_ratio
        if ratio is None or limits.budget_nano is None or verdict.budget_left_nano is None:
            return
        used = limits.budget_nano - verdict.budget_left_nano
        if used < ratio * limits.budget_nano or (principal.key_name, month) in self._alerted:
            return
        self._alerted.add((principal.key_name, month))
        BUDGET_ALERTS.inc()
        log.warning(
            "key %s has committed %.0f%% of its %s budget of $%s",
            principal.key_name,
            100 * used / limits.budget_nano,
            month,
            principal.budget_usd,
        )
