"""Where routing meets I/O: runs a plan's attempts against upstream adapters.

Handlers in gateway.api call this module and never a provider directly; it turns upstream
failures into the client-facing errors of gateway.errors, and meters every attempt.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from gateway.errors import GatewayError, upstream_failed, upstream_timeout
from gateway.metering import CallContext, Meter, error_class
from gateway.providers.base import (
    CONNECT,
    MALFORMED,
    STATUS,
    STREAM_ERROR,
    TIMEOUT,
    UpstreamError,
    UpstreamStream,
)
from gateway.providers.openai_compat import OpenAICompatAdapter, ProviderEndpoint
from gateway.providers.sse import SSEDecoder
from routing.model import Plan, PlannedAttempt

DONE = b"data: [DONE]\n\n"
CLIENT_CANCELLED = "client_cancelled"
# nginx's "client closed request": the request row's status when the client left first.
STATUS_CLIENT_CLOSED = 499


@dataclass(slots=True)
class Completion:
    body: bytes
    deployment: str
    attempts: int
    upstream_request_id: str | None
    cost_usd: Decimal | None


@dataclass(slots=True)
class StreamingCompletion:
    deployment: str
    attempts: int
    upstream_request_id: str | None
    chunks: AsyncIterator[bytes]


class Service:
    def __init__(self, adapter: OpenAICompatAdapter, meter: Meter) -> None:
        self._adapter = adapter
        self.meter = meter

    @classmethod
    def from_providers(cls, providers: Mapping[str, ProviderEndpoint], meter: Meter) -> Service:
        return cls(OpenAICompatAdapter.create(providers), meter)

    async def close(self) -> None:
        await self._adapter.close()

    async def complete(self, ctx: CallContext, plan: Plan) -> Completion:
        attempt = plan.attempts[0]
        deployment = attempt.deployment
        started = time.perf_counter()
        try:
            reply = await self._adapter.call(deployment, ctx.endpoint, ctx.payload, plan.timeouts)
        except UpstreamError as exc:
            raise self._fail(ctx, plan, attempt, exc, started) from None
        row = self.meter.succeeded(ctx, attempt, reply.data.get("usage"), reply.request_id, started)
        request = self.meter.finish(ctx, plan, 200, None, deployment.id)
        return Completion(
            body=reply.raw,
            deployment=deployment.id,
            attempts=request.attempts,
            upstream_request_id=row.provider_request_id,
            cost_usd=request.cost_usd,
        )

    def _fail(
        self,
        ctx: CallContext,
        plan: Plan,
        attempt: PlannedAttempt,
        exc: UpstreamError,
        started: float,
    ) -> GatewayError:
        self.meter.failed_upstream(ctx, attempt, exc, started)
        error = client_error(exc, attempt.deployment.id)
        self.meter.finish(ctx, plan, error.status, error_class(exc), None)
        return error

    async def stream(
        self, ctx: CallContext, plan: Plan, client_wants_usage: bool
    ) -> StreamingCompletion:
        """Open the upstream stream and read its first event before answering.

        Until the first byte reaches the client we can still return a proper HTTP error
        (or, later, fail over); after it, failures become an in-stream error event.
        """
        attempt = plan.attempts[0]
        deployment = attempt.deployment
        options = ctx.payload.get("stream_options")
        ctx.payload["stream_options"] = {**(options or {}), "include_usage": True}
        started = time.perf_counter()
        try:
            upstream = await self._adapter.open_stream(
                deployment, ctx.endpoint, ctx.payload, plan.timeouts
            )
        except UpstreamError as exc:
            raise self._fail(ctx, plan, attempt, exc, started) from None
        blocks = upstream.blocks()
        try:
            first = await anext(blocks)
            events = decode_events(first)
            if not events:
                raise UpstreamError(MALFORMED, f"{deployment.id} sent a stream with no data")
            _raise_if_error_event(events[0], deployment.id)
        except (StopAsyncIteration, UpstreamError) as exc:
            await upstream.close()
            if isinstance(exc, StopAsyncIteration):
                exc = UpstreamError("cut", f"{deployment.id} ended the stream before any data")
            exc.request_id = exc.request_id or upstream.request_id
            raise self._fail(ctx, plan, attempt, exc, started) from None
        ctx.ttft_ms = (time.perf_counter() - ctx.t0) * 1000
        relay = _Relay(self.meter, ctx, plan, attempt, upstream, started, client_wants_usage)
        return StreamingCompletion(
            deployment=deployment.id,
            attempts=len(ctx.attempts) + 1,
            upstream_request_id=upstream.request_id,
            chunks=relay.run(blocks, first),
        )


class _Relay:
    """Forwards one upstream stream to the client and meters it when it ends."""

    __slots__ = ("attempt", "ctx", "meter", "plan", "started", "upstream", "wants_usage")

    def __init__(
        self,
        meter: Meter,
        ctx: CallContext,
        plan: Plan,
        attempt: PlannedAttempt,
        upstream: UpstreamStream,
        started: float,
        wants_usage: bool,
    ) -> None:
        self.meter = meter
        self.ctx = ctx
        self.plan = plan
        self.attempt = attempt
        self.upstream = upstream
        self.started = started
        self.wants_usage = wants_usage

    async def run(self, blocks: AsyncIterator[bytes], first: bytes) -> AsyncIterator[bytes]:
        """One client write per upstream read.

        Most reads carry only content deltas and are forwarded byte for byte. Only a read
        that holds `[DONE]`, an error or the usage chunk is decoded: the usage chunk (which
        we always ask for) is dropped unless the client asked for it, and otherwise carries
        `cost_usd`; an upstream error event is forwarded and ends the stream; a stream that
        breaks ends with our own error event, so no SDK mistakes a cut answer for a
        complete one.
        """
        usage: dict[str, Any] | None = None
        events_seen = 0
        outcome: str | None = CLIENT_CANCELLED
        block = first
        try:
            while True:
                if not (b"[DONE]" in block or b'"error"' in block or _USAGE.search(block)):
                    events_seen += block.count(b"data:")
                    yield block
                else:
                    out = []
                    for data in decode_events(block):
                        if data == b"[DONE]":
                            out.append(DONE)
                            outcome = None
                            yield b"".join(out)
                            return
                        if _carries_usage(data) and (chunk := _usage_chunk(data)) is not None:
                            usage = chunk["usage"]
                            self._meter_success(usage)
                            if not self.wants_usage:
                                continue
                            data = self._with_cost(chunk)
                        elif b'"error"' in data and _error_of(data) is not None:
                            out.append(b"data: " + data + b"\n\n")
                            outcome = STREAM_ERROR
                            yield b"".join(out)
                            return
                        events_seen += 1
                        out.append(b"data: " + data + b"\n\n")
                    if out:
                        yield b"".join(out)
                try:
                    block = await anext(blocks)
                except StopAsyncIteration:
                    outcome = None
                    return
        except UpstreamError as exc:
            outcome = error_class(exc)
            yield stream_error_event(exc.message, code="upstream_stream_interrupted")
        finally:
            await self.upstream.close()
            self._finish(outcome, usage is not None, events_seen)

    def _meter_success(self, usage: Any) -> None:
        self.meter.succeeded(
            self.ctx,
            self.attempt,
            usage,
            self.upstream.request_id,
            self.started,
            ttft_ms=self.ctx.ttft_ms,
        )

    def _with_cost(self, chunk: dict[str, Any]) -> bytes:
        cost = self.ctx.attempts[-1].cost_usd if self.ctx.attempts else None
        if cost is not None:
            chunk["usage"]["cost_usd"] = float(cost)
        return orjson.dumps(chunk)

    def _finish(self, outcome: str | None, metered: bool, events_seen: int) -> None:
        if not metered:
            # Cut, errored or abandoned before usage arrived: providers still bill input.
            self.meter.failed(
                self.ctx,
                self.attempt,
                outcome or "no_usage",
                http_status=200,
                provider_request_id=self.upstream.request_id,
                started=self.started,
                ttft_ms=self.ctx.ttft_ms,
                output_tokens_seen=max(0, events_seen - 1),  # minus the role-only chunk
                billable=True,
            )
        elif outcome is not None and self.ctx.attempts:
            self.ctx.attempts[-1].error_class = outcome
        status = STATUS_CLIENT_CLOSED if outcome == CLIENT_CANCELLED else 200
        self.meter.finish(self.ctx, self.plan, status, outcome, self.attempt.deployment.id)


def stream_error_event(message: str, *, code: str) -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


_USAGE = re.compile(rb'"usage"\s*:\s*\{')


def decode_events(block: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    return decoder.feed(block) + decoder.finish()


def _carries_usage(data: bytes) -> bool:
    """Cheap pre-check before parsing: since we always ask for usage, every chunk has a
    `"usage"` key, but only the last one has an object there rather than null."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return False
    colon = data.find(b":", at + 7)
    return colon > 0 and data[colon + 1 : colon + 8].lstrip()[:1] == b"{"


def _usage_chunk(data: bytes) -> dict[str, Any] | None:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if (
        isinstance(chunk, dict)
        and isinstance(chunk.get("usage"), dict)
        and not chunk.get("choices")
    ):
        return chunk
    return None


def _error_of(data: bytes) -> Any:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return chunk.get("error") if isinstance(chunk, dict) else None


def _raise_if_error_event(data: bytes, deployment: str) -> None:
    if data == b"[DONE]":
        return
    if data[:1] != b"{":
        raise UpstreamError("malformed", f"{deployment} sent a stream event that is not JSON")
    error = _error_of(data) if b'"error"' in data else None
    if error is not None:
        raise UpstreamError(STREAM_ERROR, f"{deployment} reported an error", body={"error": error})


def client_error(exc: UpstreamError, deployment: str) -> GatewayError:
    """Translate an upstream failure into what the client should see."""
    if exc.kind == TIMEOUT:
        return upstream_timeout(f"Upstream {deployment} timed out.")
    if exc.kind == CONNECT:
        return upstream_failed(
            f"Upstream {deployment} is unreachable.", code="upstream_unreachable"
        )
    detail = _error_field(exc.body, "message")
    if exc.kind == STATUS and exc.status is not None:
        status = exc.status
        if status == 429:
            retry = [
                (k.encode(), v.encode())
                for k, v in exc.headers.items()
                if k.startswith("retry-after")
            ]
            return GatewayError(
                429,
                detail or f"Upstream {deployment} is rate limiting requests.",
                error_type="rate_limit_error",
                code=_error_field(exc.body, "code") or "rate_limit_exceeded",
                headers=retry,
            )
        if status in (400, 413, 422):
            return GatewayError(
                status,
                detail or f"Upstream {deployment} rejected the request (HTTP {status}).",
                code=_error_field(exc.body, "code"),
                param=_error_field(exc.body, "param"),
            )
        if status in (401, 403, 404):
            return upstream_failed(
                f"Upstream {deployment} refused Farebox's request (HTTP {status}); "
                "the deployment's provider key or model name is misconfigured.",
                code="upstream_misconfigured",
            )
        return upstream_failed(f"Upstream {deployment} failed (HTTP {status}).")
    if exc.kind == STREAM_ERROR:
        return upstream_failed(f"Upstream {deployment} reported an error: {detail or 'unknown'}")
    return upstream_failed(f"Upstream {deployment} sent an unusable response ({exc.kind}).")


def _error_field(body: Any, name: str) -> str | None:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            value = err.get(name)
            return value if isinstance(value, str) and value else None
    return None
