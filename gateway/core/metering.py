"""Turn upstream outcomes into priced ledger rows.

Everything here runs on the hot path, so it does arithmetic and dict lookups only; the
database write happens later in the ledger writer.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway.core.call_context import CallContext as CallContext
from gateway.core.call_context import DrillObserver as DrillObserver
from gateway.core.call_context import Ledger as Ledger
from gateway.core.call_context import NullLedger as NullLedger
from gateway.core.call_context import Settles as Settles
from gateway.ledger.journal import Journal
from gateway.ledger.pricing import PriceBook
from gateway.ledger.tokens import estimate_input_tokens
from gateway.ledger_rows import CACHE, ESTIMATED, PROVIDER, AttemptRow, RequestRow, new_row
from gateway.observability import metrics, request_log, telemetry
from gateway.providers.base import CONNECT, STATUS, UpstreamError
from gateway.runtime.after_answer import after_answer
from routing.cost import Usage, attempt_cost, usage_from_openai
from routing.guard import GUARDRAIL_BLOCKED
from routing.guard_summary import STORED_CHARS, fit
from routing.model import Plan, PlannedAttempt
from routing.units import unit_attempt_cost

# Failures after which the provider has (or may have) run the model over the prompt, and
# so bills the input tokens. Rejections before inference (4xx, connect errors) are free.
_BILLABLE_FAILURE_MIN_STATUS = 500
_ZERO = Decimal(0)

log = logging.getLogger("farebox.ledger")

_ATTEMPT_PREFIX = "att_" + os.urandom(6).hex()
_ATTEMPT_COUNTER = itertools.count(1)


def _reseed_attempt_ids() -> None:
    """A forked child gets its own prefix: ids are primary keys, and the ledger's
    `ON CONFLICT DO NOTHING` would silently drop a row whose id another process used."""
    global _ATTEMPT_PREFIX, _ATTEMPT_COUNTER
    _ATTEMPT_PREFIX = "att_" + os.urandom(6).hex()
    _ATTEMPT_COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_reseed_attempt_ids)


def new_attempt_id() -> str:
    return f"{_ATTEMPT_PREFIX}{next(_ATTEMPT_COUNTER):010x}"


def error_class(exc: UpstreamError) -> str:
    if exc.kind == STATUS and exc.status is not None:
        return f"http_{exc.status}"
    return exc.kind


class Meter:
    def __init__(self, prices: PriceBook, ledger: Ledger, journal: Journal | None = None) -> None:
        self._prices = prices
        self.prices = prices  # the batch runner meters its lines on the same book
        self.ledger = ledger
        # Drill outcomes are counted from the same rows the ledger gets.
        self.drills: DrillObserver | None = None
        # The crash-safe journal (gateway/ledger/journal.py): an intent per upstream call.
        self.journal = journal

    def intent(self, ctx: CallContext, attempt: PlannedAttempt) -> None:
        """Journal an upstream call about to start; call it right before the call.

        The attempt's ledger row, when it is metered, takes the id written here, so a crash
        in between leaves an intent that start-up recovery bills as `gateway_crashed`."""
        journal = self.journal
        if journal is None:
            return
        attempt_id = new_attempt_id()
        telemetry.sending_attempt(attempt_id)
        intents = ctx.intents
        intents[id(attempt)] = attempt_id
        dep = attempt.deployment
        principal = ctx.principal
        journal.intent(
            attempt_id,
            (  # "i", the id, then gateway.ledger.journal.INTENT_FIELDS in order
                "i",
                attempt_id,
                ctx.request_id,
                len(ctx.attempts) + len(intents),
                attempt.role,
                dep.id,
                dep.provider,
                dep.provider_kind,
                dep.upstream_model,
                time.time(),
                ctx.body_bytes,
                ctx.received_at,
                ctx.route,
                ctx.requested_model,
                ctx.endpoint,
                ctx.stream,
                ctx.key_id,
                ctx.workload,
                principal.team if principal is not None else None,
                principal.tags.get("segment") if principal is not None and principal.tags else None,
                ctx.drill_id,
                ctx.workflow_id,
                ctx.batch_id,
                # The request checks ran before any upstream call: a crashed request's
                # rebuilt row keeps what they did.
                ctx.guard,
            ),
        )

    def _price(
        self, attempt: PlannedAttempt, at: datetime, usage: Usage
    ) -> tuple[Decimal | None, str | None]:
        dep = attempt.deployment
        price = self._prices.price_for(dep.id, dep.upstream_model, dep.provider_kind, at)
        cost = attempt_cost(usage, price, dep.provider_kind == "dedicated")
        if cost is None:
            metrics.UNPRICED_ATTEMPTS.labels(dep.id).inc()
        return cost, price.version if price is not None else None

    def output_price(self, attempt: PlannedAttempt, at: datetime) -> Decimal | None:
        """USD per 1M output tokens of the attempt's deployment (consensus `strongest`)."""
        dep = attempt.deployment
        price = self._prices.price_for(dep.id, dep.upstream_model, dep.provider_kind, at)
        return None if price is None else price.output

    def succeeded(
        self,
        ctx: CallContext,
        attempt: PlannedAttempt,
        usage_data: Any,
        provider_request_id: str | None,
        started: float,
        ttft_ms: float | None = None,
        http_status: int = 200,
    ) -> AttemptRow:
        """Record an attempt that delivered an answer (usage from the provider if it sent any)."""
        if isinstance(usage_data, dict):
            usage, source = usage_from_openai(usage_data), PROVIDER
        else:
            usage, source = Usage(self._estimate(ctx, attempt), 0, 0, 0, 0), ESTIMATED
        return self._add(
            ctx, attempt, usage, source, provider_request_id, started, ttft_ms, http_status, None
        )

    def metered_units(
        self,
        ctx: CallContext,
        attempt: PlannedAttempt,
        usage_data: Any,
        counted: tuple[Decimal | None, str | None, str | None],
        provider_request_id: str | None,
        started: float,
        ttft_ms: float | None = None,
        error: str | None = None,
    ) -> AttemptRow:
        """Record an attempt of a per-unit endpoint that the provider served and bills
        (gateway/core/passthrough.py): an answer, or with `error` one that broke mid-body.
        Tokens as the provider reported them (none: 0, not estimated), `counted` = (units,
        unit, image variant), priced by routing/units.py rather than per token."""
        reported = isinstance(usage_data, dict)
        return self._add(
            ctx,
            attempt,
            usage_from_openai(usage_data) if reported else Usage(),
            PROVIDER if reported else ESTIMATED,
            provider_request_id,
            started,
            ttft_ms,
            200,
            error,
            counted,
        )

    def cache_hit(
        self, ctx: CallContext, attempt: PlannedAttempt, usage: Usage, started: float
    ) -> AttemptRow:
        """Record an answer served from the response cache (gateway/cache/response.py): no upstream
        call, so it costs nothing; what it would have cost at today's price for the cached
        answer's tokens is recorded as the saving."""
        return self._add(ctx, attempt, usage, CACHE, None, started, None, 200, None)

    def failed(
        self,
        ctx: CallContext,
        attempt: PlannedAttempt,
        error: str,
        *,
        http_status: int | None,
        provider_request_id: str | None,
        started: float,
        ttft_ms: float | None = None,
        output_tokens_seen: int = 0,
        billable: bool | None = None,
    ) -> AttemptRow:
        """Record a failed attempt with estimated tokens where the provider bills them."""
        if billable is None:
            billable = http_status is None or http_status >= _BILLABLE_FAILURE_MIN_STATUS
        input_tokens = self._estimate(ctx, attempt) if billable else 0
        usage = Usage(input_tokens, 0, 0, output_tokens_seen, 0)
        return self._add(
            ctx,
            attempt,
            usage,
            ESTIMATED,
            provider_request_id,
            started,
            ttft_ms,
            http_status,
            error,
        )

    def failed_upstream(
        self,
        ctx: CallContext,
        attempt: PlannedAttempt,
        exc: UpstreamError,
        started: float,
        error: str | None = None,
    ) -> AttemptRow:
        return self.failed(
            ctx,
            attempt,
            error or error_class(exc),
            http_status=exc.upstream_status,
            provider_request_id=exc.request_id,
            started=started,
            billable=False if exc.kind == CONNECT else None,
        )

    def _estimate(self, ctx: CallContext, attempt: PlannedAttempt) -> int:
        if ctx.input_estimate is None:
            ctx.input_estimate = estimate_input_tokens(
                ctx.endpoint, ctx.payload, attempt.deployment.upstream_model
            )
        return ctx.input_estimate

    def _add(
        self,
        ctx: CallContext,
        attempt: PlannedAttempt,
        usage: Usage,
        source: str,
        provider_request_id: str | None,
        started: float,
        ttft_ms: float | None,
        http_status: int | None,
        error: str | None,
        counted: tuple[Decimal | None, str | None, str | None] | None = None,
    ) -> AttemptRow:
        now = time.perf_counter()
        started_at = ctx.received_at + timedelta(seconds=started - ctx.t0)
        dep = attempt.deployment
        saved = units = unit = None
        if counted is None:
            cost, version = self._price(attempt, started_at, usage)
            if source == CACHE:  # no upstream call: free, and what it would have cost saved
                saved, cost = cost, _ZERO
        else:
            cost, version, units, unit = self._unit_price(
                attempt, started_at, usage, source == PROVIDER, counted
            )
        journalled = ctx.intents.pop(id(attempt), None) if ctx.intents else None
        attempts = ctx.attempts
        # Positional, in AttemptRow's field order (= the attempts table's columns).
        row: AttemptRow = new_row(
            AttemptRow,
            (
                journalled or new_attempt_id(),
                ctx.request_id,
                len(attempts) + 1,
                attempt.role,
                dep.id,
                dep.provider,
                dep.provider_kind,
                dep.upstream_model,
                provider_request_id,
                started_at,
                ttft_ms,
                (now - started) * 1000,
                http_status,
                error,
                usage.input_uncached,
                usage.cached_read,
                usage.cache_write,
                usage.output,
                usage.reasoning,
                source,
                cost,
                version,
                None,  # gate_outcome: set by the gate (strategies/gating.py) with `_replace`
                ctx.drill_id,
                saved,
                units,
                unit,
            ),
        )
        attempts.append(row)
        if ctx.trace is not None:
            telemetry.attempt_recorded(ctx.trace)
        return row

    def _unit_price(
        self,
        attempt: PlannedAttempt,
        at: datetime,
        usage: Usage,
        reported: bool,
        counted: tuple[Decimal | None, str | None, str | None],
    ) -> tuple[Decimal | None, str | None, Decimal | None, str | None]:
        """(cost, price version, units, unit) of a per-unit endpoint's attempt."""
        units, unit, variant = counted
        dep = attempt.deployment
        price = self._prices.price_for(dep.id, dep.upstream_model, dep.provider_kind, at)
        cost = unit_attempt_cost(
            usage, reported, units, unit, price, dep.provider_kind == "dedicated", variant
        )
        if cost is None:  # no price, or priced per token but not per unit
            metrics.UNPRICED_ATTEMPTS.labels(dep.id).inc()
        return cost, price.version if price is not None else None, units, unit

    def replace_attempt(self, ctx: CallContext, row: AttemptRow, **changes: Any) -> AttemptRow:
        """A metered attempt with a later fact added (rows are immutable tuples): the new row
        takes the old one's place in the call's attempts, which is what the ledger gets."""
        new = row._replace(**changes)
        attempts = ctx.attempts
        for index in range(len(attempts) - 1, -1, -1):
            if attempts[index] is row:
                attempts[index] = new
                break
        return new

    def finish(
        self,
        ctx: CallContext,
        plan: Plan,
        status: int,
        error: str | None,
        deployment: str | None,
        gate_outcome: str | None = None,
        consensus: str | None = None,
    ) -> RequestRow:
        """Close the call: build its request row and hand everything to the ledger."""
        attempts = ctx.attempts
        answer_guard = ctx.answer_guard
        if answer_guard is not None and answer_guard.blocked is not None and error is None:
            error = GUARDRAIL_BLOCKED  # answered, but withheld: not a successful request
        if len(attempts) == 1:  # the common case: skip the generic sums
            only = attempts[0]
            total = only.cost_usd
            tokens = (
                only.input_uncached_tokens,
                only.cached_read_tokens,
                only.cache_write_tokens,
                only.output_tokens,
                only.reasoning_tokens,
            )
        else:
            costs = [a.cost_usd for a in attempts]
            total = None
            # No attempt (a request the guard or a tools check refused): nothing was bought,
            # so $0, not the NULL of an unknown price.
            if all(c is not None for c in costs):
                total = sum((c for c in costs if c is not None), _ZERO)
            tokens = (
                sum(a.input_uncached_tokens for a in attempts),
                sum(a.cached_read_tokens for a in attempts),
                sum(a.cache_write_tokens for a in attempts),
                sum(a.output_tokens for a in attempts),
                sum(a.reasoning_tokens for a in attempts),
            )
        principal = ctx.principal
        workload = plan.workload
        team = segment = None
        if principal is not None:
            team = principal.team
            if principal.tags:
                segment = principal.tags.get("segment")
                workload = workload or principal.tags.get("workload")
        # Read now, not when the call began: answer checks add to it until the answer is in.
        guard = ctx.guard
        if guard is not None and len(guard) > STORED_CHARS:
            guard = fit(guard)
        # Positional, in RequestRow's field order (= the requests table's columns).
        row: RequestRow = new_row(
            RequestRow,
            (
                ctx.request_id,
                ctx.received_at,
                ctx.key_id,
                plan.route,
                ctx.requested_model,
                ctx.endpoint,
                workload,
                ctx.stream,
                status,
                error,
                deployment,
                len(attempts),
                *tokens,
                total,
                (time.perf_counter() - ctx.t0) * 1000,
                ctx.ttft_ms,
                gate_outcome,
                plan.reason,
                team,
                segment,
                consensus,
                ctx.workflow_id,
                ctx.batch_id,
                guard,
            ),
        )
        if ctx.intents:
            self._unmetered(ctx)
        self.ledger.record(row, attempts)  # journalled before the answer is written
        # Taken off the context now, so the handler's `settle_leftover` cannot settle it
        # with nothing before the deferred settlement below runs.
        admission, ctx.admission = ctx.admission, None
        after_answer(self._books, ctx, row, attempts, admission)
        return row

    def _books(
        self,
        ctx: CallContext,
        row: RequestRow,
        attempts: list[AttemptRow],
        admission: Settles | None,
    ) -> None:
        """After the answer is written (gateway/runtime/after_answer.py): the key's limits,
        drill counts, then metrics, the request log and spans from the rows the ledger got."""
        if admission is not None:
            admission.settle(row)
        if ctx.drill_id is not None and self.drills is not None:
            self.drills.observe(ctx.drill_id, attempts)
        overhead = metrics.overhead_s(row, attempts)
        if metrics.ENABLED:
            metrics.observe_request(row, attempts, overhead)
        if request_log.ENABLED:
            request_log.write(row, attempts, overhead)
        if ctx.trace is not None:
            telemetry.record(ctx.trace, row, attempts)

    def _unmetered(self, ctx: CallContext) -> None:
        """Upstream calls that started but were never metered: attempts must equal upstream
        calls, so this is a bug wherever it happens. Say so loudly, and close the intents
        (they would otherwise be billed as crashed calls after the next restart)."""
        log.error(
            "request %s finished with %d upstream call(s) not metered",
            ctx.request_id,
            len(ctx.intents),
        )
        metrics.UNMETERED_CALLS.inc(len(ctx.intents))
        if self.journal is not None:
            self.journal.forget(ctx.intents.values())
        ctx.intents.clear()
