"""Prometheus metrics. Names follow Prometheus conventions (unit suffixes, _total), and the
OpenTelemetry GenAI names converted where one exists (gen_ai.client.token.usage →
gen_ai_client_token_usage, gen_ai.client.operation.duration → …_duration_seconds).

Several uvicorn workers: `farebox serve --workers N` sets PROMETHEUS_MULTIPROC_DIR before the
workers start, so prometheus_client keeps every value in a per-process mmap file and /metrics
merges them (`scrape`). Every gauge therefore names how workers combine (`multiprocess_mode`).

Labels are bounded by the config: routes, deployments, providers, roles, HTTP statuses and
error classes. Never key ids, request ids or model strings sent by clients.

All per-request series are updated once, when the request row is built (`observe_request`
from Meter.finish), from the same rows the ledger gets — so the counters add up to the
ledger's numbers — into plain-Python buffers that reach prometheus_client every FLUSH_S.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.ledger_rows import AttemptRow, RequestRow

# prometheus_client reads this variable itself when it is imported; /metrics must agree.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The per-request series (observe_request); FAREBOX_METRICS_ENABLED=false for benchmarks.
ENABLED = True
# How often buffered per-request numbers reach prometheus_client (and so other workers'
# scrapes); a scrape of this worker flushes first anyway.
FLUSH_S = 1.0

LEDGER_QUEUE_DEPTH = Gauge(
    "farebox_ledger_queue_depth",
    "Ledger rows waiting in memory to be written",
    multiprocess_mode="livesum",
)
LEDGER_ROWS_WRITTEN = Counter(
    "farebox_ledger_rows_written_total", "Ledger rows written to the database", ["table"]
)
LEDGER_ROWS_SPOOLED = Counter(
    "farebox_ledger_rows_spooled_total", "Ledger rows written to the disk spool", ["reason"]
)
# Workers share the spool directory, so each reports the same bytes and age: take the max.
LEDGER_SPOOL_BYTES = Gauge(
    "farebox_ledger_spool_bytes", "Bytes waiting in the disk spool", multiprocess_mode="livemax"
)
LEDGER_REPLAY_LAG = Gauge(
    "farebox_ledger_replay_lag_seconds",
    "Age of the oldest spooled batch not yet replayed (0 when the spool is empty)",
    multiprocess_mode="livemax",
)
LEDGER_WRITE_ERRORS = Counter(
    "farebox_ledger_write_errors_total", "Failed database writes of ledger batches"
)
UNPRICED_ATTEMPTS = Counter(
    "farebox_unpriced_attempts_total",
    "Attempts recorded with cost NULL because no price is known",
    ["deployment"],
)
UNMETERED_CALLS = Counter(
    "farebox_ledger_unmetered_calls_total",
    "Upstream calls that started but got no attempt row (a bug: attempts must equal calls)",
)
JOURNAL_RECOVERED = Counter(
    "farebox_ledger_journal_recovered_rows_total",
    "Ledger rows rebuilt at start-up from a crashed process's journal, by kind",
    ["kind"],
)
ATTEMPTS = Counter(
    "farebox_attempts_total",
    "Upstream attempts by route, deployment, role and outcome (error class, or ok)",
    ["route", "deployment", "role", "outcome"],
)
REQUESTS = Counter(
    "farebox_requests_total",
    "Client requests that reached routing, by route, answering deployment, final HTTP status "
    "and error class",
    ["route", "deployment", "status", "error_class"],
)
GUARD_HITS = Counter(
    "farebox_guard_hits_total",
    "Findings of guard checks on requests, by route, check and the check's action",
    ["route", "check", "action"],
)
GUARD_MODEL_FAILURES = Counter(
    "farebox_guard_model_failures_total",
    "Guard model calls that gave no verdict (reason: timeout or error), by route and check;"
    " on_error decides whether the request was let by",
    ["route", "check", "reason"],
)
GUARD_SECONDS = Histogram(
    "farebox_guard_seconds",
    "Time spent running a route's guard checks on one request",
    ["route"],
    buckets=(0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01),
)
BREAKER_OPENED = Counter(
    "farebox_breaker_force_opened_total",
    "Breakers opened at once because the provider rejected our credentials or model (401/403/404)",
    ["deployment"],
)
BREAKER_TRIPS = Counter(
    "farebox_breaker_trips_total", "Times a deployment's circuit breaker opened", ["deployment"]
)
# 1 from the trip until a successful probe closes it (cooling down or half-open); the max
# over workers, so one worker's open breaker shows.
BREAKER_OPEN = Gauge(
    "farebox_breaker_open",
    "1 while the deployment's circuit breaker is open or half-open, 0 when closed",
    ["deployment"],
    multiprocess_mode="livemax",
)

IN_FLIGHT = Gauge(
    "farebox_deployment_in_flight",
    "Upstream calls in flight",
    ["deployment"],
    multiprocess_mode="livesum",
)
DEDICATED_CAPACITY = Gauge(
    "farebox_dedicated_capacity",
    "max_concurrency of a dedicated deployment",
    ["deployment"],
    multiprocess_mode="livemax",
)
# Utilization of paid-for GPUs: rate(slot_seconds) / capacity is the busy share of slots,
# rate(busy_seconds) the share of wall time with anything in flight.
DEDICATED_SLOT_SECONDS = Counter(
    "farebox_dedicated_slot_seconds",
    "Integral of in-flight calls over time on a dedicated deployment",
    ["deployment"],
)
DEDICATED_BUSY_SECONDS = Counter(
    "farebox_dedicated_busy_seconds",
    "Seconds a dedicated deployment had at least one call in flight",
    ["deployment"],
)

# -- per request and attempt (observe_request) ----------------------------------------------

# OpenTelemetry's advised buckets for gen_ai.client.operation.duration and token usage.
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                     40.96, 81.92)  # fmt: skip
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_TTFT_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
# Farebox's own time is sub-millisecond when healthy; the top buckets catch event-loop stalls.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

_GENAI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Duration of one upstream attempt (gen_ai.client.operation.duration), by deployment",
    [*_GENAI, "deployment", "error_type"],
    buckets=_DURATION_BUCKETS,
)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per upstream attempt (gen_ai.client.token.usage); input includes cached tokens",
    [*_GENAI, "deployment", "gen_ai_token_type"],
    buckets=_TOKEN_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "farebox_upstream_time_to_first_token_seconds",
    "Streamed requests: time from arrival to the first usable upstream event",
    ["route", "deployment"],
    buckets=_TTFT_BUCKETS,
)
REQUEST_DURATION = Histogram(
    "farebox_request_duration_seconds",
    "Total latency of a client request as Farebox saw it (JSON: to the answer; SSE: to the "
    "end of the stream)",
    ["route", "stream"],
    buckets=_DURATION_BUCKETS,
)
OVERHEAD = Histogram(
    "farebox_gateway_overhead_seconds",
    "Wall time of a request outside its upstream calls: auth, limits, planning, event-loop "
    "queueing and post-processing",
    ["route"],
    buckets=_OVERHEAD_BUCKETS,
)
TOKENS = Counter(
    "farebox_tokens_total",
    "Tokens of all attempts by type (input_uncached, cached_read, cache_write, output, "
    "reasoning; reasoning is also inside output), as the ledger records them",
    ["route", "deployment", "type"],
)
COST = Counter(
    "farebox_cost_usd_total",
    "Priced cost of attempts in USD (unpriced attempts add nothing; see "
    "farebox_unpriced_attempts_total)",
    ["route", "deployment", "role"],
)

_OPERATIONS = {
    "chat/completions": "chat",
    "messages": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
_TOKEN_TYPES = ("input_uncached", "cached_read", "cache_write", "output", "reasoning")


class _Count:
    """A counter child's increments, added up in plain Python until the next `flush`."""

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.n = 0.0
        _buffers.append(self)

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0.0
            self.child.inc(n)


class _Hist:
    """A histogram child's observations, bucketed here until the next `flush`."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        # prometheus_client's own bucket bounds (+Inf last), so the counts map one to one.
        self.bounds: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        _buffers.append(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value, as theirs
        self.total += value

    def flush(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        self.counts, total, self.total = [0] * len(counts), self.total, 0.0
        for bucket, n in zip(self.child._buckets, counts, strict=True):
            if n:
                bucket.inc(n)
        self.child._sum.inc(total)


_buffers: list[_Count | _Hist] = []


class _AttemptSeries:
    """The series one kind of attempt updates, found with one dict lookup.

    `labels()` validates and locks on every call, and each prometheus_client update takes a
    lock (and in multiprocess mode writes an mmap): measured under load that was most of
    the metrics' cost. So the hot path only adds numbers here, and `flush` hands them to
    prometheus_client every FLUSH_S and before every scrape. The label sets are bounded by
    the config, so these objects live as long as the process.
    """

    __slots__ = ("attempts", "cost", "duration", "input", "output", "tokens", "ttft")

    def __init__(self, route: str, row: AttemptRow, operation: str, outcome: str) -> None:
        dep = row.deployment
        genai = (operation, row.provider, row.upstream_model, dep)
        self.attempts = _Count(ATTEMPTS.labels(route, dep, row.role, outcome))
        self.duration = _Hist(OPERATION_DURATION.labels(*genai, row.error_class or ""))
        self.input = _Hist(TOKEN_USAGE.labels(*genai, "input"))
        self.output = _Hist(TOKEN_USAGE.labels(*genai, "output"))
        self.cost = _Count(COST.labels(route, dep, row.role))
        self.tokens = tuple(_Count(TOKENS.labels(route, dep, kind)) for kind in _TOKEN_TYPES)
        self.ttft = _Hist(TIME_TO_FIRST_TOKEN.labels(route, dep))


class _RequestSeries:
    __slots__ = ("duration", "overhead", "requests")

    def __init__(self, row: RequestRow) -> None:
        self.requests = _Count(
            REQUESTS.labels(
                row.route, row.final_deployment or "", str(row.final_status), row.error_class or ""
            )
        )
        self.duration = _Hist(REQUEST_DURATION.labels(row.route, "true" if row.stream else "false"))
        self.overhead = _Hist(OVERHEAD.labels(row.route))


_guard_seconds: dict[str, _Hist] = {}
_guard_hits: dict[tuple[str, str, str], _Count] = {}


def observe_guard(route: str, seconds: float) -> None:
    """A route's guard checks took `seconds` on one request (buffered like the per-request
    series: the checks' own cost is what this measures, so it must add little)."""
    hist = _guard_seconds.get(route)
    if hist is None:
        hist = _guard_seconds[route] = _Hist(GUARD_SECONDS.labels(route))
    hist.observe(seconds)


def count_guard_hits(route: str, check: str, action: str, hits: int) -> None:
    key = (route, check, action)
    count = _guard_hits.get(key)
    if count is None:
        count = _guard_hits[key] = _Count(GUARD_HITS.labels(route, check, action))
    count.n += hits


_attempt_series: dict[tuple[str, str, str, str | None, str], _AttemptSeries] = {}
_request_series: dict[tuple[str, str | None, int, str | None, bool], _RequestSeries] = {}


def flush() -> None:
    """Hand the buffered per-request numbers to prometheus_client (on the event loop, like
    the updates: one loop per process, so no lock is needed)."""
    for buffer in _buffers:
        buffer.flush()


class Flusher:
    """Calls `flush` every FLUSH_S on the running loop until `stop` (which flushes once more)."""

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._tick()

    def _tick(self) -> None:
        flush()
        self._handle = self._loop.call_later(FLUSH_S, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        flush()


def overhead_s(row: RequestRow, attempts: Sequence[AttemptRow]) -> float:
    """Seconds of the request outside its upstream calls: before the first began and after
    the last ended (the time between retries is waiting, not work)."""
    total = row.latency_ms / 1000
    if not attempts:
        return total
    if len(attempts) == 1:
        return max(0.0, total - attempts[0].latency_ms / 1000)
    begin = min(a.started_at for a in attempts)
    end = max((a.started_at - begin).total_seconds() + a.latency_ms / 1000 for a in attempts)
    return max(0.0, total - end)


def observe_request(row: RequestRow, attempts: Sequence[AttemptRow], overhead: float) -> None:
    """Every per-request and per-attempt series, from the rows the ledger gets."""
    route = row.route
    key = (route, row.final_deployment, row.final_status, row.error_class, row.stream)
    series = _request_series.get(key)
    if series is None:
        series = _request_series[key] = _RequestSeries(row)
    series.requests.n += 1
    series.duration.observe(row.latency_ms / 1000)
    series.overhead.observe(overhead)
    operation = _OPERATIONS.get(row.endpoint, row.endpoint)
    for attempt in attempts:
        error = attempt.error_class
        akey = (route, attempt.deployment, attempt.role, error, operation)
        one = _attempt_series.get(akey)
        if one is None:
            one = _attempt_series[akey] = _AttemptSeries(route, attempt, operation, error or "ok")
        one.attempts.n += 1
        one.duration.observe(attempt.latency_ms / 1000)
        uncached, cached, written = (
            attempt.input_uncached_tokens,
            attempt.cached_read_tokens,
            attempt.cache_write_tokens,
        )
        one.input.observe(uncached + cached + written)
        one.output.observe(attempt.output_tokens)
        # Most attempts have no cache or reasoning tokens: skip the zero increments.
        tokens = one.tokens
        tokens[0].n += uncached
        tokens[3].n += attempt.output_tokens
        # Most attempts have no cache or reasoning tokens: skip those three when zero.
        if cached:
            tokens[1].n += cached
        if written:
            tokens[2].n += written
        if attempt.reasoning_tokens:
            tokens[4].n += attempt.reasoning_tokens
        if attempt.cost_usd is not None:
            one.cost.n += float(attempt.cost_usd)
        if attempt.ttft_ms is not None:
            one.ttft.observe(attempt.ttft_ms / 1000)


def breaker_changed(deployment: str, is_open: bool) -> None:
    BREAKER_OPEN.labels(deployment).set(1 if is_open else 0)


def breaker_tripped(deployment: str) -> None:
    BREAKER_TRIPS.labels(deployment).inc()
    BREAKER_OPEN.labels(deployment).set(1)


# -- exposition ------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def scrape() -> tuple[bytes, str]:
    """The exposition text: this process's registry, or every worker's files merged."""
    flush()
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def worker_exited(pid: int | None = None) -> None:
    """Drop a finished worker's live gauges (in-flight, queue depth) from the merge; its
    counters stay, so totals never go down when a worker restarts."""
    if multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]
