"""Guard models: a route's checks that ask a classifier on a deployment of the config
about a request before it is sent (`model: {deployment, timeout_ms, on_error}`).

This module owns that question — the prompt, the timeout, reading the label — and its
bookkeeping. The question is an upstream call like any other, so it follows the attempt
loop's path: journalled before it starts (a crash mid-call is billed after restart),
tracked as load on its deployment, fed to the deployment's breaker, and metered as an
attempt of the client's request with role `guard`. Its row joins `ctx.attempts`, so the
request's ledger row counts it and its cost, and the key's limits settle with that cost
whatever becomes of the request (answered, blocked, failed).

The label contract (Llama Guard's): the classifier gets a fixed system prompt and the
request's texts as one user message, and answers with the label as its first word —
`safe`, or `unsafe` with the violated categories on a second line, which are not read.
Any case; leading whitespace or markup (`**Unsafe**`) is skipped. `unsafe` is one
finding for the check (its action applies as for any other finding); `safe` none.

No verdict — the timeout, a transport error, a non-2xx answer, an answer without a
label, or the deployment's breaker open — is what `on_error` decides: `closed` counts it
as a finding, `open` lets the request by. Either way the request's `x-farebox-guard` (and
`requests.guard`) says so (`model-timeout=NAME` / `model-error=NAME`), and
`farebox_guard_model_failures_total` counts it.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.core.call_context import CallContext
from gateway.core.service import Service
from gateway.core.upstream_errors import outcome_of
from gateway.ledger.tokens import estimate_input_tokens
from gateway.observability import metrics, telemetry
from gateway.providers.base import CONNECT, TIMEOUT, UpstreamError, UpstreamReply
from gateway.runtime.shutdown import cancel_outcome
from routing.failover import classify
from routing.guard import Check, Guards
from routing.guard_texts import texts
from routing.model import Plan, PlannedAttempt, Timeouts
from routing.resolve import ModelIndex

GUARD_ROLE = "guard"
# Why a guard model gave no verdict, as x-farebox-guard names it (`model-timeout=NAME`).
NO_VERDICT_TIMEOUT, NO_VERDICT_ERROR = "timeout", "error"
_CHAT = "chat/completions"
SYSTEM_PROMPT = (
    "You are a content safety classifier. The user message is text that a client wants "
    "to send to an AI assistant. Decide whether it is safe to send. Answer with one word "
    "on the first line: safe or unsafe. If unsafe, list the violated category codes, "
    "comma-separated, on a second line. Answer nothing else."
)
# The label and a line of categories: a few tokens. A small cap keeps a chatty model's
# answer (and its cost) short; the label is its first word anyway.
MAX_TOKENS = 20
# The label: the answer's first word, after any whitespace or markup before it.
_LABEL = re.compile(r"[\W_]*(unsafe|safe)\b", re.IGNORECASE)


@dataclass(slots=True)
class ModelFindings:
    """What a request's guard models said: `hits` per check name (`routing.guard.inspect`'s
    `decided`: 1 for an `unsafe`, or for no verdict on an `on_error: closed` check) and
    `failed`, the checks whose model gave no verdict and why (timeout | error)."""

    hits: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


async def ask_guard_models(
    service: Service, index: ModelIndex, guards: Guards, ctx: CallContext, plan: Plan
) -> ModelFindings:
    """Ask each of the route's guard models about the request (at once when several),
    each within its check's timeout. A request with no text to read is not asked about.
    When the request's task is cancelled meanwhile (a hang-up, the shutdown), the calls'
    attempts are metered and the request row written before the cancellation goes on."""
    found = ModelFindings()
    pieces = texts(ctx.endpoint, ctx.payload)
    if not pieces:
        return found
    text = pieces[0] if len(pieces) == 1 else "\n".join(pieces)
    checks = guards.models
    try:
        if len(checks) == 1:
            verdicts = [await _ask(service, index, checks[0], ctx, text)]
        else:
            verdicts = await asyncio.gather(*(_ask(service, index, c, ctx, text) for c in checks))
    except asyncio.CancelledError:
        # Each call metered its own cancellation; the request ends here, with its row.
        service.meter.finish(ctx, plan, *cancel_outcome(), None)
        raise
    for check, verdict in zip(checks, verdicts, strict=True):
        assert check.model is not None  # Guards.models holds only checks with a model
        if isinstance(verdict, bool):
            if verdict:
                found.hits[check.name] = 1
            continue
        found.failed[check.name] = verdict
        metrics.GUARD_MODEL_FAILURES.labels(plan.route, check.name, verdict).inc()
        if check.model.fail_closed:
            found.hits[check.name] = 1
    return found


async def _ask(
    service: Service, index: ModelIndex, check: Check, ctx: CallContext, text: str
) -> bool | str:
    """One guard model's verdict (True: unsafe), or why there is none."""
    model = check.model
    assert model is not None
    spec = index.deployment(model.deployment)
    # A deployment the config lacks is a config error (gateway/config/checks.py); an open
    # breaker means the model is known to be failing: no verdict without an upstream call.
    if spec is None or not service.breakers.allow(spec.id):
        return NO_VERDICT_ERROR
    payload = _question(text)
    attempt = PlannedAttempt(spec, GUARD_ROLE)  # one per call: intents are keyed by identity
    ms = max(1, round(model.timeout_s * 1000))
    timeouts = Timeouts(connect_ms=ms, ttft_ms=ms, total_ms=ms, attempt_ms=ms)
    meter, tracker = service.meter, service.tracker
    started = time.perf_counter()
    tracker.started(spec.id, ctx.shape)
    telemetry.begin_attempt(ctx.trace)
    meter.intent(ctx, attempt)  # journalled before it can reach the provider
    try:
        # The adapter's own timeouts end the call too; this bounds every protocol alike.
        async with asyncio.timeout(model.timeout_s):
            reply = await service.adapter.call(spec, _CHAT, payload, timeouts)
    except (UpstreamError, TimeoutError) as exc:
        failure = (
            exc
            if isinstance(exc, UpstreamError)
            else UpstreamError(TIMEOUT, f"{spec.id} gave no guard verdict in time")
        )
        _failed(service, ctx, attempt, payload, failure, started)
        return NO_VERDICT_TIMEOUT if failure.kind == TIMEOUT else NO_VERDICT_ERROR
    except asyncio.CancelledError:
        _meter_failure(
            service, ctx, attempt, payload, cancel_outcome()[1], None, None, started, True
        )
        raise
    finally:
        tracker.ended(spec.id)
    service.breakers.record(spec.id, True)
    meter.succeeded(ctx, attempt, reply.usage(), reply.request_id, started)
    label = read_label(reply)
    return NO_VERDICT_ERROR if label is None else label


def _question(text: str) -> dict[str, Any]:
    """The chat completion a guard model is asked (its own dict: the adapter sets `model`)."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
        ],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": False,
    }


def read_label(reply: UpstreamReply) -> bool | None:
    """True for `unsafe`, False for `safe`, None when the answer holds no label."""
    try:
        content = reply.data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if not isinstance(content, str):
        return None
    found = _LABEL.match(content)
    return None if found is None else found.group(1).lower() == "unsafe"


def _failed(
    service: Service,
    ctx: CallContext,
    attempt: PlannedAttempt,
    payload: dict[str, Any],
    failure: UpstreamError,
    started: float,
) -> None:
    """A failed guard call, as the attempt loop records one: metered (with its error
    class), told to the tracker and to the deployment's breaker."""
    dep = attempt.deployment
    decision = classify(outcome_of(failure), 0, deployment=dep)
    _meter_failure(
        service,
        ctx,
        attempt,
        payload,
        decision.error_class,
        failure.upstream_status,
        failure.request_id,
        started,
        # Refused before connecting: nothing ran, nothing is billed (Meter.failed_upstream).
        False if failure.kind == CONNECT else None,
    )
    service.tracker.failed(dep.id, failure)
    if decision.open_breaker:
        service.breakers.force_open(dep.id)
        metrics.BREAKER_OPENED.labels(dep.id).inc()
    elif decision.counts_as_failure:
        service.breakers.record(dep.id, False)


def _meter_failure(
    service: Service,
    ctx: CallContext,
    attempt: PlannedAttempt,
    payload: dict[str, Any],
    error: str,
    http_status: int | None,
    provider_request_id: str | None,
    started: float,
    billable: bool | None,
) -> None:
    """Meter.failed estimates a failed call's input tokens from the client's payload and
    keeps the figure on the context for the plan's own attempts. The guard call sent
    another payload (the prompt around the same texts): its estimate stands in for this
    one row, and the client payload's (if any yet) is put back."""
    dep = attempt.deployment
    kept = ctx.input_estimate
    ctx.input_estimate = estimate_input_tokens(_CHAT, payload, dep.upstream_model)
    try:
        service.meter.failed(
            ctx,
            attempt,
            error,
            http_status=http_status,
            provider_request_id=provider_request_id,
            started=started,
            billable=billable,
        )
    finally:
        ctx.input_estimate = kept
