"""The attempt loop: one request's walk through its plan, try by try.

Retries, backoff, breakers, deadlines, hedging and the client's hang-up are handled here;
every decision (retry, next target, give up, how long to back off, which targets to skip)
comes from the pure functions in routing.failover. Results and failures are metered as
they happen; the caller (gateway.core.service) decides what the answer becomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gateway.core.metering import CallContext, Meter, error_class
from gateway.core.ports import BreakerBoard, Tracker
from gateway.core.upstream_errors import client_error, outcome_of
from gateway.errors import GatewayError, upstream_failed
from gateway.observability import metrics, telemetry
from gateway.providers.base import TIMEOUT, UpstreamError
from gateway.runtime.shutdown import CLIENT_CANCELLED, SHUTDOWN, cancel_outcome
from routing.failover import (
    Action,
    backoff_s,
    classify,
    fits_deadline,
    next_with_larger_context,
    order_targets,
)
from routing.model import Plan, PlannedAttempt, Timeouts

T = TypeVar("T")
NO_DEADLINE = contextlib.nullcontext()
# Don't start another try unless at least this much of the plan's deadline is left.
MIN_ATTEMPT_S = 0.05


async def keep(_: Any) -> None:
    """Default `discard` for results that hold nothing to release."""
    return None


@dataclass(slots=True)
class Run(Generic[T]):
    """Bookkeeping for one request's walk through its plan."""

    ctx: CallContext
    plan: Plan
    deadline: float
    reasons: list[str] = field(default_factory=list)
    last_error: UpstreamError | None = None
    last_deployment: str = ""
    forced: bool = False
    # Whether a plan that fails writes the request row (a gated caller may not want it to).
    finish: bool = True


class AttemptLoop:
    def __init__(
        self,
        meter: Meter,
        breakers: BreakerBoard,
        tracker: Tracker,
        rand: Callable[[], float],
    ) -> None:
        self.meter = meter
        self.breakers = breakers
        self.tracker = tracker
        self._rand = rand

    async def walk(
        self,
        run: Run[T],
        call: Callable[[PlannedAttempt, Timeouts], Awaitable[T]],
        *,
        stream: bool,
        discard: Callable[[T], Awaitable[None]] = keep,
    ) -> tuple[PlannedAttempt, T, float]:
        """Try the plan's targets in order until one answers; raise the client's error if
        none does. Returns (attempt, result, perf_counter at its start)."""
        plan = run.plan
        open_map = self.breakers.open_map()
        targets = order_targets(plan.attempts, open_map, self.breakers.last_failure_map())
        # When every breaker is open, the least recently failed target is tried anyway,
        # without asking its breaker (which would say no).
        run.forced = len(targets) == 1 and bool(open_map.get(targets[0].deployment.id))
        try:
            index = 0
            while index < len(targets):
                result = await self._try_target(run, targets, index, call, stream, discard)
                if isinstance(result, tuple):
                    return result
                index = result
        except asyncio.CancelledError:
            self._finish_failed(run, *cancel_outcome())  # a hang-up, or the shutdown cut
            raise
        raise self._give_up(run)

    async def _try_target(
        self,
        run: Run[T],
        targets: list[PlannedAttempt],
        index: int,
        call: Callable[[PlannedAttempt, Timeouts], Awaitable[T]],
        stream: bool,
        discard: Callable[[T], Awaitable[None]],
    ) -> tuple[PlannedAttempt, T, float] | int:
        """Tries of one target. Returns the success, or the index of the target to try
        next (len(targets) to stop)."""
        plan = run.plan
        planned = targets[index]
        dep = planned.deployment
        following = index + 1
        # A drill target gets one try: the client's request goes on to the route's own plan.
        tries = 1 if planned.role == "drill" else plan.retry.attempts
        for number in range(1, tries + 1):
            if number == 1 and not run.forced and not self.breakers.allow(dep.id):
                return following  # open, or its single half-open probe is already out
            remaining = run.deadline - time.perf_counter()
            if remaining < MIN_ATTEMPT_S:
                return len(targets)  # out of time: stop walking
            attempt = planned if number == 1 else PlannedAttempt(dep, _retry_role(planned))
            started = time.perf_counter()
            bounded = _bounded(plan.timeouts, stream)
            # The first try starts with the plan's whole budget, and its own timeouts end
            # within it (give or take the microseconds since the request arrived); later
            # tries get an explicit deadline. Skipping it for the first saves a timer.
            deadline = asyncio.timeout(remaining) if run.ctx.attempts else NO_DEADLINE
            try:
                async with deadline:
                    if (
                        number == 1
                        and index == 0
                        and plan.hedge_after_ms
                        and following < len(targets)
                        and self.breakers.allow(targets[following].deployment.id)
                    ):
                        won = await self._race(
                            run, attempt, targets[following], call, bounded, discard
                        )
                        if not stream:
                            self.breakers.record(won[0].deployment.id, True)
                        return won
                    # The upstream call carries this attempt's traceparent (no-op untraced).
                    telemetry.begin_attempt(run.ctx.trace)
                    result = await call(attempt, bounded)
            except (UpstreamError, TimeoutError) as exc:
                failure = (
                    exc
                    if isinstance(exc, UpstreamError)
                    else UpstreamError(TIMEOUT, f"{dep.id} ran out of the route's total time")
                )
                decision = classify(
                    outcome_of(failure), plan.retry.attempts - number, deployment=dep
                )
                self.meter.failed_upstream(
                    run.ctx, attempt, failure, started, error=decision.error_class
                )
                self.tracker.failed(dep.id, failure)
                run.last_error, run.last_deployment = failure, dep.id
                if decision.open_breaker:
                    self.breakers.force_open(dep.id)
                    metrics.BREAKER_OPENED.labels(dep.id).inc()
                elif decision.counts_as_failure:
                    self.breakers.record(dep.id, False)
                if decision.action is Action.FAIL:
                    raise self._fail_now(run, failure) from None
                run.reasons.append(decision.reason)
                if decision.action is Action.NEXT:
                    if decision.needs_larger_context:
                        larger = next_with_larger_context(targets[following:], dep)
                        if larger is None:
                            raise self._fail_now(run, failure) from None
                        return following + larger
                    return following
                wait = backoff_s(
                    number,
                    plan.retry.backoff_ms,
                    plan.retry.max_backoff_ms,
                    outcome_of(failure).retry_after_s,
                    self._rand(),
                )
                if wait.skip_target or not fits_deadline(
                    time.perf_counter(), run.deadline, wait.delay_s, MIN_ATTEMPT_S
                ):
                    return following
                await asyncio.sleep(wait.delay_s)
                continue
            except asyncio.CancelledError:
                self.meter.failed(
                    run.ctx,
                    attempt,
                    cancel_outcome()[1],
                    http_status=None,
                    provider_request_id=None,
                    started=started,
                    billable=True,
                )
                raise
            if not stream:  # a stream's breaker verdict waits for the stream's end
                self.breakers.record(dep.id, True)
            return attempt, result, started
        return following

    async def _race(
        self,
        run: Run[T],
        primary: PlannedAttempt,
        backup: PlannedAttempt,
        call: Callable[[PlannedAttempt, Timeouts], Awaitable[T]],
        timeouts: Timeouts,
        discard: Callable[[T], Awaitable[None]],
    ) -> tuple[PlannedAttempt, T, float]:
        """Hedging: if `primary` has not answered after hedge_after_ms, start `backup` too.

        The first to answer wins and the other is cancelled and recorded with role
        `hedge` (or `primary`) and error class `hedge_lost`. If both fail, the primary's
        error is raised unmetered, for the caller's normal failure handling.
        """
        assert run.plan.hedge_after_ms is not None
        hedge = PlannedAttempt(backup.deployment, "hedge")
        started = {primary: time.perf_counter()}
        first = asyncio.ensure_future(call(primary, timeouts))
        try:
            done, _ = await asyncio.wait({first}, timeout=run.plan.hedge_after_ms / 1000)
        except asyncio.CancelledError:
            first.cancel()
            raise
        if done:
            return primary, first.result(), started[primary]  # raises the primary's error
        started[hedge] = time.perf_counter()
        second = asyncio.ensure_future(call(hedge, timeouts))
        pending = {first: primary, second: hedge}
        primary_error: BaseException | None = None
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    attempt = pending.pop(task)
                    error = task.exception()
                    if error is None:
                        for loser_task, loser in pending.items():
                            if loser_task.done() and loser_task.exception() is None:
                                await discard(loser_task.result())
                            loser_task.cancel()
                            self.meter.failed(
                                run.ctx,
                                loser,
                                "hedge_lost",
                                http_status=None,
                                provider_request_id=None,
                                started=started[loser],
                                billable=True,
                            )
                        pending.clear()
                        if primary_error is not None and isinstance(primary_error, UpstreamError):
                            self._meter_failure(run, primary, primary_error, started[primary])
                        return attempt, task.result(), started[attempt]
                    if attempt is primary:
                        primary_error = error
                    elif isinstance(error, UpstreamError):
                        self._meter_failure(run, hedge, error, started[hedge])
        except asyncio.CancelledError:
            for task in pending:
                task.cancel()
            raise
        assert primary_error is not None
        raise primary_error

    def _meter_failure(
        self, run: Run[Any], attempt: PlannedAttempt, failure: UpstreamError, started: float
    ) -> None:
        decision = classify(outcome_of(failure), 0, deployment=attempt.deployment)
        self.meter.failed_upstream(run.ctx, attempt, failure, started, error=decision.error_class)
        self.tracker.failed(attempt.deployment.id, failure)
        if decision.open_breaker:
            self.breakers.force_open(attempt.deployment.id)
        elif decision.counts_as_failure:
            self.breakers.record(attempt.deployment.id, False)
        run.reasons.append(decision.reason)

    def _finish_failed(self, run: Run[Any], status: int, error: str) -> None:
        if run.finish or error in (CLIENT_CANCELLED, SHUTDOWN):  # these end the request anyway
            self.meter.finish(run.ctx, run.plan, status, error, None)

    def _fail_now(self, run: Run[Any], failure: UpstreamError) -> GatewayError:
        error = client_error(failure, run.last_deployment)
        self._finish_failed(run, error.status, error_class(failure))
        return error

    def _give_up(self, run: Run[Any]) -> GatewayError:
        if run.last_error is None:
            # Every target was skipped before a single try (deadline or breakers).
            error: GatewayError = upstream_failed(
                f"No deployment of {run.plan.route!r} could be tried "
                "(circuit breakers open or no time left).",
                code="no_deployment_available",
            )
            self._finish_failed(run, error.status, "no_attempt")
            return error
        error = client_error(run.last_error, run.last_deployment)
        if len(run.reasons) > 1:
            error.message = f"{error.message} Tried: {'; '.join(run.reasons)}."
        self._finish_failed(run, error.status, error_class(run.last_error))
        return error


def _bounded(t: Timeouts, stream: bool) -> Timeouts:
    """Per-try timeouts. The plan's deadline is enforced around each try already, so only
    a non-stream try's own cap (`attempt_ms`) changes anything here."""
    if stream or t.attempt_ms is None or t.attempt_ms >= t.total_ms:
        return t
    return _capped(t)


@functools.lru_cache(maxsize=256)
def _capped(t: Timeouts) -> Timeouts:
    assert t.attempt_ms is not None
    return dataclasses.replace(
        t,
        connect_ms=min(t.connect_ms, t.attempt_ms),
        ttft_ms=min(t.ttft_ms, t.attempt_ms),
        total_ms=t.attempt_ms,
    )


def _retry_role(planned: PlannedAttempt) -> str:
    """A batch line's retries stay `batch` attempts (its ledger rows are all the batch's)."""
    return planned.role if planned.role == "batch" else "retry"
