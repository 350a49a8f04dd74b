"""A route's guard checks run on one call, in order, wherever the call comes from (a live
request in gateway/api/call.py, a line of a batch in gateway/batch/lines.py): the guard
models are asked, the request checks decide (a refusal still writes the request's row),
and the answer checks are set up to read what comes back."""

from __future__ import annotations

from gateway.core.call_context import CallContext
from gateway.core.service import Service
from gateway.errors import InvalidRequest
from gateway.guard.apply import BLOCKED, guard_request
from gateway.guard.model import ask_guard_models
from routing.answer_guard import AnswerGuard
from routing.guard import Guards
from routing.model import Plan
from routing.resolve import ModelIndex


async def run_guards(
    service: Service,
    index: ModelIndex,
    guards: Guards,
    plan: Plan,
    ctx: CallContext,
    headers: list[tuple[bytes, bytes]],
) -> tuple[Plan, bool]:
    """The plan the request checks leave (narrowed by a reroute) and whether they masked
    the body; raises the 400 of a refusal after writing the request's ledger row (with a
    guard model's attempt, if one was asked)."""
    masked = False
    if guards.request:
        found = await ask_guard_models(service, index, guards, ctx, plan) if guards.models else None
        try:
            plan, masked = (
                guard_request(guards, plan, ctx, headers)
                if found is None
                else guard_request(guards, plan, ctx, headers, found.hits, found.failed)
            )
        except InvalidRequest:
            # Refused before the plan's upstream calls: still one request row (with a guard
            # model's attempt and its cost, if any) saying which check refused it.
            service.meter.finish(ctx, plan, 400, BLOCKED, None)
            raise
    return plan, masked


def watch_answer(guards: Guards, ctx: CallContext) -> None:
    """The answer checks, ready for what comes back (after the request's own checks, so
    the ledger's summary starts with theirs)."""
    if not guards.answer:
        return
    ctx.answer_guard = AnswerGuard(guards.answer, ctx.guard)
    if ctx.unmask is not None:
        # The answer's placeholders number on from the request's, so putting the request's
        # values back never replaces one the answer checks masked.
        ctx.answer_guard.masker.counts.update(ctx.unmask.counts)
