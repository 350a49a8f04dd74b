"""Per-key limits that hold across replicas: RPM, TPM, concurrency and monthly budgets.

With a Redis URL every replica admits through one atomic Lua script (gateway/limits_lua.py);
without one, the same rules run in process (routing/quota.py). A request reserves its
estimated tokens and worst-case cost before any upstream call and settles to what it used
when its ledger row is written, so N replicas can overspend a budget by at most the
reservations in flight.

Redis trouble is a policy, per check (`limits.on_redis_failure`): `fail_open` serves and
counts in process (and says so in a metric), `fail_closed` answers 503. While Redis is down
no request waits on it: a probe re-checks it every `probe_interval_ms` and enforcement moves
back as soon as it answers; spend settled meanwhile is added to Redis then.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis

from gateway.auth import Principal
from gateway.errors import GatewayError
from gateway.ledger.events import RequestRow
from gateway.ledger.pricing import PriceBook
from gateway.limits_lua import ADD_SPEND, BATCH, SEED
from gateway.redis_batch import RedisBatch
from gateway.redis_health import REDIS_ERRORS, RedisHealth
from routing import quota
from routing.model import Plan
from routing.quota import BUDGET, CHECKS, CONCURRENCY, RPM, TPM, Ask, KeyState, Limits, Verdict

log = logging.getLogger("farebox.limits")

FAIL_OPEN = "fail_open"
FAIL_CLOSED = "fail_closed"

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

# A lease outlives any request: the route's total deadline is far shorter.
_LEASE_TTL_MS = 15 * 60 * 1000
# Budget counters live a little longer than their month.
_BUDGET_TTL_S = 40 * 24 * 3600
_LEASE_PREFIX = os.urandom(4).hex()
_LEASE_IDS = itertools.count(1)
_REFUSED_CODES = {1: RPM, 2: TPM, 3: CONCURRENCY, 4: BUDGET}

SpendSource = Callable[[str, datetime], Awaitable[Decimal]]


def limits_of(principal: Principal) -> Limits:
    return Limits(
        rpm=principal.rpm,
        tpm=principal.tpm,
        max_concurrency=principal.max_concurrency,
        budget_nano=None if principal.budget_usd is None else quota.to_nano(principal.budget_usd),
    )


def month_of(now: datetime) -> str:
    return now.strftime("%Y-%m")


def month_start(month: str) -> datetime:
    year, mon = month.split("-")
    return datetime(int(year), int(mon), 1, tzinfo=UTC)


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        policies = dict(policies or {})
        default = policies.pop("default", FAIL_OPEN)
        self.policies = {check: policies.get(check, default) for check in CHECKS}
        self._spend = spend_source
        self._prefix = key_prefix
        self._probe_s = probe_interval_s
        self._clock = clock
        self._local: dict[str, KeyState] = {}
        self._alerted: set[tuple[str, str]] = set()
        # Spend settled in process while Redis was away, added to Redis once it is back.
        self._owed: dict[tuple[str, str], int] = {}
        self._seeding: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._redis: Redis | None = None
        self._health: RedisHealth | None = None
        if redis_url:
            self._redis = Redis.from_url(
                redis_url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry_on_timeout=False,
            )
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
        if self._health is not None:
            await self._batch.drain()
            await self._health.close()

    # -- admission ----------------------------------------------------------------------

    async def admit(self, principal: Principal, ask: Ask) -> Admission:
        """Take `ask` from the key's limits or raise the 429 / 503 the client should see."""
        limits = limits_of(principal)
        now = datetime.fromtimestamp(self._clock(), UTC)
        month = month_of(now)
        lease = f"{_LEASE_PREFIX}-{next(_LEASE_IDS)}"
        enabled = _enabled(limits)
        local: frozenset[str] = frozenset()
        verdict: Verdict | None = None
        if self._redis is not None and self.redis_up:
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
        if not verdict.allowed:
            assert verdict.refused_by is not None
            REFUSED.labels(verdict.refused_by).inc()
            raise refusal(principal, limits, ask, verdict)
        admission = Admission(self, principal, limits, ask, lease, month, verdict, local)
        self._check_soft_budget(principal, limits, verdict, month)
        return admission

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
            _LEASE_TTL_MS,
            -1 if limits.budget_nano is None else limits.budget_nano,
            ask.reserve_nano,
            _BUDGET_TTL_S,
        ]
        out = await self._admit_batched(principal, limits, ask, lease, month, keys, args)
        # Refused with code 5: this month's spend is not in Redis yet; seed it from the ledger.
        if out.startswith(b"0,5,"):
            await self._seed(principal.key_name, month, keys[3])
            out = await self._admit_batched(principal, limits, ask, lease, month, keys, args)
        return _verdict(out)

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
            verdict = _verdict(out)
            if verdict.allowed:
                Admission(self, principal, limits, ask, lease, month, verdict).settle(None)

        return self._batch.call(keys, _item("A", args), on_orphan=orphaned)

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
        return quota.admit(state, limits, ask, lease, _LEASE_TTL_MS, self._now_ms(), checks)

    async def _spent_from_ledger(self, key_name: str, month: str) -> int:
        if self._spend is None:
            return 0
        try:
            return quota.to_nano(await self._spend(key_name, month_start(month)))
        except Exception as exc:
            # Budgets must not lock everyone out while the database is away; the ledger
            # spools meanwhile and the Redis counter carries the month once seeded.
            log.warning("could not read this month's spend for a key (%s)", type(exc).__name__)
            return 0

    # -- settlement ---------------------------------------------------------------------

    def settle(self, admission: Admission, used_tokens: int, cost_nano: int) -> None:
        """Never awaited by a request: Redis work runs in the background."""
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
        if self._redis is None or admission.local == _enabled(admission.limits):
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
        ]

        def settled(future: asyncio.Future[Any]) -> None:
            exc = None if future.cancelled() else future.exception()
            if exc is None:
                return
            if not isinstance(exc, REDIS_ERRORS):
                log.error("settling a key's limits failed", exc_info=exc)
                return
            # The reservation stays until the lease / month expires; the spend is owed.
            self._went_down(exc)
            if limits.budget_nano is not None and cost_nano > 0:
                owed = (admission.principal.key_name, admission.month)
                self._owed[owed] = self._owed.get(owed, 0) + cost_nano

        # No task per request, and no round trip of its own under load: it rides along with
        # the next admission (or goes within 10 ms).
        self._batch.call(keys, _item("S", args), urgent=False).add_done_callback(settled)

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
        tag = f"{{{self._prefix}:lim:{key_name}}}"
        return (f"{tag}:rpm", f"{tag}:tpm", f"{tag}:conc", f"{tag}:budget:{month}")

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


def _enabled(limits: Limits) -> frozenset[str]:
    on = []
    if limits.rpm is not None:
        on.append(RPM)
    if limits.tpm is not None:
        on.append(TPM)
    if limits.max_concurrency is not None:
        on.append(CONCURRENCY)
    if limits.budget_nano is not None:
        on.append(BUDGET)
    return frozenset(on)


def _item(op: str, args: list[str | int]) -> str:
    return op + "," + ",".join(map(str, args))


def _verdict(out: bytes) -> Verdict:
    values = [int(v) for v in out.split(b",")]

    def opt(v: int) -> int | None:
        return None if v < 0 else v

    return Verdict(
        allowed=values[0] == 1,
        refused_by=_REFUSED_CODES.get(values[1]),
        retry_after_ms=values[2],
        remaining_requests=opt(values[3]),
        reset_requests_ms=opt(values[4]),
        remaining_tokens=opt(values[5]),
        reset_tokens_ms=opt(values[6]),
        budget_left_nano=opt(values[7]),
        spent_nano=opt(values[8]),
    )


def rate_headers(limits: Limits, verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """OpenAI's `x-ratelimit-*` headers for the limits this key has."""
    out: list[tuple[bytes, bytes]] = []
    if limits.rpm is not None:
        out.append((b"x-ratelimit-limit-requests", str(limits.rpm).encode()))
        if verdict.remaining_requests is not None:
            out.append(
                (b"x-ratelimit-remaining-requests", str(verdict.remaining_requests).encode())
            )
        if verdict.reset_requests_ms is not None:
            reset = quota.duration_header(verdict.reset_requests_ms)
            out.append((b"x-ratelimit-reset-requests", reset.encode()))
    if limits.tpm is not None:
        out.append((b"x-ratelimit-limit-tokens", str(limits.tpm).encode()))
        if verdict.remaining_tokens is not None:
            left = str(verdict.remaining_tokens).encode()
            out.append((b"x-ratelimit-remaining-tokens", left))
        if verdict.reset_tokens_ms is not None:
            reset = quota.duration_header(verdict.reset_tokens_ms)
            out.append((b"x-ratelimit-reset-tokens", reset.encode()))
    return out


def refusal(principal: Principal, limits: Limits, ask: Ask, verdict: Verdict) -> GatewayError:
    headers = rate_headers(limits, verdict)
    check = verdict.refused_by
    if check == BUDGET:
        left = quota.from_nano(verdict.budget_left_nano or 0)
        message = (
            f"You exceeded your current quota: key {principal.key_name!r} has a monthly budget "
            f"of ${principal.budget_usd}; ${left:.6f} is left and this request could cost up "
            f"to ${quota.from_nano(ask.reserve_nano):.6f}. Raise the budget or lower max_tokens."
        )
        # The OpenAI SDKs retry 429s unless told not to: a budget does not refill in seconds.
        headers.append((b"x-should-retry", b"false"))
        return GatewayError(
            429,
            message,
            error_type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    wait_s = max(verdict.retry_after_ms, 1) / 1000
    headers.append((b"retry-after-ms", str(max(verdict.retry_after_ms, 1)).encode()))
    headers.append((b"retry-after", str(max(1, round(wait_s + 0.499))).encode()))
    if check == RPM:
        what = f"requests per min (RPM): Limit {limits.rpm}"
    elif check == TPM:
        what = f"tokens per min (TPM): Limit {limits.tpm}, Requested {ask.tokens}"
    else:
        what = f"concurrent requests: Limit {limits.max_concurrency}"
    message = (
        f"Rate limit reached for key {principal.key_name!r} on {what}. "
        f"Please try again in {quota.duration_header(max(verdict.retry_after_ms, 1))}."
    )
    return GatewayError(
        429, message, error_type=check or "requests", code="rate_limit_exceeded", headers=headers
    )


def limits_unavailable(checks: list[str]) -> GatewayError:
    return GatewayError(
        503,
        "Rate and budget limits cannot be checked right now (the shared limit store is "
        f"unreachable) and this gateway fails closed for {', '.join(checks)}. Retry shortly.",
        error_type="server_error",
        code="limits_unavailable",
        headers=[(b"retry-after", b"1")],
    )


def ask_for(
    plan: Plan,
    payload: dict[str, Any],
    body_bytes: int,
    prices: PriceBook | None,
    reserve_output_tokens: int,
    now: datetime,
) -> Ask:
    """What a request reserves: tokens for TPM, and its worst-case cost for the budget.

    Input is over-estimated on purpose (a token per 3 body bytes; English runs ~4 bytes a
    token) and output is the request's own cap, so a settled request rarely costs more than
    it reserved. One attempt is reserved: retries and fallbacks settle at their real cost.
    """
    input_tokens = body_bytes // 3 + 1
    output = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if not isinstance(output, int) or isinstance(output, bool) or output <= 0:
        output = reserve_output_tokens
    n = payload.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        output *= n
    deployments = [a.deployment for a in plan.attempts]
    if prices is None:
        return Ask(input_tokens + output, 0)
    found = [prices.price_for(d.id, d.upstream_model, d.provider_kind, now) for d in deployments]
    dedicated = [d.provider_kind == "dedicated" for d in deployments]
    return Ask(input_tokens + output, quota.worst_case_nano(input_tokens, output, found, dedicated))
