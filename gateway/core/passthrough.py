"""The pass-through endpoints: moderations, images, transcriptions, speech and rerank.

They go to OpenAI-protocol deployments of the route the `model` names, through the same
attempt loop as chat (retries, failover, breakers, deadlines, the journal's intents), and
come back as the upstream sent them: JSON, text, or audio relayed as it arrives. Each
answered attempt is metered per unit (routing/units.py): images returned, seconds of audio,
characters of speech input, search units; tokens too where the provider reports them.

The body sent upstream is built per attempt by the caller (`Upload.body(upstream_model)`), so
a multipart upload can be re-encoded with the deployment's model name and replayed to the
next target after a failure (gateway/api/passthrough_form.py spools it as it streams).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import orjson

from gateway.core.attempts import NO_DEADLINE, AttemptLoop, Run
from gateway.core.metering import CallContext, Meter, error_class
from gateway.core.ports import BreakerBoard, Tracker
from gateway.errors import GatewayError, UnsupportedEndpoint
from gateway.providers.base import CUT, MALFORMED, TIMEOUT, UpstreamError, unsupported_message
from gateway.providers.passthrough import RawResponse
from gateway.runtime.shutdown import CLIENT_CANCELLED, STATUS_CLIENT_CLOSED
from routing import units as u
from routing.model import DeploymentSpec, Plan, PlannedAttempt, Timeouts

# What an answer is metered with: (usage as the provider sent it, units, unit, image variant).
Counted = tuple[Any, Decimal | None, str | None, str | None]
Counter = Callable[[dict[str, Any], dict[str, Any] | None], Counted]


def _moderation(request: dict[str, Any], answer: dict[str, Any] | None) -> Counted:
    return (answer or {}).get("usage"), None, None, None


def _images(request: dict[str, Any], answer: dict[str, Any] | None) -> Counted:
    answer = answer or {}
    return answer.get("usage"), u.images_returned(answer), u.IMAGE, u.image_variant(request)


def _transcription(request: dict[str, Any], answer: dict[str, Any] | None) -> Counted:
    if answer is None:  # text, srt, vtt: the answer says nothing of its duration
        return None, None, u.AUDIO_SECOND, None
    usage = answer.get("usage")
    tokens = usage if isinstance(usage, dict) and usage.get("type") == "tokens" else None
    return tokens, u.audio_seconds(answer), u.AUDIO_SECOND, None


def _speech(request: dict[str, Any], answer: dict[str, Any] | None) -> Counted:
    return None, u.speech_characters(request), u.CHARACTER, None


def _rerank(request: dict[str, Any], answer: dict[str, Any] | None) -> Counted:
    answer = answer or {}
    usage = u.rerank_usage(answer)
    return (
        dict(usage) if usage is not None else None,
        u.search_units(request, answer),
        u.SEARCH_UNIT,
        None,
    )


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the upstream path under /v1, and the ledger's `endpoint`
    count: Counter
    json_answer: bool  # the answer must be a JSON object (else it is relayed as it is)


ENDPOINTS = {
    e.name: e
    for e in (
        Endpoint("moderations", _moderation, True),
        Endpoint("images/generations", _images, True),
        Endpoint("audio/transcriptions", _transcription, False),
        Endpoint("audio/speech", _speech, False),
        Endpoint("rerank", _rerank, True),
    )
}


@dataclass(slots=True)
class Upload:
    """The request body as the caller builds it for one attempt's deployment."""

    content_type: str
    body: Callable[[str], bytes | AsyncIterable[bytes]]  # upstream model → body
    # The client's own body failing mid-upload (cut, too large, malformed form): that error,
    # which is the client's answer rather than an upstream failure.
    failure: Callable[[], GatewayError | None] = lambda: None


@dataclass(slots=True)
class RawAnswer:
    body: bytes
    content_type: str
    deployment: str
    attempts: int
    cost_usd: Decimal | None
    fallback_reason: str | None


@dataclass(slots=True)
class RawStream:
    content_type: str
    deployment: str
    attempts: int
    chunks: AsyncIterator[bytes]
    fallback_reason: str | None
    # Always awaited by the caller when done with `chunks`, iterated or not: ends the call.
    close: Callable[[], Awaitable[None]]


class RawAdapter(Protocol):
    async def open_raw(
        self,
        deployment: DeploymentSpec,
        endpoint: str,
        body: bytes | AsyncIterable[bytes],
        content_type: str,
        timeouts: Timeouts,
        *,
        stream: bool = False,
    ) -> RawResponse: ...


class StreamBroken(Exception):
    """A relayed body broke after its first chunk went out (metered already)."""


class _ClientBodyFailed(Exception):
    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class Passthrough:
    """The pass-through endpoints' service (the chat service's sibling; the same meter,
    breakers and tracker)."""

    def __init__(
        self, adapter: RawAdapter, meter: Meter, breakers: BreakerBoard, tracker: Tracker
    ) -> None:
        self._adapter = adapter
        self.meter = meter
        self.breakers = breakers
        self.tracker = tracker
        self._loop = AttemptLoop(meter, breakers, tracker, random.random)

    def _servable(self, ctx: CallContext, plan: Plan) -> Plan:
        """Only OpenAI-protocol targets forward these endpoints; none → 400, no attempt."""
        kept = tuple(a for a in plan.attempts if a.deployment.protocol == "openai")
        if len(kept) == len(plan.attempts):
            return plan
        if not kept:
            self.meter.finish(ctx, plan, 400, "unsupported_endpoint", None)
            raise UnsupportedEndpoint(
                unsupported_message(plan.attempts[0].deployment, ctx.endpoint)
            )
        return dataclasses.replace(plan, attempts=kept)

    async def _open(
        self, ctx: CallContext, attempt: PlannedAttempt, upload: Upload, t: Timeouts, stream: bool
    ) -> RawResponse:
        """One upstream call, journalled first; a failure of the client's own upload is
        metered here (free: nothing reached a model) and ends the walk."""
        dep = attempt.deployment
        self.meter.intent(ctx, attempt)
        started = time.perf_counter()
        try:
            body = upload.body(dep.upstream_model)
            return await self._adapter.open_raw(
                dep, ctx.endpoint, body, upload.content_type, t, stream=stream
            )
        except Exception as exc:  # the HTTP client may wrap the body's own error, or not
            failed = upload.failure()
            if failed is None:
                raise
            self.meter.failed(
                ctx,
                attempt,
                "client_body",
                http_status=None,
                provider_request_id=getattr(exc, "request_id", None),
                started=started,
                billable=False,
            )
            raise _ClientBodyFailed(failed) from None

    async def _walk(
        self, ctx: CallContext, plan: Plan, call: Any, stream: bool, discard: Any = None
    ) -> tuple[PlannedAttempt, Any, float, list[str]]:
        run: Run[Any] = Run(ctx, plan, ctx.t0 + plan.timeouts.total_ms / 1000)
        try:
            if discard is None:
                attempt, result, started = await self._loop.walk(run, call, stream=stream)
            else:
                attempt, result, started = await self._loop.walk(
                    run, call, stream=stream, discard=discard
                )
        except _ClientBodyFailed as exc:
            self.meter.finish(ctx, plan, exc.error.status, "client_body", None)
            raise exc.error from None
        return attempt, result, started, run.reasons

    async def complete(self, ctx: CallContext, plan: Plan, upload: Upload) -> RawAnswer:
        """A JSON or text answer, read whole (they are small) and metered."""
        endpoint = ENDPOINTS[ctx.endpoint]
        plan = self._servable(ctx, plan)
        tracker = self.tracker

        async def call(
            attempt: PlannedAttempt, t: Timeouts
        ) -> tuple[RawResponse, bytes, dict[str, Any] | None]:
            dep_id = attempt.deployment.id
            tracker.started(dep_id, ctx.shape)
            try:
                resp = await self._open(ctx, attempt, upload, t, stream=False)
                raw = await resp.read()
            finally:
                tracker.ended(dep_id)
            return resp, raw, _answer(dep_id, resp, raw, endpoint.json_answer)

        attempt, (resp, raw, answer), started, reasons = await self._walk(
            ctx, plan, call, stream=False
        )
        usage, units, unit, variant = endpoint.count(ctx.payload, answer)
        row = self.meter.metered_units(
            ctx, attempt, usage, (units, unit, variant), resp.request_id, started
        )
        tracker.succeeded(plan, ctx.shape, row, resp.limits)
        request = self.meter.finish(ctx, plan, 200, None, attempt.deployment.id)
        return RawAnswer(
            body=raw,
            content_type=resp.content_type,
            deployment=attempt.deployment.id,
            attempts=request.attempts,
            cost_usd=request.cost_usd,
            fallback_reason="; ".join(reasons) or None,
        )

    async def stream(self, ctx: CallContext, plan: Plan, upload: Upload) -> RawStream:
        """A binary answer (speech) relayed as it arrives. Failover is free until its first
        chunk is in hand; a break after that ends the client's body short (it cannot carry
        an error event) and is metered as failed."""
        endpoint = ENDPOINTS[ctx.endpoint]
        plan = self._servable(ctx, plan)
        tracker = self.tracker

        async def open_first(
            attempt: PlannedAttempt, t: Timeouts
        ) -> tuple[RawResponse, AsyncIterator[bytes], bytes, str]:
            dep_id = attempt.deployment.id
            tracker.started(dep_id, ctx.shape)
            resp: RawResponse | None = None
            # As for chat streams: the first chunk must come within the TTFT bound.
            ttft = asyncio.timeout(t.ttft_ms / 1000) if t.ttft_ms < t.idle_ms else NO_DEADLINE
            try:
                async with ttft:
                    resp = await self._open(ctx, attempt, upload, t, stream=True)
                    chunks = resp.chunks()
                    first = await anext(chunks)
            except BaseException as exc:
                tracker.ended(dep_id)
                if resp is not None:
                    await resp.close()
                if isinstance(exc, TimeoutError):
                    raise UpstreamError(TIMEOUT, f"{dep_id} sent no first chunk in time") from None
                if isinstance(exc, StopAsyncIteration):
                    raise UpstreamError(CUT, f"{dep_id} answered an empty body") from None
                raise
            return resp, chunks, first, dep_id

        async def discard(opened: tuple[RawResponse, AsyncIterator[bytes], bytes, str]) -> None:
            tracker.ended(opened[3])  # a hedge that lost
            await opened[0].close()

        attempt, (resp, chunks, first, _), started, reasons = await self._walk(
            ctx, plan, open_first, stream=True, discard=discard
        )
        ctx.ttft_ms = (time.perf_counter() - ctx.t0) * 1000
        relay = _Relay(self, ctx, plan, attempt, endpoint, resp, started)
        return RawStream(
            content_type=resp.content_type,
            deployment=attempt.deployment.id,
            attempts=len(ctx.attempts) + 1,
            chunks=relay.chunks(chunks, first),
            fallback_reason="; ".join(reasons) or None,
            close=relay.close,
        )


class _Relay:
    """One relayed body: its chunks, and its end in the ledger, once, however it ends (the
    last chunk, a break, the client gone, or never iterated at all)."""

    def __init__(
        self,
        service: Passthrough,
        ctx: CallContext,
        plan: Plan,
        attempt: PlannedAttempt,
        endpoint: Endpoint,
        resp: RawResponse,
        started: float,
    ) -> None:
        self._service, self._ctx, self._plan, self._attempt = service, ctx, plan, attempt
        self._endpoint, self._resp, self._started = endpoint, resp, started
        self._ended = False
        self._gen: AsyncGenerator[bytes, None] | None = None

    def chunks(self, upstream: AsyncIterator[bytes], first: bytes) -> AsyncIterator[bytes]:
        self._gen = self._run(upstream, first)
        return self._gen

    async def _run(self, upstream: AsyncIterator[bytes], first: bytes) -> AsyncGenerator[bytes]:
        outcome: str | None = CLIENT_CANCELLED  # until the body ends or breaks
        try:
            yield first
            try:
                async for chunk in upstream:
                    yield chunk
            except UpstreamError as exc:
                outcome = error_class(exc)
                raise StreamBroken(exc.message) from None
            outcome = None
        finally:
            await self._end(outcome)

    async def close(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()
        await self._end(CLIENT_CANCELLED)  # never iterated: the client left first

    async def _end(self, outcome: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        service, ctx, attempt, resp = self._service, self._ctx, self._attempt, self._resp
        dep_id = attempt.deployment.id
        await resp.close()
        service.tracker.ended(dep_id)
        # Broken or abandoned mid-body, the audio was still made from the whole input:
        # billed by its characters like a whole answer, with the outcome as its error.
        usage, units, unit, variant = self._endpoint.count(ctx.payload, None)
        row = service.meter.metered_units(
            ctx,
            attempt,
            usage,
            (units, unit, variant),
            resp.request_id,
            self._started,
            ttft_ms=ctx.ttft_ms,
            error=outcome,
        )
        if outcome is None:
            service.tracker.succeeded(self._plan, ctx.shape, row, resp.limits)
        if outcome != CLIENT_CANCELLED:
            service.breakers.record(dep_id, outcome is None)
        status = STATUS_CLIENT_CLOSED if outcome == CLIENT_CANCELLED else 200
        service.meter.finish(ctx, self._plan, status, outcome, dep_id)


def _answer(dep_id: str, resp: RawResponse, raw: bytes, json_answer: bool) -> dict[str, Any] | None:
    """The answer as a JSON object when it is one (a JSON endpoint's must be: else the
    attempt failed as malformed, and the walk goes on)."""
    if not json_answer and "json" not in resp.content_type:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        return data
    raise UpstreamError(
        MALFORMED,
        f"{dep_id} returned a body that is not a JSON object",
        status=200,
        request_id=resp.request_id,
    )
