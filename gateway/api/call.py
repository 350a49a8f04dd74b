"""One client call from a parsed body to the service's answer, whatever the wire format.

The OpenAI and Anthropic handlers differ in how they parse requests and render answers;
everything between — plan, trace, drill, key limits, response cache, the service call,
drill observation and opt-in payload logging — is this module, once.
"""

from __future__ import annotations

from typing import Any

from gateway.api.asgi import Headers, Scope
from gateway.api.common import (
    admit,
    apply_drill,
    observe_answer,
    plan_for,
    start_trace,
    workflow_tag,
)
from gateway.cache.response import Lookup
from gateway.core.metering import CallContext
from gateway.core.service import Completion, StreamingCompletion
from gateway.guard.apply import (
    answer_checked,
    answer_counted,
    guard_trial,
    note_trial,
    restore_body,
    restore_stream,
)
from gateway.guard.run import run_guards, watch_answer
from gateway.keys.auth import Principal
from gateway.observability import payload_log
from gateway.state import GatewayState
from routing.model import Plan


class Call:
    """A call that has been planned, admitted and looked up in the response cache."""

    __slots__ = ("cached", "ctx", "headers", "log_endpoint", "plan", "state")

    def __init__(
        self,
        state: GatewayState,
        ctx: CallContext,
        plan: Plan,
        cached: Lookup | None,
        log_endpoint: str,
        headers: Headers,
    ) -> None:
        self.state, self.ctx, self.plan, self.cached = state, ctx, plan, cached
        self.log_endpoint = log_endpoint
        # The response's headers: the service's extra ones (x-farebox-consensus…) join them.
        self.headers = headers

    @classmethod
    async def begin(
        cls,
        state: GatewayState,
        scope: Scope,
        headers: Headers,
        principal: Principal | None,
        ctx: CallContext,
        body_bytes: int,
        log_endpoint: str,
    ) -> Call:
        """Plan the call (naming the route in a header), then apply a running drill, take
        the key's limits and ask the cache. Raises the client's 4xx/429/503.

        A workflow id the handler set already (the Anthropic body's tag, a Responses chain)
        stays; otherwise the client's tag, checked before anything is planned or counted."""
        if ctx.workflow_id is None:
            ctx.workflow_id = workflow_tag(scope, ctx.payload)
        plan, ctx.shape = plan_for(state, ctx.requested_model, headers, ctx.payload, scope)
        ctx.principal = principal
        ctx.route, ctx.workload, ctx.body_bytes = plan.route, plan.workload, body_bytes
        start_trace(ctx, scope)
        plan = apply_drill(state, plan, ctx, headers)
        # A drill's trial checks read the request as the client sent it (before masking).
        trial = (
            guard_trial(state.drills.active, plan.route, ctx)
            if ctx.drill_id is not None and state.drills is not None
            else None
        )
        masked = admitted = False
        guards = state.guards.get(plan.route)
        if guards is not None:  # after the drill: no cohort skips a reroute
            if guards.models:
                # A guard model's call is paid for: the key's limits are taken before it,
                # and the request's row (which settles them) holds its `guard` attempt.
                ctx.admission = await admit(
                    state, principal, plan, ctx.payload, body_bytes, headers
                )
                admitted = True
            plan, masked = await run_guards(state.service, state.index, guards, plan, ctx, headers)
        if trial:
            note_trial(trial, ctx, headers)
        if guards is not None:
            watch_answer(guards, ctx)
        if not admitted:
            ctx.admission = await admit(state, principal, plan, ctx.payload, body_bytes, headers)
        # Routes without `cache:` pay this one check (gateway/cache/response.py). A masked
        # request is never cached: its placeholders mean another request's values.
        cached = (
            None
            if state.cache is None or masked
            else await state.cache.lookup(plan, ctx, scope, headers)
        )
        return cls(state, ctx, plan, cached, log_endpoint, headers)

    async def stream(self, include_usage: bool) -> StreamingCompletion:
        service, ctx, plan = self.state.service, self.ctx, self.plan
        streaming = await (
            service.stream(ctx, plan, include_usage)
            if self.cached is None
            else self.cached.stream(service, ctx, plan, include_usage)
        )
        if ctx.unmask is not None:
            streaming.chunks = restore_stream(streaming.chunks, ctx.unmask, ctx.endpoint)
        if ctx.answer_guard is not None:  # its header went out; the metrics at the end
            streaming.chunks = answer_counted(streaming.chunks, plan.route, ctx)
        if payload_log.wanted(self.state.config.routes, plan.route):
            streaming.chunks = payload_log.tap(streaming.chunks, **self._log_fields())
        self.headers.extend(streaming.headers)
        return streaming

    async def complete(self) -> Completion:
        service, ctx, plan = self.state.service, self.ctx, self.plan
        result = await (
            service.complete(ctx, plan)
            if self.cached is None
            else self.cached.complete(service, ctx, plan)
        )
        self.headers.extend(result.headers)
        if ctx.unmask is not None:
            result.body = restore_body(result.body, ctx.unmask)
        if ctx.answer_guard is not None:
            answer_checked(plan.route, ctx, self.headers)
        return result

    def answered(self, result: Completion) -> None:
        """After a non-stream answer: drill shape checks and the opt-in payload log."""
        observe_answer(self.state, self.plan, self.ctx, result.deployment, result.body)
        if payload_log.wanted(self.state.config.routes, self.plan.route):
            payload_log.write(answer=payload_log.answer_part(result.body), **self._log_fields())

    def settle_leftover(self) -> None:
        """Normally settled by the ledger row; this frees a reservation a failure skipped."""
        if self.ctx.admission is not None:
            self.ctx.admission.settle(None)

    def _log_fields(self) -> dict[str, Any]:
        ctx = self.ctx
        return {
            "request_id": ctx.request_id,
            "route": self.plan.route,
            "key": ctx.key_id,
            "endpoint": self.log_endpoint,
            "payload": ctx.payload,
        }
