"""A route's guard checks applied to one call (`guard_request`), and the answer's
placeholders put back (`restore_body`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping

import orjson

from gateway.core.call_context import CallContext
from gateway.errors import InvalidRequest
from gateway.observability.metrics import count_guard_hits, observe_guard
from gateway.providers.answer_checks import check_stream
from routing.drills import DrillSpec
from routing.guard import (
    BLOCK,
    FLAG,
    GUARDRAIL_BLOCKED,
    LABELS,
    MASK,
    REROUTE,
    Check,
    Guards,
    Verdict,
    allowed,
    inspect,
)
from routing.guard_texts import rewrite, texts
from routing.guard_trial import trial, with_trial
from routing.masking import Masker, Restorer
from routing.model import Plan

BLOCKED = GUARDRAIL_BLOCKED


def guard_request(
    guards: Guards,
    plan: Plan,
    ctx: CallContext,
    headers: list[tuple[bytes, bytes]],
    decided: Mapping[str, int] | None = None,
    unanswered: Mapping[str, str] | None = None,
) -> tuple[Plan, bool]:
    """Run the route's request checks: raise the 400 of a block, narrow the plan for
    a reroute, mask the body in place (remembering the placeholders if the answer gets
    its originals back), and say what was done in `x-farebox-guard` (and `ctx.guard`,
    the ledger's `requests.guard`). `decided` holds the guard models' hits, `unanswered`
    the checks whose model gave no verdict and why (gateway/guard/model.py): said in the
    header even when nothing fired ("pass; model-timeout=NAME"). Returns the plan and
    whether the body was masked. What was found is counted, never kept or logged."""
    checks = guards.request
    started = time.perf_counter()
    verdict = inspect(checks, texts(ctx.endpoint, ctx.payload), decided, guards.memo)
    observe_guard(plan.route, time.perf_counter() - started)
    if verdict.hits:
        _count(plan.route, checks, verdict.hits)
    outcome = verdict.outcome
    if outcome is None and not unanswered:
        return plan, False
    ctx.guard = _header(verdict, unanswered)
    _say(ctx, headers)
    if verdict.blocked_by is not None:
        why = unanswered.get(verdict.blocked_by) if unanswered else None
        raise InvalidRequest(
            f"The request was blocked by the guardrail {verdict.blocked_by!r} of route "
            f"{plan.route!r}"
            + (f" (its guard model gave no verdict: {why}; it fails closed)." if why else "."),
            param=None,
            code=BLOCKED,
        )
    if verdict.allow_kinds is not None:
        kept = tuple(a for a in plan.attempts if allowed(a.deployment, verdict.allow_kinds))
        if not kept:
            raise InvalidRequest(
                f"The guardrail {', '.join(verdict.rerouted_by)!r} allows this request only "
                f"on {', '.join(sorted(verdict.allow_kinds))} deployments, and route "
                f"{plan.route!r} has none.",
                param=None,
                code=BLOCKED,
            )
        plan = dataclasses.replace(plan, attempts=kept)
    masker = verdict.masker
    if masker is not None:
        rewrite(ctx.endpoint, ctx.payload, masker.mask)
        restoring = {c.name for c in checks if c.restore}
        if restoring.intersection(verdict.masked_by):
            ctx.unmask = masker
    return plan, masker is not None


def _header(verdict: Verdict, unanswered: Mapping[str, str] | None = None) -> str:
    # "pass": no check fired, but a guard model gave no verdict and its check let it by.
    parts = [verdict.outcome or "pass"]
    for action, names in (
        (BLOCK, [verdict.blocked_by] if verdict.blocked_by else []),
        (REROUTE, verdict.rerouted_by),
        (MASK, verdict.masked_by),
        (FLAG, verdict.flagged_by),
    ):
        if names:
            parts.append(f"{LABELS[action]}={','.join(names)}")
    if unanswered:
        for why in sorted(set(unanswered.values())):
            names = [name for name, reason in unanswered.items() if reason == why]
            parts.append(f"model-{why}={','.join(names)}")
    return "; ".join(parts)


def restore_body(body: bytes, masker: Masker) -> bytes:
    """A JSON answer with the request's placeholders replaced by their originals, each
    escaped as a JSON string's inside."""
    text = body.decode("utf-8", "replace")
    restored = masker.unmask(text, escape=_json_inside)
    return body if restored == text else restored.encode()


def _json_inside(value: str) -> str:
    return orjson.dumps(value).decode()[1:-1]


def restore_stream(
    chunks: AsyncIterator[bytes], masker: Masker, endpoint: str
) -> AsyncIterator[bytes]:
    """A streamed answer with the request's placeholders put back in each text (chat and
    completion choices, Responses output text and the events that repeat it whole; the
    Anthropic stream is translated from the chat one after this). A placeholder a model
    writes over several chunks (`<EM` `AIL_1>`) is held back until it is whole, and what is
    held goes out with its text's end at the latest."""
    return check_stream(Restorer(masker), endpoint, chunks, _nothing)


def _nothing() -> None:
    return None


def answer_checked(route: str, ctx: CallContext, headers: list[tuple[bytes, bytes]]) -> None:
    """After a non-stream answer was checked: its checks' hits in the metrics, and
    `x-farebox-guard` saying what the request's and the answer's checks did."""
    guard = ctx.answer_guard
    if guard is None or not guard.hits:
        return
    _count(route, guard.checks, guard.hits)
    _say(ctx, headers)


async def answer_counted(
    chunks: AsyncIterator[bytes], route: str, ctx: CallContext
) -> AsyncIterator[bytes]:
    """A checked stream, its checks' hits counted in the metrics when it ends (its header
    went out before the answer: the ledger's `requests.guard` has the whole story)."""
    try:
        async for block in chunks:
            yield block
    finally:
        if ctx.answer_guard is not None:
            _count(route, ctx.answer_guard.checks, ctx.answer_guard.hits)


def _count(route: str, checks: tuple[Check, ...], hits: Mapping[str, int]) -> None:
    """Findings per check into `farebox_guard_hits_total`, labelled with each's action."""
    actions = {c.name: c.action for c in checks}
    for name, n in hits.items():
        count_guard_hits(route, name, actions[name], n)


def guard_trial(active: Mapping[str, DrillSpec], route: str, ctx: CallContext) -> dict[str, str]:
    """A drill cohort's request read by the drill's trial checks (before the route's own
    checks mask anything): check name → what it would have done. Nothing is acted on."""
    spec = active.get(route)
    if spec is None or not spec.guard or spec.id != ctx.drill_id:
        return {}
    return trial(spec.guard, texts(ctx.endpoint, ctx.payload))


def note_trial(fired: dict[str, str], ctx: CallContext, headers: list[tuple[bytes, bytes]]) -> None:
    """What the trial checks would have done, added to `x-farebox-guard` and `ctx.guard`."""
    ctx.guard = with_trial(ctx.guard, fired)
    _say(ctx, headers)


def _say(ctx: CallContext, headers: list[tuple[bytes, bytes]]) -> None:
    """`x-farebox-guard`: `ctx.guard` as it now stands, in place of what it said before."""
    headers[:] = [h for h in headers if h[0] != b"x-farebox-guard"]
    headers.append((b"x-farebox-guard", str(ctx.guard).encode()))
