"""Prometheus metrics. Names follow Prometheus conventions (unit suffixes, _total)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

LEDGER_QUEUE_DEPTH = Gauge(
    "farebox_ledger_queue_depth", "Ledger rows waiting in memory to be written"
)
LEDGER_ROWS_WRITTEN = Counter(
    "farebox_ledger_rows_written_total", "Ledger rows written to the database", ["table"]
)
LEDGER_ROWS_SPOOLED = Counter(
    "farebox_ledger_rows_spooled_total", "Ledger rows written to the disk spool", ["reason"]
)
LEDGER_SPOOL_BYTES = Gauge("farebox_ledger_spool_bytes", "Bytes waiting in the disk spool")
LEDGER_REPLAY_LAG = Gauge(
    "farebox_ledger_replay_lag_seconds",
    "Age of the oldest spooled batch not yet replayed (0 when the spool is empty)",
)
LEDGER_WRITE_ERRORS = Counter(
    "farebox_ledger_write_errors_total", "Failed database writes of ledger batches"
)
UNPRICED_ATTEMPTS = Counter(
    "farebox_unpriced_attempts_total",
    "Attempts recorded with cost NULL because no price is known",
    ["deployment"],
)
ATTEMPTS = Counter(
    "farebox_attempts_total",
    "Upstream attempts by deployment, role and outcome (error class, or ok)",
    ["deployment", "role", "outcome"],
)
REQUESTS = Counter(
    "farebox_requests_total",
    "Client requests that reached routing, by route and final HTTP status",
    ["route", "status"],
)
BREAKER_OPENED = Counter(
    "farebox_breaker_force_opened_total",
    "Breakers opened at once because the provider rejected our credentials or model (401/403/404)",
    ["deployment"],
)


# labels() validates and locks on every call; the label sets here are bounded by the config,
# so keep the children and just increment them on the hot path.
_attempt_children: dict[tuple[str, str, str], Any] = {}
_request_children: dict[tuple[str, int], Any] = {}


IN_FLIGHT = Gauge(
    "farebox_deployment_in_flight", "Upstream calls in flight on this replica", ["deployment"]
)
DEDICATED_CAPACITY = Gauge(
    "farebox_dedicated_capacity", "max_concurrency of a dedicated deployment", ["deployment"]
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


def count_attempt(deployment: str, role: str, outcome: str) -> None:
    key = (deployment, role, outcome)
    child = _attempt_children.get(key)
    if child is None:
        child = _attempt_children[key] = ATTEMPTS.labels(deployment, role, outcome)
    child.inc()


def count_request(route: str, status: int) -> None:
    key = (route, status)
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = REQUESTS.labels(route, str(status))
    child.inc()
