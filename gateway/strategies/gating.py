"""Quality-gated completions: check each answer, repair or escalate until one passes.

The state machine, for a route whose plan carries a gate:

1. walk the plan (ordinary failover on HTTP errors) until a deployment answers;
2. check the answer (routing.gates, pure); a pass goes to the client;
3. on a failure, `on_fail: repair` re-prompts that deployment once with the validator's
   errors (role `repair`); if that fails too, or with `on_fail: escalate`, the walk goes on
   from the next target (role `escalation`);
4. when no target is left, the client gets the last answer that failed, marked
   `x-farebox-gate: fail; …`, rather than an error: it is still the best answer there is.

Every attempt is metered (a failed answer was billed) with its gate outcome; the request
row carries the final outcome. `judge` and `finish_gated` are shared with the speculative
strategy (gateway.strategies.speculative), which gates answers that arrive in parallel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from gateway.core.metering import CallContext
from gateway.core.ports import AttemptRunner, Completion
from gateway.errors import GatewayError
from gateway.ledger_rows import AttemptRow
from gateway.providers.base import UpstreamReply
from gateway.strategies.responses_view import (
    RESPONSES,
    answer_view,
    chat_views,
    responses_repair,
)
from routing.gates import GateResult, check, repair_message
from routing.model import NO_RETRY, Plan, PlannedAttempt

PASS = "pass"


@dataclasses.dataclass(slots=True)
class Answer:
    """An answer that has been metered and checked against the route's gate."""

    attempt: PlannedAttempt
    reply: UpstreamReply
    result: GateResult
    row: AttemptRow


async def complete_gated(service: AttemptRunner, ctx: CallContext, plan: Plan) -> Completion:
    policy = plan.gate
    assert policy is not None
    remaining = list(plan.attempts)
    reasons: list[str] = []
    last: Answer | None = None
    repaired: set[str] = set()
    while remaining:
        step = dataclasses.replace(plan, attempts=tuple(remaining))
        try:
            attempt, reply, started, failed = await service.walk(
                ctx, step, finish_on_failure=last is None
            )
        except GatewayError:
            if last is None:
                raise  # no answer at all: the walk has written the request row
            reasons.append("no target left that answered")
            break
        reasons.extend(failed)
        answer = judge(service, ctx, plan, attempt, reply, started)
        if answer.result.passed:
            return finish_gated(service, ctx, plan, answer, reasons)
        last = answer
        dep = attempt.deployment
        reasons.append(f"{dep.id}: gate {answer.result.outcome}")
        if policy.on_fail == "repair" and dep.id not in repaired:
            repaired.add(dep.id)
            fixed = await _repair(service, ctx, plan, answer)
            if fixed is not None:
                if fixed.result.passed:
                    return finish_gated(service, ctx, plan, fixed, reasons)
                last = fixed
                reasons.append(f"{dep.id}: repair failed gate {fixed.result.outcome}")
        position = next(i for i, a in enumerate(remaining) if a.deployment.id == dep.id)
        remaining = [PlannedAttempt(a.deployment, "escalation") for a in remaining[position + 1 :]]
    assert last is not None
    return finish_gated(service, ctx, plan, last, reasons)


def judge(
    service: AttemptRunner,
    ctx: CallContext,
    plan: Plan,
    attempt: PlannedAttempt,
    reply: UpstreamReply,
    started: float,
) -> Answer:
    """Meter an upstream answer and check it against the plan's gate (the outcome goes on
    its attempt row and into the live pass rates)."""
    assert plan.gate is not None
    result = check(plan.gate.spec, *chat_views(ctx.endpoint, ctx.payload, reply.data))
    row = service.record_success(ctx, plan, attempt, reply, started)
    # Rows are immutable tuples: the verdict replaces the metered row in ctx.attempts.
    row = service.meter.replace_attempt(ctx, row, gate_outcome=result.outcome)
    if service.quality is not None:
        tokens = row.input_uncached_tokens + row.cached_read_tokens + row.cache_write_tokens
        service.quality.observe(plan.route, attempt.deployment.id, tokens, result.passed)
    return Answer(attempt, reply, result, row)


async def _repair(
    service: AttemptRunner, ctx: CallContext, plan: Plan, failed: Answer
) -> Answer | None:
    """Re-prompt the same deployment once with what was wrong; None if it did not answer."""
    original = ctx.payload
    ctx.payload = _repair_payload(original, failed)
    ctx.input_estimate = None
    step = dataclasses.replace(
        plan, attempts=(PlannedAttempt(failed.attempt.deployment, "repair"),), retry=NO_RETRY
    )
    try:
        attempt, reply, started, _ = await service.walk(ctx, step, finish_on_failure=False)
    except GatewayError:
        return None
    finally:
        ctx.payload = original
        ctx.input_estimate = None
    # Judged against the client's request (restored above), not the repair prompt.
    return judge(service, ctx, plan, attempt, reply, started)


def _repair_payload(payload: dict[str, Any], failed: Answer) -> dict[str, Any]:
    if "messages" not in payload and "input" in payload:  # a Responses request
        said = said_of(answer_view(RESPONSES, failed.reply.data))
        return responses_repair(payload, said, failed.result)
    messages = list(payload.get("messages") or [])
    said = said_of(failed.reply.data)
    # The failed answer goes back as plain assistant text: a tool-call message would have
    # to be followed by tool results, which we do not have.
    messages.append({"role": "assistant", "content": said or "(no answer)"})
    messages.append({"role": "user", "content": repair_message(failed.result)})
    return {**payload, "messages": messages}


def said_of(data: dict[str, Any]) -> str:
    """What a chat answer said, tool calls included, as plain text."""
    choices = data.get("choices")
    message = choices[0].get("message") if isinstance(choices, list) and choices else None
    said = ""
    if isinstance(message, dict):
        said = message.get("content") or ""
        for call in message.get("tool_calls") or ():
            function = call.get("function", {}) if isinstance(call, dict) else {}
            said += f"\n[tool call {function.get('name')}: {function.get('arguments')}]"
    return said.strip()


def finish_gated(
    service: AttemptRunner,
    ctx: CallContext,
    plan: Plan,
    answer: Answer,
    reasons: list[str],
) -> Completion:
    """Close a gated request with `answer`: passed, or the best failed one there is."""
    result = answer.result
    role = answer.attempt.role
    if result.passed:
        verdict = f"{PASS}; after {role}" if role in ("repair", "escalation") else PASS
    else:
        verdict = f"fail; {result.outcome}: {result.failures[0] if result.failures else ''}"
    # A gate's normalized body is chat-shaped: a Responses client gets the answer as it came.
    rewritten = result.body is not None and ctx.endpoint != RESPONSES
    body = orjson.dumps(result.body) if rewritten else answer.reply.raw
    request = service.meter.finish(
        ctx, plan, 200, None, answer.attempt.deployment.id, gate_outcome=result.outcome
    )
    return Completion(
        body=body,
        deployment=answer.attempt.deployment.id,
        attempts=request.attempts,
        cost_usd=request.cost_usd,
        fallback_reason="; ".join(reasons) or None,
        gate=verdict,
    )
