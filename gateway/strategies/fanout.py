"""Several upstream calls for one request at once: what consensus and speculative routes
share (gateway.strategies.consensus, gateway.strategies.speculative).

A `Fanout` starts candidates from the plan (targets, then fallbacks, in order), skipping
deployments whose circuit breaker is open (when all are open, the least recently failed
one is tried anyway, as the attempt loop does). Each candidate runs its own tries: retries
per the route's `retry:` with backoff, breaker verdicts and metered failures, like the
attempt loop does for one target. An answer is turned into the caller's result (metered,
maybe gated) the moment it arrives, so its latency is its own.

The route's total timeout bounds the whole fan-out: `next_done` returns None at the
deadline, and `cancel_rest` then stops what is still running. Every cancelled call is a
ledger attempt — billed: its input tokens estimated, its output prorated from the answers
that did arrive (routing.fanout.cancelled_output_tokens; 0 when none did) — with error
class `cancelled` (not needed any more), `timeout` (the deadline; counts against the
breaker) or `client_cancelled` (the client hung up).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.core.metering import CallContext, error_class
from gateway.core.ports import AttemptRunner
from gateway.core.upstream_errors import client_error, outcome_of
from gateway.errors import GatewayError, bad_request, upstream_failed, upstream_timeout
from gateway.ledger_rows import AttemptRow
from gateway.observability import telemetry
from gateway.providers.base import TIMEOUT, UpstreamError, UpstreamReply
from gateway.runtime.shutdown import cancel_outcome
from routing.failover import Action, backoff_s, classify, fits_deadline, order_targets
from routing.fanout import cancelled_output_tokens
from routing.model import Plan, PlannedAttempt, Timeouts

R = TypeVar("R")
CANCELLED = "cancelled"
# Don't start a candidate (or a retry) with less than this much of the deadline left.
MIN_ATTEMPT_S = 0.05
# Waiting for cancelled calls to unwind (connections released) before answering.
_UNWIND_S = 1.0
# Each call's own total timeout runs this much past the route's deadline, so that the
# fan-out's deadline (which cancels and bills what is still running) is the one that fires.
_GRACE_MS = 100


@dataclass(slots=True)
class Slot(Generic[R]):
    """One candidate: its planned call, the try under way, and how it ended."""

    planned: PlannedAttempt
    order: int  # position in the plan (target order)
    attempt: PlannedAttempt
    started: float = 0.0
    in_call: bool = False  # awaiting the upstream (not backing off, not done)
    cancelled: bool = False  # metered by cancel_rest: whatever the call does next is moot
    result: R | None = None
    row: AttemptRow | None = None
    error: UpstreamError | None = None


# (attempt, reply, its start) → (the caller's result, the attempt's ledger row)
OnReply = Callable[[PlannedAttempt, UpstreamReply, float], tuple[R, AttemptRow]]


class Fanout(Generic[R]):
    def __init__(
        self, service: AttemptRunner, ctx: CallContext, plan: Plan, on_reply: OnReply[R]
    ) -> None:
        self.service, self.ctx, self.plan = service, ctx, plan
        self._on_reply = on_reply
        self.deadline = ctx.t0 + plan.timeouts.total_ms / 1000
        breakers = service.breakers
        open_map = breakers.open_map()
        ordered = order_targets(plan.attempts, open_map, breakers.last_failure_map())
        self._forced = len(ordered) == 1 and bool(open_map.get(ordered[0].deployment.id))
        self.reasons: list[str] = [
            f"{a.deployment.id}: circuit breaker open" for a in plan.attempts if a not in ordered
        ]
        order = {a.deployment.id: i for i, a in enumerate(plan.attempts)}
        self._pool = deque((a, order[a.deployment.id]) for a in ordered)
        self.running: dict[asyncio.Task[None], Slot[R]] = {}
        self._ready: deque[Slot[R]] = deque()
        self.started = 0
        self.timed_out = False
        self.last_error: tuple[UpstreamError, str] | None = None
        self.timeouts = _capped(plan.timeouts)
        if self.timeouts.total_ms == plan.timeouts.total_ms:
            self.timeouts = dataclasses.replace(
                self.timeouts, total_ms=plan.timeouts.total_ms + _GRACE_MS
            )

    @property
    def busy(self) -> bool:
        return bool(self.running or self._ready)

    def start(self, count: int) -> int:
        """Start up to `count` more candidates; returns how many started."""
        launched = 0
        while launched < count and self._pool:
            if self.deadline - time.perf_counter() < MIN_ATTEMPT_S:
                break
            planned, order = self._pool.popleft()
            dep = planned.deployment
            if not self._forced and not self.service.breakers.allow(dep.id):
                self.reasons.append(f"{dep.id}: circuit breaker open")
                continue
            role = "primary" if self.started == 0 else "candidate"
            if self.started >= (self.plan.fanout.n if self.plan.fanout else 1):
                role = "fallback"  # replaces a candidate that failed
            if planned.role == "drill":
                role = "drill"  # a drill cohort's target stays tagged (gateway.drills.board)
            attempt = PlannedAttempt(dep, role)
            slot: Slot[R] = Slot(planned=attempt, order=order, attempt=attempt)
            task = asyncio.ensure_future(self._run(slot))
            self.running[task] = slot
            self.started += 1
            launched += 1
        return launched

    async def finished(self, count: int) -> AsyncIterator[Slot[R]]:
        """Start `count` candidates and yield each as it finishes, until none is running.
        At the route's deadline the rest are cancelled and billed, and `timed_out` is set."""
        self.start(count)
        while self.busy:
            slot = await self.next_done()
            if slot is None:  # the route's deadline
                self.timed_out = True
                self.cancel_rest(TIMEOUT)
                await self.unwind()
                return
            yield slot

    async def next_done(self) -> Slot[R] | None:
        """The next candidate to finish (answered or failed for good); None at the deadline
        or when nothing is running."""
        while not self._ready:
            if not self.running:
                return None
            remaining = self.deadline - time.perf_counter()
            if remaining <= 0:
                return None
            done, _ = await asyncio.wait(
                self.running, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return None
            for task in sorted(done, key=lambda t: self.running[t].order):
                slot = self.running.pop(task)
                task.result()  # a bug in a candidate surfaces here, not silently
                self._ready.append(slot)
        return self._ready.popleft()

    async def _run(self, slot: Slot[R]) -> None:
        ctx, plan, service = self.ctx, self.plan, self.service
        dep = slot.planned.deployment
        call = service.caller(ctx)
        # A drill target gets one try, as in the attempt loop.
        tries = 1 if slot.planned.role == "drill" else plan.retry.attempts
        for number in range(1, tries + 1):
            slot.attempt = slot.planned if number == 1 else PlannedAttempt(dep, "retry")
            slot.started = time.perf_counter()
            telemetry.begin_attempt(ctx.trace)
            slot.in_call = True
            try:
                reply = await call(slot.attempt, self.timeouts)
            except (UpstreamError, TimeoutError) as caught:
                slot.in_call = False
                if slot.cancelled:
                    return  # its own timeout fired as it was being cancelled: metered already
                exc = (
                    caught
                    if isinstance(caught, UpstreamError)
                    else UpstreamError(TIMEOUT, f"{dep.id} timed out")
                )
                decision = classify(outcome_of(exc), tries - number, deployment=dep)
                service.meter.failed_upstream(
                    ctx, slot.attempt, exc, slot.started, error=decision.error_class
                )
                service.tracker.failed(dep.id, exc)
                if decision.open_breaker:
                    service.breakers.force_open(dep.id)
                elif decision.counts_as_failure:
                    service.breakers.record(dep.id, False)
                self.reasons.append(decision.reason)
                slot.error, self.last_error = exc, (exc, dep.id)
                if decision.action is not Action.RETRY:
                    return
                wait = backoff_s(
                    number,
                    plan.retry.backoff_ms,
                    plan.retry.max_backoff_ms,
                    outcome_of(exc).retry_after_s,
                    random.random(),
                )
                if wait.skip_target or not fits_deadline(
                    time.perf_counter(), self.deadline, wait.delay_s, MIN_ATTEMPT_S
                ):
                    return
                await asyncio.sleep(wait.delay_s)
                continue
            slot.in_call = False
            if slot.cancelled:
                return
            service.breakers.record(dep.id, True)
            slot.error = None
            slot.result, slot.row = self._on_reply(slot.attempt, reply, slot.started)
            return

    def answered(self) -> list[tuple[int, float]]:
        """(output tokens, latency ms) of this request's answers so far."""
        return [
            (a.output_tokens, a.latency_ms)
            for a in self.ctx.attempts
            if a.error_class is None and a.http_status == 200
        ]

    def cancel_rest(self, why: str = CANCELLED) -> int:
        """Cancel the candidates still running and meter each; returns how many."""
        seen = self.answered()
        now = time.perf_counter()
        meter, breakers = self.service.meter, self.service.breakers
        count = 0
        for task, slot in self.running.items():
            task.cancel()
            if not slot.in_call:
                continue  # between tries: the failed try is metered already
            slot.cancelled = True
            count += 1
            elapsed_ms = (now - slot.started) * 1000
            meter.failed(
                self.ctx,
                slot.attempt,
                why,
                http_status=None,
                provider_request_id=None,
                started=slot.started,
                output_tokens_seen=cancelled_output_tokens(seen, elapsed_ms),
                billable=True,
            )
            if why == TIMEOUT:
                breakers.record(slot.attempt.deployment.id, False)
                self.reasons.append(f"{slot.attempt.deployment.id}: out of the route's time")
        return count

    async def unwind(self) -> None:
        """Let cancelled candidates release their connections (bounded)."""
        tasks = list(self.running)
        self.running.clear()
        if tasks:
            await asyncio.wait(tasks, timeout=_UNWIND_S)

    def hung_up(self) -> None:
        """The client went away: stop everything and close the request as 499."""
        status, why = cancel_outcome()  # or the process stopping (gateway.runtime.shutdown)
        self.cancel_rest(why)
        self.running.clear()
        self.service.meter.finish(self.ctx, self.plan, status, why, None)

    def give_up(self, timed_out: bool) -> GatewayError:
        """No usable answer: the client's error; the request row is written."""
        meter = self.service.meter
        if self.last_error is not None and not timed_out:
            exc, dep_id = self.last_error
            error = client_error(exc, dep_id)
            if len(self.reasons) > 1:
                error.message = f"{error.message} Tried: {'; '.join(self.reasons)}."
            meter.finish(self.ctx, self.plan, error.status, error_class(exc), None)
            return error
        if timed_out:
            error = upstream_timeout(
                f"No candidate of {self.plan.route!r} answered within the route's "
                f"{self.plan.timeouts.total_ms} ms."
            )
            meter.finish(self.ctx, self.plan, error.status, TIMEOUT, None)
            return error
        error = upstream_failed(
            f"No deployment of {self.plan.route!r} could be tried "
            "(circuit breakers open or no time left).",
            code="no_deployment_available",
        )
        meter.finish(self.ctx, self.plan, error.status, "no_attempt", None)
        return error


def stream_refused(plan: Plan) -> GatewayError:
    """A streaming request to a fan-out route that says `streaming: refuse`."""
    kind = plan.fanout.kind if plan.fanout is not None else "fan-out"
    return bad_request(
        f"Route {plan.route!r} ({kind}) compares whole answers and does not stream; "
        "send the request with stream=false.",
        param="stream",
        code="stream_not_supported",
    )


def _capped(t: Timeouts) -> Timeouts:
    """Per-call timeouts: a non-stream call's own cap (`attempt_ms`), if it is the tighter."""
    if t.attempt_ms is None or t.attempt_ms >= t.total_ms:
        return t
    return dataclasses.replace(
        t,
        connect_ms=min(t.connect_ms, t.attempt_ms),
        ttft_ms=min(t.ttft_ms, t.attempt_ms),
        total_ms=t.attempt_ms,
    )
