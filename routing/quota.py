"""Per-key limits as arithmetic: token buckets, concurrency leases, budget reservations.

Pure: the clock is passed in. The in-process limiter runs these functions directly; the Redis
limiter runs the same rules in one Lua script per check (gateway/limits/lua.py), so both
answer alike. Amounts of money are integer nano-dollars (Lua numbers are doubles: exact to
2^53 nano-USD ≈ $9M, far above any key's monthly budget), tokens and requests are floats
inside a bucket so partial refill is exact.

Nothing a crashed or frozen replica leaves behind stays taken: concurrency leases and budget
reservations both carry a deadline and are dropped once it passes, and a bucket never owes
more than one full refill (see `floor`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from decimal import Decimal

from routing.cost import TokenPrice

NANO = Decimal(10) ** 9
MINUTE_MS = 60_000

# Which limit refused a request (also the label of the failure-policy setting).
RPM = "rpm"
TPM = "tpm"
CONCURRENCY = "concurrency"
BUDGET = "budget"
CHECKS = (RPM, TPM, CONCURRENCY, BUDGET)

# Tokens and nano-USD an ask may name. Lua numbers are doubles: beyond 2^53 integers are no
# longer exact and Redis rejects them as increments. Any real limit is far below this, so a
# saturated ask is refused by the limit it exceeds instead of overflowing the arithmetic.
MAX_ASK = 2**53


@dataclass(slots=True)
class Bucket:
    """A token bucket holding up to `capacity`, refilled at capacity per minute.

    `level` may go negative: settling a request that used more tokens than it reserved
    takes the difference, and the key waits until the refill covers it.
    """

    level: float
    updated_ms: int


def floor(level: float, capacity: int) -> float:
    """A bucket owes at most one full refill (a minute): a request that used far more than
    it reserved (or a wildly wrong usage report) must not lock its key out for hours."""
    return max(level, -float(capacity))


def refill(bucket: Bucket | None, capacity: int, now_ms: int) -> Bucket:
    if bucket is None:
        return Bucket(float(capacity), now_ms)
    elapsed = max(0, now_ms - bucket.updated_ms)
    level = min(float(capacity), floor(bucket.level, capacity) + elapsed * capacity / MINUTE_MS)
    return Bucket(level, max(now_ms, bucket.updated_ms))


def wait_ms(bucket: Bucket, capacity: int, amount: float) -> int:
    """How long until `amount` fits (0 if it fits now); amounts above capacity never fit
    a full bucket, so they are capped at it (one such request per full minute)."""
    need = min(amount, float(capacity)) - bucket.level
    if need <= 0:
        return 0
    return math.ceil(need * MINUTE_MS / capacity)


def reset_ms(bucket: Bucket, capacity: int) -> int:
    """How long until the bucket is full again (OpenAI's `x-ratelimit-reset-*`)."""
    missing = float(capacity) - bucket.level
    return max(0, math.ceil(missing * MINUTE_MS / capacity))


@dataclass(frozen=True, slots=True)
class Limits:
    """One key's limits; None = not limited on that axis. Budget in nano-USD."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_nano: int | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """What one request wants to take: estimated tokens and the worst-case cost.

    `default_tokens` is the part of `tokens` the client did not ask for (the output reserved
    for a request without max_tokens); it may be trimmed to fit a small TPM limit. `hold_ms`
    is how long the request can run (its route's total timeout; 0 = unknown), which bounds
    how long its lease and reservation outlive a crash.
    """

    tokens: int
    reserve_nano: int
    default_tokens: int = 0
    hold_ms: int = 0


def fit_tpm(ask: Ask, tpm: int) -> Ask | None:
    """The ask trimmed to fit a bucket of `tpm` tokens, or None when it can never fit.

    A request that names more tokens than the whole bucket holds (prompt estimate plus
    max_tokens × n) would never be admitted on its own merits, and admitting it anyway once
    a minute drove the bucket deep into debt. Only the default output reservation, which the
    client never asked for, is trimmed.
    """
    if ask.tokens <= tpm:
        return ask
    firm = ask.tokens - ask.default_tokens
    if firm > tpm:
        return None
    return dataclasses.replace(ask, tokens=tpm, default_tokens=tpm - firm)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of an admission check, and what to put in `x-ratelimit-*` headers."""

    allowed: bool
    # The check that refused (None when allowed).
    refused_by: str | None = None
    retry_after_ms: int = 0
    remaining_requests: int | None = None
    reset_requests_ms: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_ms: int | None = None
    # Budget left after this reservation (nano-USD), and the month's spend so far.
    budget_left_nano: int | None = None
    spent_nano: int | None = None


@dataclass(slots=True)
class KeyState:
    """Everything the in-process limiter keeps per key (Redis keeps the same in keys)."""

    requests: Bucket | None = None
    tokens: Bucket | None = None
    # lease id -> expiry (ms): a crashed request's slot frees itself.
    leases: dict[str, int] | None = None
    spent_nano: int = 0
    reserved_nano: int = 0
    # lease id -> (reserved nano-USD, expiry ms): a crashed request's reservation frees
    # itself too, and a request settled after its expiry gives nothing back twice.
    reservations: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    month: str = ""


def expire_reservations(state: KeyState, now_ms: int) -> int:
    """Drop reservations past their deadline from `reserved`; returns the nano-USD freed."""
    gone = [lease for lease, (_, until) in state.reservations.items() if until <= now_ms]
    freed = 0
    for lease in gone:
        freed += state.reservations.pop(lease)[0]
    state.reserved_nano = max(0, state.reserved_nano - freed)
    return freed


def admit(
    state: KeyState,
    limits: Limits,
    ask: Ask,
    lease: str,
    lease_ttl_ms: int,
    now_ms: int,
    checks: frozenset[str] = frozenset(CHECKS),
) -> Verdict:
    """All-or-nothing: either every enabled check takes its share, or none does.

    `checks` narrows which limits apply (the rest are enforced elsewhere, e.g. the ones
    Redis still answers for while this in-process fallback handles the others).
    """
    requests = tokens = None
    if limits.rpm is not None and RPM in checks:
        requests = refill(state.requests, limits.rpm, now_ms)
        if requests.level < 1:
            return Verdict(
                False,
                RPM,
                wait_ms(requests, limits.rpm, 1),
                remaining_requests=0,
                reset_requests_ms=reset_ms(requests, limits.rpm),
            )
    if limits.tpm is not None and TPM in checks:
        tokens = refill(state.tokens, limits.tpm, now_ms)
        # A request larger than the whole bucket waits for a full one rather than forever.
        if tokens.level < min(ask.tokens, limits.tpm):
            return Verdict(
                False,
                TPM,
                wait_ms(tokens, limits.tpm, ask.tokens),
                remaining_tokens=max(0, int(tokens.level)),
                reset_tokens_ms=reset_ms(tokens, limits.tpm),
            )
    if limits.max_concurrency is not None and CONCURRENCY in checks:
        live = {k: v for k, v in (state.leases or {}).items() if v > now_ms}
        state.leases = live
        if len(live) >= limits.max_concurrency:
            return Verdict(False, CONCURRENCY, 1000)
    if limits.budget_nano is not None and BUDGET in checks:
        expire_reservations(state, now_ms)
        committed = state.spent_nano + state.reserved_nano
        if committed + ask.reserve_nano > limits.budget_nano:
            return Verdict(
                False,
                BUDGET,
                budget_left_nano=max(0, limits.budget_nano - committed),
                spent_nano=state.spent_nano,
            )
    verdict = Verdict(True)
    if requests is not None and limits.rpm is not None:
        requests.level -= 1
        state.requests = requests
        verdict = _with_requests(verdict, requests, limits.rpm)
    if tokens is not None and limits.tpm is not None:
        tokens.level = floor(tokens.level - ask.tokens, limits.tpm)
        state.tokens = tokens
        verdict = _with_tokens(verdict, tokens, limits.tpm)
    if limits.max_concurrency is not None and CONCURRENCY in checks:
        assert state.leases is not None
        state.leases[lease] = now_ms + lease_ttl_ms
    if limits.budget_nano is not None and BUDGET in checks:
        state.reserved_nano += ask.reserve_nano
        state.reservations[lease] = (ask.reserve_nano, now_ms + lease_ttl_ms)
        verdict = _with_budget(verdict, state, limits.budget_nano)
    return verdict


def settle(
    state: KeyState,
    limits: Limits,
    ask: Ask,
    lease: str,
    used_tokens: int,
    cost_nano: int,
    now_ms: int,
    checks: frozenset[str] = frozenset(CHECKS),
) -> None:
    """Replace a request's reservation by what it really used."""
    if limits.tpm is not None and TPM in checks and used_tokens != ask.tokens:
        tokens = refill(state.tokens, limits.tpm, now_ms)
        tokens.level = floor(tokens.level - (used_tokens - ask.tokens), limits.tpm)
        state.tokens = tokens
    if limits.max_concurrency is not None and CONCURRENCY in checks and state.leases:
        state.leases.pop(lease, None)
    if limits.budget_nano is not None and BUDGET in checks:
        # Already expired (and so already given back): nothing to give back again.
        held = state.reservations.pop(lease, None)
        if held is not None:
            state.reserved_nano = max(0, state.reserved_nano - held[0])
        state.spent_nano += max(0, cost_nano)


def _with_requests(v: Verdict, bucket: Bucket, capacity: int) -> Verdict:
    return _replace(
        v,
        remaining_requests=max(0, int(bucket.level)),
        reset_requests_ms=reset_ms(bucket, capacity),
    )


def _with_tokens(v: Verdict, bucket: Bucket, capacity: int) -> Verdict:
    return _replace(
        v, remaining_tokens=max(0, int(bucket.level)), reset_tokens_ms=reset_ms(bucket, capacity)
    )


def _with_budget(v: Verdict, state: KeyState, budget_nano: int) -> Verdict:
    left = max(0, budget_nano - state.spent_nano - state.reserved_nano)
    return _replace(v, budget_left_nano=left, spent_nano=state.spent_nano)


def _replace(v: Verdict, **changes: int | None) -> Verdict:
    return dataclasses.replace(v, **changes)  # type: ignore[arg-type]


def to_nano(usd: Decimal | None) -> int:
    if usd is None:
        return 0
    return int((usd * NANO).to_integral_value())


def from_nano(nano: int) -> Decimal:
    return Decimal(nano) / NANO


def worst_case_nano(
    input_tokens: int, output_tokens: int, prices: list[TokenPrice | None], dedicated: list[bool]
) -> int:
    """The most one attempt of this request could cost on any deployment of its plan.

    Input is charged at the higher of the uncached and cache-write rates (a prompt may be
    written to a cache), output at the output rate. Dedicated GPUs cost nothing per call;
    unknown prices cannot be reserved and count as 0 (such attempts are flagged unpriced).
    """
    worst = Decimal(0)
    for price, is_dedicated in zip(prices, dedicated, strict=True):
        if is_dedicated or price is None:
            continue
        per_input = max(price.input, price.cache_write)
        cost = (input_tokens * per_input + output_tokens * price.output) / Decimal(1_000_000)
        worst = max(worst, cost)
    return math.ceil(worst * NANO)


# Prices are USD per 1M tokens; this many millionths of that is what `reserve_rates` counts in,
# so a price with up to 6 decimal places is an exact integer rate (and an attempt's cost in
# nano-USD is tokens × rate / 1000, rounded up).
_RATE_SCALE = 1_000_000


def reserve_rates(
    prices: list[TokenPrice | None], dedicated: list[bool]
) -> tuple[tuple[int, int], ...] | None:
    """The plan's (input, output) rates as exact integers for `worst_case_nano_from_rates`,
    in millionths of a USD per 1M tokens (input at the higher of the uncached and
    cache-write rates), for the priced non-dedicated deployments; None when a price has
    more than 6 decimal places (then `worst_case_nano` computes in Decimal)."""
    rates = []
    for price, is_dedicated in zip(prices, dedicated, strict=True):
        if is_dedicated or price is None:
            continue
        per_input = max(price.input, price.cache_write) * _RATE_SCALE
        per_output = price.output * _RATE_SCALE
        if (
            per_input != per_input.to_integral_value()
            or per_output != per_output.to_integral_value()
        ):
            return None
        rates.append((int(per_input), int(per_output)))
    return tuple(rates)


def worst_case_nano_from_rates(
    input_tokens: int, output_tokens: int, rates: tuple[tuple[int, int], ...]
) -> int:
    """`worst_case_nano` in integer arithmetic, from `reserve_rates` (exact: the same
    result, without a Decimal operation per deployment on every limited request)."""
    worst = 0
    for per_input, per_output in rates:
        cost = input_tokens * per_input + output_tokens * per_output
        if cost > worst:
            worst = cost
    return -(-worst // 1000)  # millionths of USD per 1M tokens × tokens / 1000 = nano-USD


def duration_header(ms: int) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `20ms`."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"
