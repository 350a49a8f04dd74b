"""The rollups' SQL (text, both dialects): what one set of ledger rows adds to each rollup
table (gateway/ledger/models_rollups.py), and the upsert that adds it.

Every statement here is built once from the same measure definitions, whatever the rows are:
the rows a batch just inserted (the Postgres writer's data-modifying CTE, or the ids an insert
returned), or every raw row of a window (rebuild, the migration's backfill). So the
incremental path and a rebuild cannot disagree: they are one query over different sources.

The measures mirror the raw-row reports exactly: gateway/reports/segments.py (LCPR), the
successful-request rule (gateway/ledger/success.py), gateway/ledger/usage.py and the
ledger-day queries in gateway/reports/store.py.
"""

from __future__ import annotations

from gateway.ledger.rollup_layout import (
    ATTEMPT_MEASURES,
    LAYOUT,
    LCPR_MEASURES,
    NONE,
    SPEND_MEASURES,
    USAGE_MEASURES,
)
from gateway.ledger.success_rule import GATE_PASS, SUCCESS_STATUS
from routing.batch_paths import BATCH_ROLE

# Roles (gateway/reports/segments.py: CACHE_HIT; routing's attempt roles).
_HIT = "a.role = 'cache_hit'"
_INPUT = "(a.input_uncached_tokens + a.cached_read_tokens + a.cache_write_tokens)"
_GATE_OK = f"(a.gate_outcome IS NULL OR a.gate_outcome = '{GATE_PASS}')"
_ROLE_RETRY = "a.role = 'retry'"
_ROLE_FALLBACK = "a.role = 'fallback'"
_CLEAN = f"(a.role = 'primary' AND a.error_class IS NULL AND {_GATE_OK})"
_SUCCESS = (
    f"CASE WHEN r.final_status = {SUCCESS_STATUS} AND r.error_class IS NULL AND "
    f"(r.gate_outcome IS NULL OR r.gate_outcome = '{GATE_PASS}') THEN 1 ELSE 0 END"
)


def _flag(cond: str) -> str:
    return f"CASE WHEN {cond} THEN 1 ELSE 0 END"


def _served(expr: str) -> str:
    # A response-cache hit reached the client but no provider served its tokens.
    return f"CASE WHEN {_HIT} THEN 0 ELSE {expr} END"


#: Per group of attempts (a request, or a deployment × request): LCPR's measures.
_LCPR = {
    "attempts": "COUNT(*)",
    "retries": f"SUM({_flag(_ROLE_RETRY)})",
    # At most one per group: the count of requests (deployment × requests) that fell back.
    "fallback": f"MAX({_flag(_ROLE_FALLBACK)})",
    "gated": f"SUM({_flag('a.gate_outcome IS NOT NULL')})",
    "passed": f"SUM({_flag(f'a.gate_outcome = {GATE_PASS!r}')})",
    "input": f"SUM({_served(_INPUT)})",
    "cached": f"SUM({_served('a.cached_read_tokens')})",
    "output": f"SUM({_served('a.output_tokens')})",
    "cost": "COALESCE(SUM(a.cost_usd), 0)",
    "clean": f"SUM({_flag(_CLEAN)})",
    "clean_cost": f"COALESCE(SUM(CASE WHEN {_CLEAN} THEN a.cost_usd END), 0)",
    "clean_tok": f"SUM(CASE WHEN {_CLEAN} THEN {_INPUT} + a.output_tokens ELSE 0 END)",
    "hits": f"SUM({_flag(_HIT)})",
    "saved": "COALESCE(SUM(a.saved_usd), 0)",
}
#: Per request, for `farebox usage`: every attempt's tokens (cache hits too).
_USAGE = {
    "input_uncached": "SUM(a.input_uncached_tokens)",
    "cached_read": "SUM(a.cached_read_tokens)",
    "cache_write": "SUM(a.cache_write_tokens)",
    "output_all": "SUM(a.output_tokens)",
    "reasoning": "SUM(a.reasoning_tokens)",
    "unpriced": f"SUM({_flag('a.cost_usd IS NULL')})",
    "failed": f"SUM({_flag('a.error_class IS NOT NULL')})",
}
#: Per attempt row of rollup_attempts.
_ATTEMPT = {
    "attempts": "COUNT(*)",
    "failed": _USAGE["failed"],
    "input_uncached": "SUM(a.input_uncached_tokens)",
    "cached_read": "SUM(a.cached_read_tokens)",
    "cache_write": "SUM(a.cache_write_tokens)",
    "output": "SUM(a.output_tokens)",
    "reasoning": "SUM(a.reasoning_tokens)",
    "cost": "COALESCE(SUM(a.cost_usd), 0)",
    "unpriced": _USAGE["unpriced"],
    "gated": _LCPR["gated"],
    "passed": _LCPR["passed"],
    "saved": "COALESCE(SUM(a.saved_usd), 0)",
}
assert tuple(_LCPR) == LCPR_MEASURES and tuple(_USAGE) == USAGE_MEASURES
assert tuple(_ATTEMPT) == ATTEMPT_MEASURES


def hour_of(dialect: str, column: str) -> str:
    """The UTC hour a timestamp falls in, as each dialect stores timestamps."""
    if dialect == "postgresql":
        return f"date_trunc('hour', {column}, 'UTC')"
    # SQLite keeps UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's DateTime format).
    return f"strftime('%Y-%m-%d %H:00:00.000000', {column})"


def day_of(dialect: str, column: str) -> str:
    """The UTC day a timestamp falls in (its 00:00), as each dialect stores timestamps."""
    if dialect == "postgresql":
        return f"date_trunc('day', {column}, 'UTC')"
    return f"strftime('%Y-%m-%d 00:00:00.000000', {column})"


def month_of(dialect: str, column: str) -> str:
    """The UTC month a timestamp falls in (its first day's 00:00)."""
    if dialect == "postgresql":
        return f"date_trunc('month', {column}, 'UTC')"
    return f"strftime('%Y-%m-01 00:00:00.000000', {column})"


def _dim(column: str) -> str:
    return f"COALESCE({column}, '{NONE}')"


def _sum(name: str, column: str) -> str:
    # NULL sums (a request without attempts) are stored as 0: every report reads NULL money
    # and counts as 0 (gateway/reports/store_base.py dec).
    return f"COALESCE(SUM({column}), 0) AS {name}"


def _positions(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


def requests_select(dialect: str, requests: str, attempts: str, *, daily: bool = False) -> str:
    """rollup_requests' rows (rollup_requests_daily's if `daily`) for the requests in
    `requests` and their attempts in `attempts` (each a table name or a parenthesised
    SELECT of whole rows)."""
    per = ", ".join(f"{expr} AS {name}" for name, expr in {**_LCPR, **_USAGE}.items())
    sums = ", ".join(_sum(name, f"p.{name}") for name in (*LCPR_MEASURES, *USAGE_MEASURES))
    bucket = (day_of if daily else hour_of)(dialect, "r.received_at")
    return (
        f"SELECT {bucket} AS {'day' if daily else 'hour'}, r.route AS route, "
        f"{_dim('r.workload')} AS workload, {_dim('r.key_id')} AS key_id, "
        f"{_dim('r.final_deployment')} AS final_deployment, "
        f"CASE WHEN r.batch_id IS NULL THEN 0 ELSE 1 END AS batch, "
        f"COUNT(*) AS requests, SUM({_SUCCESS}) AS successful, {sums} "
        f"FROM {requests} r LEFT JOIN "
        f"(SELECT a.request_id AS rid, {per} FROM {attempts} a GROUP BY a.request_id) p "
        f"ON p.rid = r.id GROUP BY {_positions(6)} ORDER BY {_positions(6)}"
    )


def daily_from_hourly(dialect: str, hourly: str) -> str:
    """rollup_requests_daily's rows summed from rollup_requests' rows in `hourly` (a table
    or CTE name): every measure is a sum, so a day's row is its hours' rows added up."""
    names, dims = LAYOUT["rollup_requests"]
    sums = ", ".join(f"SUM({m}) AS {m}" for m in names if m not in dims)
    return (
        f"SELECT {day_of(dialect, 'hour')} AS day, {', '.join(dims[1:])}, {sums} "
        f"FROM {hourly} h GROUP BY {_positions(len(dims))} ORDER BY {_positions(len(dims))}"
    )


def deployments_select(dialect: str, attempts: str, having: str = "") -> str:
    """rollup_deployments' rows: each deployment × request of `attempts`, dated by the hour
    of its first attempt (`having` may filter the groups, e.g. by that first attempt)."""
    per = ", ".join(f"{expr} AS {name}" for name, expr in _LCPR.items())
    sums = ", ".join(_sum(name, f"p.{name}") for name in LCPR_MEASURES)
    return (
        f"SELECT {hour_of(dialect, 'p.first')} AS hour, p.deployment AS deployment, {sums} "
        f"FROM (SELECT a.deployment AS deployment, MIN(a.started_at) AS first, {per} "
        f"FROM {attempts} a GROUP BY a.deployment, a.request_id {having}) p "
        f"GROUP BY 1, 2 ORDER BY 1, 2"
    )


def attempts_select(dialect: str, attempts: str, requests: str) -> str:
    """rollup_attempts' rows: `attempts` per hour of started_at and their dims.

    A batch line's attempt carries its batch's path, found through its request in
    `requests` (the rows inserted with it; for a rebuild, every request of a batch)."""
    measures = ", ".join(f"{expr} AS {name}" for name, expr in _ATTEMPT.items())
    path = "COALESCE(b.path, '')"
    joins = (
        f"LEFT JOIN {requests} r ON r.id = a.request_id AND a.role = '{BATCH_ROLE}' "
        "LEFT JOIN batches b ON b.id = r.batch_id "
    )
    return (
        f"SELECT {hour_of(dialect, 'a.started_at')} AS hour, a.provider, a.provider_kind, "
        f"a.deployment, a.upstream_model, a.role, {_dim('a.price_version')} AS price_version, "
        f"{path} AS batch_path, {measures}, SUM(CAST(a.latency_ms AS NUMERIC)) AS busy_ms, "
        f"MIN(a.started_at) AS first_at "
        f"FROM {attempts} a {joins}GROUP BY {_positions(8)} ORDER BY {_positions(8)}"
    )


def dedicated_select(dialect: str, requests: str, attempts: str) -> str:
    """rollup_dedicated's rows: tokens dedicated providers served (cache hits aside) for the
    requests in `requests`, dated by the request's received_at."""
    tokens = f"({_INPUT} + a.output_tokens)"
    return (
        f"SELECT {hour_of(dialect, 'r.received_at')} AS hour, r.route AS route, "
        f"{_dim('r.workload')} AS workload, {_dim('r.key_id')} AS key_id, "
        f"a.provider AS provider, SUM({tokens}) AS tokens "
        f"FROM {requests} r JOIN {attempts} a ON a.request_id = r.id "
        f"WHERE a.provider_kind = 'dedicated' AND NOT ({_HIT}) "
        f"GROUP BY {_positions(5)} ORDER BY {_positions(5)}"
    )


def spend_select(dialect: str, requests: str, attempts: str) -> str:
    """rollup_spend's rows: the attempts of `requests` (response-cache hits aside) by
    request dims (hour of received_at) and attempt dims (hour of started_at)."""
    measures = ", ".join(f"{_ATTEMPT[name]} AS {name}" for name in SPEND_MEASURES)
    return (
        f"SELECT {hour_of(dialect, 'r.received_at')} AS hour, "
        f"{hour_of(dialect, 'a.started_at')} AS started_hour, r.route AS route, "
        f"{_dim('r.workload')} AS workload, "
        "CASE WHEN r.batch_id IS NULL THEN 0 ELSE 1 END AS batch, a.deployment, a.provider, "
        f"a.provider_kind, a.upstream_model, {measures} "
        f"FROM {requests} r JOIN {attempts} a ON a.request_id = r.id WHERE NOT ({_HIT}) "
        f"GROUP BY {_positions(9)} ORDER BY {_positions(9)}"
    )


def workflows_select(dialect: str, requests: str, attempts: str) -> str:
    """rollup_workflows' rows: the tagged calls of `requests` per workflow × UTC month, with
    the first and last call of each (by received_at, then id: gateway/reports/
    store_workflows.py) and each call's cost (every attempt's, unpriced ones adding nothing)."""
    order = "r.received_at, r.id"
    part = f"PARTITION BY {month_of(dialect, 'r.received_at')}, r.key_id, r.workflow_id"
    calls = (
        f"SELECT r.*, {_SUCCESS} AS ok, c.cost AS call_cost, "
        f"ROW_NUMBER() OVER ({part} ORDER BY {order}) AS nth, "
        f"ROW_NUMBER() OVER ({part} ORDER BY r.received_at DESC, r.id DESC) AS from_end "
        f"FROM {requests} r LEFT JOIN (SELECT a.request_id AS rid, SUM(a.cost_usd) AS cost "
        f"FROM {attempts} a GROUP BY a.request_id) c ON c.rid = r.id "
        "WHERE r.workflow_id IS NOT NULL"
    )

    def first(column: str) -> str:
        return f"MAX(CASE WHEN w.nth = 1 THEN {column} END)"

    def last(column: str) -> str:
        return f"MAX(CASE WHEN w.from_end = 1 THEN {column} END)"

    return (
        f"SELECT {month_of(dialect, 'w.received_at')} AS month, {_dim('w.key_id')} AS key_id, "
        "w.workflow_id AS workflow_id, COUNT(*) AS calls, SUM(w.ok) AS ok_calls, "
        "SUM(CASE WHEN w.attempts > 1 THEN w.attempts - 1 ELSE 0 END) AS retries, "
        "COALESCE(SUM(w.call_cost), 0) AS cost, "
        f"{first('w.received_at')} AS first_at, {first('w.id')} AS first_id, "
        f"{first('w.route')} AS first_route, {first(_dim('w.workload'))} AS first_workload, "
        f"{last('w.received_at')} AS last_at, {last('w.id')} AS last_id, "
        f"{last('w.ok')} AS last_ok "
        f"FROM ({calls}) w GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )


# rollup_workflows: the columns of its first and of its last call, replaced (not added) when
# the other row's call comes first (last).
_FIRST = ("first_at", "first_id", "first_route", "first_workload")
_LAST = ("last_at", "last_id", "last_ok")


def columns(table: str) -> list[str]:
    return list(LAYOUT[table][0])


def insert(dialect: str, table: str, select: str) -> str:
    """INSERT the rows of `select` (in the table's column order) adding to existing rows.

    Postgres: the SELECT's ORDER BY (the dimensions) is the order rows are locked in, so two
    writers upserting overlapping rows wait for each other instead of deadlocking. SQLite
    has one writer at a time; its upsert wants a WHERE on the SELECT (a parsing ambiguity
    with a join's ON), hence the wrapper.
    """
    names = columns(table)
    dims = list(LAYOUT[table][1])
    least = "LEAST" if dialect == "postgresql" else "MIN"

    def merge(n: str) -> str:
        if table == "rollup_workflows" and n in _FIRST + _LAST:
            # Row comparison: (at, id) orders calls as the raw workflow query does.
            which = "first" if n in _FIRST else "last"
            cmp = "<" if which == "first" else ">"
            new, old = (
                f"(EXCLUDED.{which}_at, EXCLUDED.{which}_id)",
                f"({table}.{which}_at, {table}.{which}_id)",
            )
            return f"{n} = CASE WHEN {new} {cmp} {old} THEN EXCLUDED.{n} ELSE {table}.{n} END"
        if n == "first_at":
            return f"{n} = {least}({table}.{n}, EXCLUDED.{n})"
        return f"{n} = {table}.{n} + EXCLUDED.{n}"

    sets = ", ".join(merge(n) for n in names if n not in dims)
    source = select if dialect == "postgresql" else f"SELECT * FROM ({select}) WHERE true"
    return (
        f"INSERT INTO {table} ({', '.join(names)}) {source} "
        f"ON CONFLICT ({', '.join(dims)}) DO UPDATE SET {sets}"
    )


def selects(dialect: str, requests: str, attempts: str) -> list[tuple[str, str]]:
    """(table, SELECT) for every rollup table, over one set of whole requests and their
    attempts, in the fixed order every writer upserts them."""
    return [
        ("rollup_requests", requests_select(dialect, requests, attempts)),
        ("rollup_requests_daily", requests_select(dialect, requests, attempts, daily=True)),
        ("rollup_deployments", deployments_select(dialect, attempts)),
        ("rollup_attempts", attempts_select(dialect, attempts, requests)),
        ("rollup_dedicated", dedicated_select(dialect, requests, attempts)),
        ("rollup_workflows", workflows_select(dialect, requests, attempts)),
        ("rollup_spend", spend_select(dialect, requests, attempts)),
    ]
