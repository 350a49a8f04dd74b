"""Strategy `speculative`: start N targets at once, keep the first answer that passes the
route's quality gate, cancel the rest.

1. start `n` candidates (gateway.strategies.fanout: breakers skipped, retries, the route's
   deadline);
2. each answer is metered and gated as it arrives (gateway.strategies.gating.judge); the first that
   passes goes to the client and every candidate still running is cancelled — recorded as
   attempts with error class `cancelled`, estimated tokens and their cost (they are billed);
3. a candidate that fails (an error, or an answer that fails the gate) makes way for the
   next target or fallback not started yet;
4. when nothing passes, the client gets the last answer that failed the gate, marked
   `x-farebox-gate: fail; …` as gated routes do, or the error when nothing answered.
"""

from __future__ import annotations

import asyncio

from gateway.core.metering import CallContext
from gateway.core.ports import AttemptRunner, Completion
from gateway.ledger_rows import AttemptRow
from gateway.providers.base import UpstreamReply
from gateway.strategies.fanout import CANCELLED, Fanout
from gateway.strategies.gating import Answer, finish_gated, judge
from routing.model import Plan, PlannedAttempt


async def complete_speculative(service: AttemptRunner, ctx: CallContext, plan: Plan) -> Completion:
    policy = plan.fanout
    assert policy is not None and plan.gate is not None

    def on_reply(
        attempt: PlannedAttempt, reply: UpstreamReply, started: float
    ) -> tuple[Answer, AttemptRow]:
        answer = judge(service, ctx, plan, attempt, reply, started)
        return answer, answer.row

    fan: Fanout[Answer] = Fanout(service, ctx, plan, on_reply)
    last: Answer | None = None
    try:
        async for slot in fan.finished(policy.n):
            answer = slot.result
            if answer is not None and answer.result.passed:
                cancelled = fan.cancel_rest(CANCELLED)
                if cancelled:
                    fan.reasons.append(f"{cancelled} slower candidate(s) cancelled")
                await fan.unwind()
                return _won(finish_gated(service, ctx, plan, answer, fan.reasons), cancelled)
            if answer is not None:
                last = answer
                fan.reasons.append(f"{answer.attempt.deployment.id}: gate {answer.result.outcome}")
            fan.start(1)  # the next target or fallback, if any is left
    except asyncio.CancelledError:
        fan.hung_up()
        raise
    if last is None:
        raise fan.give_up(fan.timed_out)
    return _won(finish_gated(service, ctx, plan, last, fan.reasons), 0)


def _won(done: Completion, cancelled: int) -> Completion:
    done.headers.append((b"x-farebox-speculative-cancelled", str(cancelled).encode()))
    return done
