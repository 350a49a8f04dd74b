"""Lease mode's arithmetic: one replica's slice of one key's limits, admitted in process.

Pure: the clock is passed in, nothing here touches Redis (gateway/limits/lease.py does the
I/O, gateway/limits/lease_lua.py holds the script that grants slices, and the headers' view
of a slice is routing/lease_headers.py). A slice is what this replica took from the key's
shared limits in Redis ahead of its requests:

- `requests` / `tokens`: RPM and TPM tokens taken out of the key's buckets and not used
  yet. `tokens` goes negative when requests used more than they reserved: that debt is
  charged to the bucket at the next sync.
- `slots`: concurrency slots held in Redis (one lease entry each); `inflight` of them in use.
- `held_nano`: budget held in Redis as one reservation entry; out of it, `reserved_nano`
  is reserved by requests in flight and `unpushed_nano` was spent by settled requests and
  not yet added to Redis's `spent` (it goes with the next sync, until then the entry covers it).
  Pushes are idempotent: a sync sends the month's cumulative pushed spend (`pushed_nano` plus
  what it pushes), and Redis adds only what it has not applied for this slice yet, so a sync
  retried after its reply was lost (Redis had applied it) does not count the spend twice.

A sync (`plan_sync` → the Redis script → `apply_grant`) gives back what is beyond the wanted
free amount, keeps the rest, and asks for what is missing. What it keeps is decided (and taken
out of the local free amount) before the round trip, so requests admitted while it is in
flight are always covered by what Redis is told to keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from routing.quota import BUDGET, CONCURRENCY, RPM, TPM, Ask, Limits

# The least a smoothing step counts as elapsed: a burst of back-to-back syncs must not read
# as an enormous rate.
_MIN_RATE_WINDOW_MS = 100
# The fewest requests a slice aims to hold free, whatever the recent rate (share cap aside).
_FLOOR_REQUESTS = 4
# How long the smoothed rates and peak remember (an exponential time constant).
_SMOOTHING_S = 2.0


@dataclass(frozen=True, slots=True)
class Sizing:
    """How large slices grow: `target_s` seconds of this replica's recent demand, at least
    one request's worth, at most `max_share` of each limit (but always one request's ask)."""

    target_s: float = 1.5
    max_share: float = 0.1


@dataclass(frozen=True, slots=True)
class Wants:
    """Free amounts a sync aims to hold after it (0 = give everything free back)."""

    requests: int = 0
    tokens: int = 0
    slots: int = 0
    nano: int = 0


@dataclass(slots=True)
class Slice:
    """This replica's share of one key's limits (see the module docstring)."""

    key_name: str
    limits: Limits
    month: str = ""
    requests: int = 0
    tokens: int = 0
    slots: int = 0
    inflight: int = 0
    held_nano: int = 0
    reserved_nano: int = 0
    unpushed_nano: int = 0
    # This month's spend pushed to Redis and confirmed (cumulative): a sync sends it plus
    # `unpushed_nano` as the total Redis must have applied for this slice.
    pushed_nano: int = 0
    # What Redis has under this slice's name: slot entries (at most; more after a sync whose
    # answer was lost), and the amount its budget reservation entry names (0 = none there).
    member_slots: int = 0
    member_nano: int = 0
    sizing: Sizing = Sizing()
    # The free amounts the last sync aimed for: below half of one, the slice is low.
    wanted: Wants = Wants()
    # Syncs planned and the latest one answered (by plan order), and whether that answer
    # fell short of what it asked for (Redis had no more): then a short slice is a refusal.
    syncs_started: int = 0
    syncs_done: int = 0
    starved: bool = False
    # Last seen in Redis (at the last sync), for headers and refusals: the buckets' levels
    # after the grant, the budget others could still take, the month's spend.
    rpm_level: int = 0
    tpm_level: int = 0
    budget_left_nano: int = 0
    spent_nano: int = 0
    # Demand since the last sync (for sizing) and its smoothed rates per second.
    used_requests: int = 0
    used_tokens: int = 0
    used_nano: int = 0
    peak_inflight: int = 0
    peak_smoothed: float = 0.0
    rate_requests: float = 0.0
    rate_tokens: float = 0.0
    rate_nano: float = 0.0
    # The largest single ask lately (a slice always fits at least one such request).
    max_ask_tokens: int = 0
    max_ask_nano: int = 0
    synced_ms: int = 0
    used_ms: int = 0
    # Requests waiting for a sync: what they need joins its ask.
    pending_requests: int = 0
    pending_tokens: int = 0
    pending_slots: int = 0
    pending_nano: int = 0

    @property
    def free_nano(self) -> int:
        return self.held_nano - self.reserved_nano - self.unpushed_nano

    @property
    def holds_anything(self) -> bool:
        return (
            self.requests > 0
            or self.tokens != 0
            or self.slots > 0
            or self.held_nano > 0
            or self.unpushed_nano > 0
        )


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """One sync's arguments: per kind what to give back and what more to ask for; `keep_*`
    is what Redis must keep granted whatever it has left (already promised locally)."""

    give_requests: int
    want_requests: int
    give_tokens: int
    want_tokens: int
    keep_slots: int
    want_slots: int
    push_nano: int
    keep_nano: int
    want_nano: int
    seq: int = 0
    # The month's spend pushed by this slice once this sync is applied (cumulative, including
    # `push_nano`), and the month it is for.
    push_total_nano: int = 0
    month: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    """What the script answered: granted amounts, bucket levels left, budget view."""

    requests: int = 0
    rpm_level: int = 0
    tokens: int = 0
    tpm_level: int = 0
    slots: int = 0
    held_nano: int = 0
    spent_nano: int = 0
    budget_left_nano: int = 0


def take(s: Slice, limits: Limits, ask: Ask, now_ms: int) -> str | None:
    """Admit `ask` against the slice, all or nothing: None when admitted, else the first
    limit the slice is short of (a sync may still find more in Redis)."""
    if limits.rpm is not None and s.requests < 1:
        return RPM
    if limits.tpm is not None and s.tokens < ask.tokens:
        return TPM
    if limits.max_concurrency is not None and s.inflight >= s.slots:
        return CONCURRENCY
    if limits.budget_nano is not None and s.free_nano < ask.reserve_nano:
        return BUDGET
    if limits.rpm is not None:
        s.requests -= 1
        s.used_requests += 1
    if limits.tpm is not None:
        s.tokens -= ask.tokens
        s.used_tokens += ask.tokens
        if ask.tokens > s.max_ask_tokens:
            s.max_ask_tokens = ask.tokens
    if limits.max_concurrency is not None:
        s.inflight += 1
        if s.inflight > s.peak_inflight:
            s.peak_inflight = s.inflight
    if limits.budget_nano is not None:
        s.reserved_nano += ask.reserve_nano
        s.used_nano += ask.reserve_nano
        if ask.reserve_nano > s.max_ask_nano:
            s.max_ask_nano = ask.reserve_nano
    s.used_ms = now_ms
    return None


def add_pending(s: Slice, ask: Ask) -> None:
    """A request waits for a sync: the sync asks for its share too (and sizes by it)."""
    s.pending_requests += 1
    s.pending_tokens += ask.tokens
    s.pending_slots += 1
    s.pending_nano += ask.reserve_nano
    s.max_ask_tokens = max(s.max_ask_tokens, ask.tokens)
    s.max_ask_nano = max(s.max_ask_nano, ask.reserve_nano)


def drop_pending(s: Slice, ask: Ask) -> None:
    s.pending_requests -= 1
    s.pending_tokens -= ask.tokens
    s.pending_slots -= 1
    s.pending_nano -= ask.reserve_nano


def settle(s: Slice, limits: Limits, ask: Ask, used_tokens: int, cost_nano: int) -> None:
    """Replace an admitted request's reservation by what it used, in the slice."""
    if limits.tpm is not None:
        # Unused tokens stay in the slice; a request that used more leaves a debt (never
        # more than one minute's refill, like a bucket's floor).
        s.tokens = max(s.tokens + ask.tokens - used_tokens, -limits.tpm)
    if limits.max_concurrency is not None and s.inflight > 0:
        s.inflight -= 1
    if limits.budget_nano is not None:
        s.reserved_nano = max(0, s.reserved_nano - ask.reserve_nano)
        s.unpushed_nano += max(0, cost_nano)


def low(s: Slice, limits: Limits) -> bool:
    """Below the low-water mark (half of what the last sync aimed for) on any limit: time
    to top up. Cheap: it runs after every local admission."""
    w = s.wanted
    if limits.rpm is not None and s.requests * 2 < w.requests:
        return True
    if limits.tpm is not None and s.tokens * 2 < w.tokens:
        return True
    if limits.max_concurrency is not None and (s.slots - s.inflight) * 2 < w.slots:
        return True
    return limits.budget_nano is not None and s.free_nano * 2 < w.nano


def _share(limit: int, sizing: Sizing) -> int:
    return max(1, int(limit * sizing.max_share))


def wants(s: Slice, limits: Limits, sizing: Sizing) -> Wants:
    """Free amounts worth holding: `target_s` of the recent rate (at least a small floor:
    a few requests, two of the largest recent ask), at most the share cap, plus whatever
    the requests waiting for this sync need (even beyond the cap: one ask always fits)."""
    requests = tokens = slots = nano = 0
    if limits.rpm is not None:
        rate = math.ceil(s.rate_requests * sizing.target_s)
        cap = _share(limits.rpm, sizing)
        requests = min(max(rate, _FLOOR_REQUESTS), cap) + s.pending_requests
    if limits.tpm is not None:
        rate = math.ceil(s.rate_tokens * sizing.target_s)
        cap = _share(limits.tpm, sizing)
        tokens = min(max(rate, 2 * s.max_ask_tokens), cap) + s.pending_tokens
    if limits.max_concurrency is not None:
        # Slots for the recent peak in flight and a quarter more, as free slots beyond those
        # in use: slots held idle are slots another replica cannot use.
        total = min(math.ceil(s.peak_smoothed * 1.25) + 1, _share(limits.max_concurrency, sizing))
        slots = max(total - s.inflight, 1) + s.pending_slots
    if limits.budget_nano is not None:
        rate = math.ceil(s.rate_nano * sizing.target_s)
        cap = _share(limits.budget_nano, sizing)
        nano = min(max(rate, 2 * s.max_ask_nano), cap) + s.pending_nano
    return Wants(requests, tokens, slots, nano)


def update_rates(s: Slice, now_ms: int) -> None:
    """Fold the demand since the last sync into the rates and the recent peak in flight:
    a rise is followed at once (a slice too small makes requests wait), a fall decays over
    `_SMOOTHING_S` (frequent syncs must not make a slice shrink with every dip: each shrink
    is one more sync, and requests waiting for it)."""
    if s.synced_ms:
        elapsed_s = max(now_ms - s.synced_ms, _MIN_RATE_WINDOW_MS) / 1000
        keep = math.exp(-elapsed_s / _SMOOTHING_S)
        s.rate_requests = max(s.used_requests / elapsed_s, s.rate_requests * keep)
        s.rate_tokens = max(s.used_tokens / elapsed_s, s.rate_tokens * keep)
        s.rate_nano = max(s.used_nano / elapsed_s, s.rate_nano * keep)
        s.peak_smoothed = max(float(s.peak_inflight), s.peak_smoothed * keep)
    else:
        s.peak_smoothed = float(s.peak_inflight)
    s.used_requests = s.used_tokens = s.used_nano = 0
    s.peak_inflight = s.inflight
    s.synced_ms = now_ms


def plan_sync(s: Slice, limits: Limits, w: Wants) -> SyncPlan:
    """The sync that moves each free amount towards `w`; what is given back leaves the
    slice now, so nothing admitted during the round trip relies on it."""
    give_r = want_r = give_t = want_t = keep_c = want_c = push = keep_n = want_n = 0
    if limits.rpm is not None:
        give_r = _excess(s.requests, w.requests)
        s.requests -= give_r
        want_r = max(0, w.requests - s.requests)
    if limits.tpm is not None:
        # A debt (negative free tokens) is charged to the bucket in full.
        give_t = _excess(s.tokens, w.tokens) if s.tokens > 0 else s.tokens
        s.tokens -= give_t
        want_t = max(0, w.tokens - s.tokens)
    if limits.max_concurrency is not None:
        give_c = _excess(s.slots - s.inflight, w.slots)
        s.slots -= give_c
        keep_c = s.slots
        want_c = max(0, w.slots - (s.slots - s.inflight))
    if limits.budget_nano is not None:
        give_n = _excess(s.free_nano, w.nano)
        push = s.unpushed_nano
        keep_n = max(0, s.held_nano - push - give_n)
        # Locally the slice now holds what Redis keeps plus what is pushed meanwhile.
        s.held_nano = keep_n + push
        want_n = max(0, w.nano - s.free_nano)
    s.syncs_started += 1
    return SyncPlan(
        give_r,
        want_r,
        give_t,
        want_t,
        keep_c,
        want_c,
        push,
        keep_n,
        want_n,
        s.syncs_started,
        s.pushed_nano + push,
        s.month,
    )


def _excess(free: int, wanted: int) -> int:
    """What to give back: only beyond twice what is wanted (everything when nothing is), so a
    slice does not shrink and grow back with every small swing in demand."""
    return free - wanted if free > 2 * wanted else 0


def apply_grant(s: Slice, limits: Limits, plan: SyncPlan, grant: Grant) -> None:
    """Take a sync's answer into the slice (requests may have come and gone meanwhile)."""
    s.syncs_done = max(s.syncs_done, plan.seq)
    s.starved = (
        grant.requests < plan.want_requests
        or grant.tokens < plan.want_tokens
        or grant.slots < plan.keep_slots + plan.want_slots
        or grant.held_nano < plan.keep_nano + plan.want_nano
    )
    if limits.rpm is not None:
        s.requests += grant.requests
        s.rpm_level = grant.rpm_level
    if limits.tpm is not None:
        s.tokens += grant.tokens
        s.tpm_level = grant.tpm_level
    if limits.max_concurrency is not None:
        s.slots = grant.slots
        s.member_slots = grant.slots
    if limits.budget_nano is not None:
        s.unpushed_nano -= plan.push_nano
        if plan.month == s.month:  # else pushed to last month: this month starts from 0
            s.pushed_nano += plan.push_nano
        s.held_nano = grant.held_nano
        s.member_nano = grant.held_nano
        s.spent_nano = grant.spent_nano
        s.budget_left_nano = grant.budget_left_nano


def sync_lost(s: Slice, plan: SyncPlan) -> None:
    """A sync failed without an answer: Redis may or may not have applied it. What it gave
    back already left the slice, its spend stays unpushed (the next sync's total covers it,
    and Redis adds only what it has not applied), and the slot entries it may have added are
    removed by the next sync (the budget entry's amount Redis records itself)."""
    s.member_slots = max(s.member_slots, plan.keep_slots + plan.want_slots)


def forget_redis_part(s: Slice) -> None:
    """A new month (or a slice Redis no longer knows): nothing is held there any more;
    requests in flight keep their reservations and must be covered by the next grant."""
    s.held_nano = s.reserved_nano + s.unpushed_nano
    s.member_nano = 0
    s.pushed_nano = 0


def outstanding(s: Slice) -> tuple[int, int, int, int]:
    """What the slice holds that the rest of the fleet cannot use: (requests, tokens,
    slots, nano-USD) — the most lease mode can overspend by if this replica dies."""
    return max(0, s.requests), max(0, s.tokens), s.slots, max(0, s.held_nano)
