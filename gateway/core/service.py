"""Where routing meets I/O: turns a plan into the client's answer, JSON or stream.

Handlers in gateway.api call this module and never a provider directly. The attempt loop
itself (retries, breakers, hedging, deadlines) is in gateway.core.attempts; gated routes go
through gateway.strategies.gating; fan-out routes (consensus, speculative) through
gateway.strategies.consensus and gateway.strategies.speculative; streams are relayed by
gateway.core.streaming.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.core.attempts import NO_DEADLINE, AttemptLoop, Run
from gateway.core.metering import CallContext, Meter
from gateway.core.ports import (
    BreakerBoard,
    Completion,
    NullTracker,
    StreamingCompletion,
    Tracker,
)
from gateway.core.quality_live import QualityLive
from gateway.core.responses_relay import ResponsesRelay, responses_first_read_state
from gateway.core.streaming import (
    DONE,
    Relay,
    first_read_state,
    replay_as_stream,
)
from gateway.core.upstream_errors import client_error
from gateway.errors import UnsupportedEndpoint
from gateway.ledger_rows import AttemptRow
from gateway.providers.answer_checks import check_reply, check_stream
from gateway.providers.base import (
    CUT,
    TIMEOUT,
    Adapter,
    UpstreamError,
    UpstreamReply,
    UpstreamStream,
    unsupported_message,
)
from gateway.providers.responses_bridge import RESPONSES
from gateway.providers.responses_replay import replay_events
from gateway.runtime.after_answer import after_answer
from gateway.strategies.consensus import complete_consensus
from gateway.strategies.fanout import stream_refused
from gateway.strategies.gating import complete_gated
from gateway.strategies.speculative import complete_speculative
from routing.model import Plan, PlannedAttempt, Timeouts

__all__ = ["DONE", "Completion", "Service", "StreamingCompletion", "client_error"]


@dataclass(slots=True)
class _Opened:
    """A stream whose first read arrived and is usable."""

    stream: UpstreamStream
    blocks: AsyncIterator[bytes]
    first: bytes
    deployment: str


class Service:
    def __init__(
        self,
        adapter: Adapter,
        meter: Meter,
        breakers: BreakerBoard,
        tracker: Tracker | None = None,
    ) -> None:
        self._adapter = adapter
        self.meter = meter
        self.breakers = breakers
        self.tracker: Tracker = tracker or NullTracker()
        self._loop = AttemptLoop(meter, breakers, self.tracker, random.random)
        # Gate pass rates, fed by gated routes (gateway.core.quality_live.QualityLive).
        self.quality: QualityLive | None = None

    async def close(self) -> None:
        await self._adapter.close()

    @property
    def adapter(self) -> Adapter:
        """The upstream client, for a call outside a plan's walk (a guard model's question,
        gateway/guard/model.py), which journals, tracks and meters itself as the walk does."""
        return self._adapter

    def with_meter(self, meter: Meter, tracker: Tracker | None = None) -> Service:
        """This service's adapter and breakers with another meter (and tracker): the batch
        runner meters its lines into its own transaction and counts its own load."""
        clone = Service(self._adapter, meter, self.breakers, tracker)
        clone.quality = self.quality
        return clone

    # -- non-stream ---------------------------------------------------------------------

    def caller(self, ctx: CallContext) -> Callable[[PlannedAttempt, Timeouts], Awaitable[Any]]:
        """One non-stream upstream call for `ctx` (its current payload), tracked."""
        tracker = self.tracker

        async def call(attempt: PlannedAttempt, timeouts: Timeouts) -> Any:
            dep_id = attempt.deployment.id
            tracker.started(dep_id, ctx.shape)
            self.meter.intent(ctx, attempt)  # journalled before it can reach the provider
            try:
                reply = await self._adapter.call(
                    attempt.deployment, ctx.endpoint, ctx.payload, timeouts
                )
            finally:
                tracker.ended(dep_id)
            if ctx.answer_guard is not None:  # before the gate, the cache and the meter
                check_reply(ctx.answer_guard, ctx.endpoint, reply)
                ctx.note_answer_guard()
            return reply

        return call

    async def walk(
        self,
        ctx: CallContext,
        plan: Plan,
        *,
        finish_on_failure: bool = True,
    ) -> tuple[PlannedAttempt, UpstreamReply, float, list[str]]:
        """Non-stream attempts of `plan` until one answers: (attempt, reply, its start,
        why earlier tries failed). With `finish_on_failure` off, a plan that fails leaves
        the request row to the caller (it may still have an answer to give)."""
        run: Run[Any] = Run(ctx, plan, ctx.t0 + plan.timeouts.total_ms / 1000)
        run.finish = finish_on_failure
        attempt, reply, started = await self._loop.walk(run, self.caller(ctx), stream=False)
        return attempt, reply, started, run.reasons

    def record_success(
        self,
        ctx: CallContext,
        plan: Plan,
        attempt: PlannedAttempt,
        reply: UpstreamReply,
        started: float,
    ) -> AttemptRow:
        row = self.meter.succeeded(ctx, attempt, reply.usage(), reply.request_id, started)
        after_answer(self.tracker.succeeded, plan, ctx.shape, row, reply.limits)
        return row

    def _servable(self, ctx: CallContext, plan: Plan) -> Plan:
        """`plan` without the targets that cannot serve this endpoint at all (litellm
        providers serve chat only). Asked before any attempt, so a refusal is never
        recorded as an upstream call: when no target is left, only the request row is."""
        supports = self._adapter.supports
        kept = tuple(a for a in plan.attempts if supports(a.deployment, ctx.endpoint))
        if len(kept) == len(plan.attempts):
            return plan
        if not kept:
            message = unsupported_message(plan.attempts[0].deployment, ctx.endpoint)
            self.meter.finish(ctx, plan, 400, "unsupported_endpoint", None)
            raise UnsupportedEndpoint(message)
        return dataclasses.replace(plan, attempts=kept)

    async def complete(self, ctx: CallContext, plan: Plan) -> Completion:
        plan = self._servable(ctx, plan)
        if plan.fanout is not None:
            if plan.fanout.kind == "consensus":
                return await complete_consensus(self, ctx, plan)
            return await complete_speculative(self, ctx, plan)
        if plan.gate is not None:
            return await complete_gated(self, ctx, plan)
        attempt, reply, started, reasons = await self.walk(ctx, plan)
        self.record_success(ctx, plan, attempt, reply, started)
        request = self.meter.finish(ctx, plan, 200, None, attempt.deployment.id)
        return Completion(
            body=reply.raw,
            deployment=attempt.deployment.id,
            attempts=request.attempts,
            cost_usd=request.cost_usd,
            fallback_reason="; ".join(reasons) or None,
        )

    # -- stream -------------------------------------------------------------------------

    async def stream(
        self, ctx: CallContext, plan: Plan, client_wants_usage: bool
    ) -> StreamingCompletion:
        """Fail over freely until the first byte reaches the client, then relay.

        The first upstream read is awaited before answering, so an upstream error, a hang
        or a stream that dies before its first event still gets a proper HTTP error or a
        fallback; after it, failures become an in-stream error event.
        """
        plan = self._servable(ctx, plan)
        if plan.fanout is not None:
            if plan.fanout.streaming == "refuse":
                raise stream_refused(plan)
            return await self._buffered(ctx, plan, client_wants_usage)
        if plan.gate is not None and plan.gate.buffer_streams:
            return await self._buffered(ctx, plan, client_wants_usage)
        responses = ctx.endpoint == RESPONSES
        if not responses:  # a Responses stream always ends with its usage
            options = ctx.payload.get("stream_options")
            ctx.payload["stream_options"] = {**(options or {}), "include_usage": True}
        first_state = responses_first_read_state if responses else first_read_state

        tracker = self.tracker

        async def open_first(attempt: PlannedAttempt, timeouts: Timeouts) -> _Opened:
            tracker.started(attempt.deployment.id, ctx.shape)
            try:
                return await _open_first(attempt, timeouts)
            except BaseException:
                tracker.ended(attempt.deployment.id)
                raise

        async def _open_first(attempt: PlannedAttempt, timeouts: Timeouts) -> _Opened:
            dep = attempt.deployment
            upstream: UpstreamStream | None = None
            # TTFT covers everything up to the first usable read: connect, headers and the
            # first content; a hang anywhere in there is a retryable timeout. The socket
            # read timeout (max of TTFT and idle) already bounds each wait, so a separate
            # timer is only needed when TTFT is the tighter of the two.
            ttft = (
                asyncio.timeout(timeouts.ttft_ms / 1000)
                if timeouts.ttft_ms < timeouts.idle_ms
                else NO_DEADLINE
            )
            self.meter.intent(ctx, attempt)  # journalled before it can reach the provider
            try:
                async with ttft:
                    upstream = await self._adapter.open_stream(
                        dep, ctx.endpoint, ctx.payload, timeouts
                    )
                    blocks = upstream.blocks()
                    if ctx.answer_guard is not None:  # ahead of the relay and its meter
                        blocks = check_stream(
                            ctx.answer_guard, ctx.endpoint, blocks, ctx.note_answer_guard
                        )
                    # A stream that knows its own state (Responses translated from chat)
                    # says it; others are read.
                    check = getattr(upstream, "first_read_state", first_state)
                    first = await anext(blocks)
                    ready, problem = check(first, dep.id)
                    while not ready:
                        first += await anext(blocks)
                        ready, problem = check(first, dep.id)
            except TimeoutError:
                if upstream is not None:
                    await upstream.close()
                raise UpstreamError(TIMEOUT, f"{dep.id} sent no first token in time") from None
            except StopAsyncIteration:
                assert upstream is not None
                await upstream.close()
                raise UpstreamError(CUT, f"{dep.id} ended the stream before any data") from None
            except BaseException:
                if upstream is not None:
                    await upstream.close()
                raise
            if problem is not None:
                await upstream.close()
                problem.request_id = upstream.request_id
                raise problem
            return _Opened(upstream, blocks, first, dep.id)

        async def close_opened(opened: _Opened) -> None:
            tracker.ended(opened.deployment)
            await opened.stream.close()

        run: Run[_Opened] = Run(ctx, plan, ctx.t0 + plan.timeouts.total_ms / 1000)
        attempt, opened, started = await self._loop.walk(
            run, open_first, stream=True, discard=close_opened
        )
        ctx.ttft_ms = (time.perf_counter() - ctx.t0) * 1000
        dep_id = attempt.deployment.id
        relay = (ResponsesRelay if responses else Relay)(
            self.meter,
            ctx,
            plan,
            attempt,
            opened.stream,
            started,
            client_wants_usage,
            on_outcome=lambda ok: self.breakers.record(dep_id, ok),
            on_metered=lambda row: after_answer(
                tracker.succeeded, plan, ctx.shape, row, opened.stream.limits
            ),
            on_end=lambda: tracker.ended(dep_id),
        )
        return StreamingCompletion(
            deployment=dep_id,
            attempts=len(ctx.attempts) + 1,
            chunks=relay.run(opened.blocks, opened.first),
            fallback_reason="; ".join(run.reasons) or None,
        )

    async def _buffered(
        self, ctx: CallContext, plan: Plan, client_wants_usage: bool
    ) -> StreamingCompletion:
        """A gated or fan-out route that buffers streams: complete upstream, decide, then
        replay the answer as a stream."""
        ctx.payload = {
            k: v for k, v in ctx.payload.items() if k not in ("stream", "stream_options")
        }
        done = await self.complete(ctx, plan)

        async def replay() -> AsyncIterator[bytes]:
            if ctx.endpoint == RESPONSES:
                yield replay_events(orjson.loads(done.body))
            else:
                yield replay_as_stream(done.body, client_wants_usage)

        return StreamingCompletion(
            deployment=done.deployment,
            attempts=done.attempts,
            chunks=replay(),
            fallback_reason=done.fallback_reason,
            gate=done.gate,
            headers=done.headers,
        )
