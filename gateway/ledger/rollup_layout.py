"""The rollup tables' layout as plain names: each table's columns in order and the
dimensions that are its primary key, and the measure names they share.

Kept apart from the SQLAlchemy tables (gateway/ledger/models_rollups.py, built to match and
tested against this: tests/unit/test_rollup_layout.py) because the Postgres ledger writer
builds its statement from it (gateway/ledger/rollups_sql.py) on the serving worker, which
does not import SQLAlchemy (issue #25).
"""

from __future__ import annotations

#: The value a NULL dimension is stored as: '' is never a valid route, workload, key,
#: deployment or price version name, so each table's primary key is its dimensions.
NONE = ""

#: The attempt measures of LCPR (gateway/reports/segments.py), summed per request or per
#: deployment × request, in segment_query's order. `fallback` counts groups with at least
#: one fallback attempt; `cost`, `clean_cost` and `saved` are money.
LCPR_MEASURES = (
    "attempts",
    "retries",
    "fallback",
    "gated",
    "passed",
    "input",
    "cached",
    "output",
    "cost",
    "clean",
    "clean_cost",
    "clean_tok",
    "hits",
    "saved",
)

#: Per request, beyond LCPR's: every attempt's tokens by type (response-cache hits
#: included, as `farebox usage` counts them), unpriced and failed attempts.
USAGE_MEASURES = (
    "input_uncached",
    "cached_read",
    "cache_write",
    "output_all",
    "reasoning",
    "unpriced",
    "failed",
)

#: rollup_attempts' measures, per attempt.
ATTEMPT_MEASURES = (
    "attempts",
    "failed",
    "input_uncached",
    "cached_read",
    "cache_write",
    "output",
    "reasoning",
    "cost",
    "unpriced",
    "gated",
    "passed",
    "saved",
)

#: Attempts (response-cache hits aside) by their request's dims and their own, dated both
#: ways: the window by the request's received_at, the day by the attempt's started_at.
SPEND_MEASURES = (
    "attempts",
    "input_uncached",
    "cached_read",
    "cache_write",
    "output",
    "cost",
    "unpriced",
)
MONEY = frozenset({"cost", "clean_cost", "saved"})


def _table(
    dims: tuple[str, ...], measures: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return dims + measures, dims


#: table -> (its columns in order, its dimensions: the primary key).
LAYOUT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rollup_requests": _table(
        ("hour", "route", "workload", "key_id", "final_deployment", "batch"),
        ("requests", "successful", *LCPR_MEASURES, *USAGE_MEASURES),
    ),
    # rollup_requests per UTC day: what a report reads for the whole days of its window
    # (a month is ~30 rows per group instead of ~720).
    "rollup_requests_daily": _table(
        ("day", "route", "workload", "key_id", "final_deployment", "batch"),
        ("requests", "successful", *LCPR_MEASURES, *USAGE_MEASURES),
    ),
    "rollup_deployments": _table(("hour", "deployment"), LCPR_MEASURES),
    "rollup_attempts": _table(
        (
            "hour",
            "provider",
            "provider_kind",
            "deployment",
            "upstream_model",
            "role",
            "price_version",
            "batch_path",
        ),
        (*ATTEMPT_MEASURES, "busy_ms", "first_at"),
    ),
    "rollup_dedicated": _table(("hour", "route", "workload", "key_id", "provider"), ("tokens",)),
    # One row per workflow (key × workflow id) × UTC month of its calls: a month's report
    # reads one row per workflow, never ranks its hours.
    "rollup_workflows": _table(
        ("month", "key_id", "workflow_id"),
        (
            "calls",
            "ok_calls",
            "retries",
            "cost",
            "first_at",
            "first_id",
            "first_route",
            "first_workload",
            "last_at",
            "last_id",
            "last_ok",
        ),
    ),
    "rollup_spend": _table(
        (
            "hour",
            "started_hour",
            "route",
            "workload",
            "batch",
            "deployment",
            "provider",
            "provider_kind",
            "upstream_model",
        ),
        SPEND_MEASURES,
    ),
}

#: The Postgres rollups' pending rows (migration 0013, gateway/ledger/rollup_compactor.py):
#: raw table -> (its pending table, the raw table's timestamp: its partition key). Each
#: pending row is (txn: the writer's transaction id, id, timestamp) of a row the writer
#: inserted and the compactor has not yet added to the rollups.
PENDING: dict[str, tuple[str, str]] = {
    "requests": ("rollup_pending_requests", "received_at"),
    "attempts": ("rollup_pending_attempts", "started_at"),
}
PENDING_COLUMNS = ("txn", "id")
