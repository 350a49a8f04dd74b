"""OpenTelemetry traces: one server span per request, one client span per upstream attempt.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (`configure`), and then nothing from
opentelemetry is imported either: the SDK costs import time and memory that a gateway
without a collector should not pay.

The spans are built when the request row is (Meter.finish), from the same rows the ledger
gets: no span object lives through the request, so tracing adds almost nothing to the hot
path while a request runs. Ids are chosen up front instead — the trace id and the server
span id when the request starts (`begin_request`), each attempt's span id when it starts
(`begin_attempt`) — so the upstream call can carry a `traceparent` naming the attempt's
span before that span exists. A TracerProvider with an id generator that hands out the
staged ids (`_StagedIds`) then creates the spans with those ids, through the public API.

Attributes follow the GenAI semantic conventions (development status): gen_ai.operation.name,
gen_ai.provider.name, gen_ai.request.model, gen_ai.usage.*, error.type.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway import extras

# Rows are typed loosely: the upstream adapters import this module (for traceparent), and
# they may not depend on gateway.ledger, even for types (an import-linter contract).
RequestRow = Any
AttemptRow = Any

log = logging.getLogger("farebox.telemetry")

ENABLED = False
_tracer: Any = None
_provider: Any = None
_ids: Any = None

# The attempt being sent in this task: (trace id, its span id), read by the upstream client.
_OUTGOING: ContextVar[tuple[int, int] | None] = ContextVar("farebox_outgoing", default=None)
# The ledger id of the attempt this task is about to send (set when it is journalled): sent
# upstream as `x-client-request-id`, the header OpenAI logs for support requests, so a
# provider-side record can be matched to its ledger row (and the crash tests can match the
# simulator's log to the ledger exactly).
_ATTEMPT_ID: ContextVar[str | None] = ContextVar("farebox_attempt_id", default=None)
CLIENT_REQUEST_ID = "x-client-request-id"


def sending_attempt(attempt_id: str) -> None:
    _ATTEMPT_ID.set(attempt_id)


_OPERATIONS = {
    "chat/completions": "chat",
    "messages": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
_rand = random.SystemRandom().getrandbits  # seeded per process, unlike a forked random


@dataclass(slots=True)
class RequestTrace:
    """Ids chosen for one request's spans before any of them is created."""

    trace_id: int
    span_id: int
    parent_span_id: int | None = None  # the client's span, from its traceparent
    sampled: bool = True
    # One span id per attempt row, in the order rows were added to the call context.
    attempt_spans: list[int] = field(default_factory=list)


def configure(endpoint: str | None, exporter: Any = None, service_name: str = "farebox") -> None:
    """Turn tracing on when an OTLP endpoint (or, in tests, an exporter) is given.

    The OTLP/HTTP exporter reads OTEL_EXPORTER_OTLP_* itself (endpoint, headers, timeout);
    the resource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    """
    global ENABLED, _tracer, _provider, _ids
    if exporter is None and not endpoint:
        return
    # At startup, before anything is served: name the extra, not a deep ImportError.
    extras.require("otel")
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if _provider is not None:
        _provider.shutdown()
    _ids = _staged_ids()
    _provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}), id_generator=_ids
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Export in a background thread, batched: never on the request's path.
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        _provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracer = _provider.get_tracer("farebox")
    ENABLED = True


def shutdown() -> None:
    """Flush queued spans (SIGTERM) and turn tracing off."""
    global ENABLED, _tracer, _provider
    ENABLED = False
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def _staged_ids() -> Any:
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

    class _StagedIds(IdGenerator):
        """Returns the id staged for the span being created, else a random one."""

        def __init__(self) -> None:
            self.trace_id: int | None = None
            self.span_id: int | None = None
            self._random = RandomIdGenerator()

        def generate_span_id(self) -> int:
            staged, self.span_id = self.span_id, None
            return staged or self._random.generate_span_id()

        def generate_trace_id(self) -> int:
            staged, self.trace_id = self.trace_id, None
            return staged or self._random.generate_trace_id()

    return _StagedIds()


# -- while the request runs (cheap: ids and a context variable) --------------------------


def begin_request(traceparent: bytes | None) -> RequestTrace | None:
    """The request's trace ids, continuing the client's trace when it sent one."""
    if not ENABLED:
        return None
    parent = _parse_traceparent(traceparent) if traceparent else None
    if parent is None:
        return RequestTrace(_rand(128) or 1, _rand(64) or 1)
    trace_id, parent_span, sampled = parent
    return RequestTrace(trace_id, _rand(64) or 1, parent_span, sampled)


def begin_attempt(trace: RequestTrace | None) -> None:
    """Give the attempt about to be sent its span id (read back by `attempt_span`)."""
    if trace is not None:
        _OUTGOING.set((trace.trace_id, _rand(64) or 1))


def upstream_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """`headers`, plus the attempt's ledger id and, when tracing, its W3C traceparent."""
    attempt_id = _ATTEMPT_ID.get()
    outgoing = _OUTGOING.get() if ENABLED else None
    if outgoing is None:
        return headers if attempt_id is None else {**headers, CLIENT_REQUEST_ID: attempt_id}
    out = {**headers, "traceparent": f"00-{outgoing[0]:032x}-{outgoing[1]:016x}-01"}
    if attempt_id is not None:
        out[CLIENT_REQUEST_ID] = attempt_id
    return out


def attempt_recorded(trace: RequestTrace) -> None:
    """An attempt row was added: remember its span id (the one its traceparent named, or a
    new one for an attempt metered outside the task that sent it, e.g. a lost hedge)."""
    outgoing = _OUTGOING.get()
    if outgoing is not None and outgoing[0] == trace.trace_id:
        _OUTGOING.set(None)
        trace.attempt_spans.append(outgoing[1])
    else:
        trace.attempt_spans.append(_rand(64) or 1)


def _parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] == b"ff":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(flags & 1)


# -- when the request row is built -----------------------------------------------------


def _ns(at: datetime, plus_ms: float = 0.0) -> int:
    return int(at.timestamp() * 1e9) + int(plus_ms * 1e6)


def record(trace: RequestTrace, row: RequestRow, attempts: Sequence[AttemptRow]) -> None:
    """Emit the request's server span and its attempts' client spans."""
    if _tracer is None or not trace.sampled:
        return
    try:
        _record(trace, row, attempts)
    except Exception:  # telemetry must never fail a request
        log.exception("could not record the spans of request %s", row.id)


def _record(trace: RequestTrace, row: RequestRow, attempts: Sequence[AttemptRow]) -> None:
    from opentelemetry import trace as api
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
    from opentelemetry.trace.status import Status, StatusCode

    operation = _OPERATIONS.get(row.endpoint, row.endpoint)
    parent_ctx = None
    if trace.parent_span_id is not None:
        remote = SpanContext(
            trace.trace_id, trace.parent_span_id, True, TraceFlags(TraceFlags.SAMPLED)
        )
        parent_ctx = api.set_span_in_context(NonRecordingSpan(remote))
    server_attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": row.requested_model,
        "http.request.method": "POST",
        "http.route": f"/v1/{row.endpoint}",
        "http.response.status_code": row.final_status,
        "farebox.request_id": row.id,
        "farebox.route": row.route,
        "farebox.attempts": row.attempts,
        "farebox.stream": row.stream,
        "gen_ai.usage.input_tokens": row.input_uncached_tokens
        + row.cached_read_tokens
        + row.cache_write_tokens,
        "gen_ai.usage.output_tokens": row.output_tokens,
    }
    if row.final_deployment is not None:
        server_attrs["farebox.deployment"] = row.final_deployment
    if row.cost_usd is not None:
        server_attrs["farebox.cost_usd"] = float(row.cost_usd)
    if row.error_class is not None:
        server_attrs["error.type"] = row.error_class
    _ids.trace_id, _ids.span_id = trace.trace_id, trace.span_id
    server = _tracer.start_span(
        f"{operation} {row.route}",
        context=parent_ctx,
        kind=SpanKind.SERVER,
        attributes=server_attrs,
        start_time=_ns(row.received_at),
    )
    if row.final_status >= 500 or row.error_class is not None:
        server.set_status(Status(StatusCode.ERROR, row.error_class or str(row.final_status)))
    child_ctx = api.set_span_in_context(server)
    for number, attempt in enumerate(attempts):
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": attempt.provider,
            "gen_ai.request.model": attempt.upstream_model,
            "gen_ai.usage.input_tokens": attempt.input_uncached_tokens
            + attempt.cached_read_tokens
            + attempt.cache_write_tokens,
            "gen_ai.usage.output_tokens": attempt.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": attempt.cached_read_tokens,
            "farebox.deployment": attempt.deployment,
            "farebox.role": attempt.role,
            "farebox.attempt_no": attempt.attempt_no,
            "farebox.token_source": attempt.token_source,
        }
        if attempt.http_status is not None:
            attrs["http.response.status_code"] = attempt.http_status
        if attempt.provider_request_id is not None:
            attrs["farebox.provider_request_id"] = attempt.provider_request_id
        if attempt.cost_usd is not None:
            attrs["farebox.cost_usd"] = float(attempt.cost_usd)
        if attempt.ttft_ms is not None:
            attrs["farebox.ttft_ms"] = attempt.ttft_ms
        if attempt.error_class is not None:
            attrs["error.type"] = attempt.error_class
        if number < len(trace.attempt_spans):
            _ids.span_id = trace.attempt_spans[number]
        span = _tracer.start_span(
            f"{operation} {attempt.upstream_model}",
            context=child_ctx,
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=_ns(attempt.started_at),
        )
        if attempt.error_class is not None:
            span.set_status(Status(StatusCode.ERROR, attempt.error_class))
        span.end(end_time=_ns(attempt.started_at, attempt.latency_ms))
    server.end(end_time=_ns(row.received_at, row.latency_ms))
