"""Strategy `consensus`: ask N targets the same question at once and compare the answers.

1. start `n` candidates (gateway.strategies.fanout: breakers skipped, retries, the route's
   deadline);
   a candidate that fails for good is replaced by the next target or fallback, if any;
2. when every candidate has answered or failed (or the deadline passed: the rest are
   cancelled and billed), compare the answers (routing.consensus, pure);
3. `agree` / `majority`: the client gets the majority answer; `disagree`: with
   `on_disagree: pass` the tie-break's pick, with `fail` a 409 whose body lists every
   candidate's answer (the OpenAI SDKs raise ConflictError).

Either way the response says `x-farebox-consensus: agree|majority|disagree` and
`x-farebox-consensus-votes: K/M` (answers agreeing with the one returned / answers), and
the request row carries the outcome (`requests.consensus`). Every candidate is an attempt
in the ledger, and `x-farebox-cost-usd` is what all of them cost together.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import orjson

from gateway.core.metering import CallContext, error_class
from gateway.core.ports import AttemptRunner, Completion
from gateway.errors import Conflict
from gateway.ledger_rows import AttemptRow
from gateway.providers.base import UpstreamReply
from gateway.strategies.fanout import Fanout, Slot
from gateway.strategies.responses_view import answer_view
from routing.consensus import DISAGREE, Ballot, Verdict, candidates_body, decide
from routing.model import Plan, PlannedAttempt

DISAGREEMENT = "consensus_disagreement"


class ConsensusDisagreement(Conflict):
    """409 in the OpenAI error format, with every candidate's answer in `candidates`."""

    __slots__ = ("candidates",)

    def __init__(
        self, message: str, candidates: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]
    ) -> None:
        super().__init__(message, code=DISAGREEMENT, headers=headers)
        self.candidates = candidates

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.error_type,
                    "param": self.param,
                    "code": self.code,
                    "candidates": self.candidates,
                }
            }
        )


async def complete_consensus(service: AttemptRunner, ctx: CallContext, plan: Plan) -> Completion:
    policy = plan.fanout
    assert policy is not None

    def on_reply(
        attempt: PlannedAttempt, reply: UpstreamReply, started: float
    ) -> tuple[UpstreamReply, AttemptRow]:
        return reply, service.record_success(ctx, plan, attempt, reply, started)

    fan: Fanout[UpstreamReply] = Fanout(service, ctx, plan, on_reply)
    answers: list[Slot[UpstreamReply]] = []
    failed: list[Slot[UpstreamReply]] = []
    try:
        async for slot in fan.finished(policy.n):
            if slot.result is not None:
                answers.append(slot)
            else:
                failed.append(slot)
                fan.start(1)  # a replacement, if a target or fallback is left
    except asyncio.CancelledError:
        fan.hung_up()
        raise
    if not answers:
        raise fan.give_up(fan.timed_out)
    verdict = decide(_ballots(service, ctx, answers), policy.compare, policy.tie_break)
    winner = next(s for s in answers if s.order == verdict.winner.order)
    votes = f"{verdict.agreeing}/{len(verdict.votes)}"
    headers = [(b"x-farebox-consensus", verdict.outcome.encode())]
    headers.append((b"x-farebox-consensus-votes", votes.encode()))
    if verdict.outcome == DISAGREE and policy.on_disagree == "fail":
        request = service.meter.finish(
            ctx, plan, 409, DISAGREEMENT, None, consensus=verdict.outcome
        )
        headers.append((b"x-farebox-attempts", str(request.attempts).encode()))
        if request.cost_usd is not None:
            headers.append((b"x-farebox-cost-usd", f"{request.cost_usd.normalize():f}".encode()))
        raise ConsensusDisagreement(
            _message(plan, verdict, len(failed)), _candidates(verdict, failed), headers
        )
    assert winner.result is not None
    request = service.meter.finish(
        ctx, plan, 200, None, winner.attempt.deployment.id, consensus=verdict.outcome
    )
    return Completion(
        body=winner.result.raw,
        deployment=winner.attempt.deployment.id,
        attempts=request.attempts,
        cost_usd=request.cost_usd,
        fallback_reason="; ".join(fan.reasons) or None,
        headers=headers,
    )


def _ballots(
    service: AttemptRunner, ctx: CallContext, answers: list[Slot[UpstreamReply]]
) -> list[Ballot]:
    out = []
    for slot in answers:
        assert slot.result is not None and slot.row is not None
        at = ctx.received_at + timedelta(seconds=slot.started - ctx.t0)
        strength = service.meter.output_price(slot.attempt, at)
        cost = slot.row.cost_usd
        out.append(
            Ballot(
                order=slot.order,
                deployment=slot.attempt.deployment.id,
                data=answer_view(ctx.endpoint, slot.result.data),
                cost_usd=None if cost is None else float(cost),
                strength=None if strength is None else float(strength),
            )
        )
    return out


def _message(plan: Plan, verdict: Verdict, failures: int) -> str:
    answered = len(verdict.votes)
    if answered == 1:
        what = "only one candidate answered, and one answer is not a consensus"
    else:
        what = f"the {answered} answers split {'/'.join(str(len(g)) for g in verdict.groups)}"
    if verdict.differing_fields:
        what += f" (they differ in {', '.join(verdict.differing_fields[:10])})"
    if failures:
        what += f"; {failures} candidate(s) failed"
    return (
        f"The candidates of consensus route {plan.route!r} disagree: {what}. "
        "Every answer is in error.candidates."
    )


def _candidates(verdict: Verdict, failed: list[Slot[UpstreamReply]]) -> list[dict[str, Any]]:
    shown = candidates_body(verdict)
    for slot in failed:
        shown.append(
            {
                "deployment": slot.attempt.deployment.id,
                "kind": None,
                "answer": None,
                "group": None,
                "error": error_class(slot.error) if slot.error is not None else None,
            }
        )
    return shown
