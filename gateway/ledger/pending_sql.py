"""The Postgres ledger's pending rows, as SQL text: the writer's one statement per batch
(`pg_merge`: the raw rows inserted and each recorded as pending) and the compactor's
(`pg_compact`: whole writer transactions' pending rows taken and added to every rollup with
rollups_sql's SELECTs). Used by gateway/ledger/pg_sink.py, repository.py and
rollup_compactor.py, and by migrations 0013 and 0014 to empty the pending tables.
"""

from __future__ import annotations

from gateway.ledger.rollup_layout import PENDING
from gateway.ledger.rollups_sql import daily_from_hourly, insert, selects


def _upserts(requests: str, attempts: str) -> list[str]:
    """Data-modifying CTEs adding `requests` and `attempts` (CTE names) to every rollup.

    rollup_requests_daily is summed from rollup_requests' new rows (`hourly`, a CTE: a few
    hundred rows) rather than from the raw rows again: a second per-request aggregate of
    the same attempts cost ~15 % of a compaction. The rebuild keeps the raw-row SELECT."""
    ctes = []
    for table, select in selects("postgresql", requests, attempts):
        if table == "rollup_requests":
            ctes.append(f"hourly AS ({select})")
            select = "SELECT * FROM hourly ORDER BY 1, 2, 3, 4, 5, 6"
        elif table == "rollup_requests_daily":
            select = daily_from_hourly("postgresql", "hourly")
        ctes.append(f"up_{table} AS ({insert('postgresql', table, select)} RETURNING 1)")
    return ctes


def pg_merge(requests: tuple[str, str, list[str]], attempts: tuple[str, str, list[str]]) -> str:
    """The Postgres writer's one statement per batch: insert the staged rows (rows whose id
    exists skipped) and record exactly the rows it inserted as pending (id and timestamp,
    tagged with this transaction's id) for the compactor (`pg_compact`) to add to the
    rollups. Returns (requests inserted, attempts inserted).

    Each argument is (table, staging table, columns). A target-less ON CONFLICT DO NOTHING
    holds whatever the raw tables' unique key is (partitioned: id plus the timestamp). A
    replayed batch inserts nothing, so it leaves nothing pending.
    """
    ctes = ["txn AS (SELECT pg_current_xact_id()::text::bigint AS n)"]
    for name, (table, stage, cols) in (("ins_r", requests), ("ins_a", attempts)):
        names = ", ".join(cols)
        pending, at = PENDING[table]
        ctes.append(
            f"{name} AS (INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "
            f"ON CONFLICT DO NOTHING RETURNING id, {at})"
        )
        ctes.append(
            f"pend_{name} AS (INSERT INTO {pending} (txn, id, {at}) "
            f"SELECT txn.n, i.id, i.{at} FROM {name} i, txn)"
        )
    return (
        f"WITH {', '.join(ctes)} SELECT (SELECT count(*) FROM ins_r), (SELECT count(*) FROM ins_a)"
    )


#: The raw columns the selects above read: the compactor re-reads only these (a whole
#: row is ~10x wider, and every sort and hash of the compaction carries it).
REQUEST_COLUMNS = (
    "id",
    "received_at",
    "route",
    "workload",
    "key_id",
    "final_deployment",
    "batch_id",
    "final_status",
    "error_class",
    "gate_outcome",
    "workflow_id",
    "attempts",
)
ATTEMPT_COLUMNS = (
    "id",
    "request_id",
    "started_at",
    "role",
    "deployment",
    "provider",
    "provider_kind",
    "upstream_model",
    "price_version",
    "input_uncached_tokens",
    "cached_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "saved_usd",
    "gate_outcome",
    "error_class",
    "latency_ms",
)


def _reread(table: str, columns: tuple[str, ...], deleted: str, at: str) -> str:
    # One index probe per pending row, in the one partition its timestamp names: LIMIT 1
    # keeps the lateral subquery a parameterised scan (Postgres prunes the partitions per
    # row), where a join would let the planner merge or hash whole partitions.
    cols = ", ".join(f"x.{c}" for c in columns)
    return (
        f"SELECT {cols} FROM {deleted} d CROSS JOIN LATERAL (SELECT * FROM {table} t "
        f"WHERE t.id = d.id AND t.{at} = d.{at} LIMIT 1) x"
    )


def pg_compact(limit: int) -> str:
    """The compactor's statement (gateway/ledger/rollup_compactor.py): delete the pending
    rows of whole writer transactions, about `limit` rows (at least one transaction's, if
    that alone is more), re-read their raw rows and add them to every rollup with the same
    `selects` the writer used to run per batch: the requests with the attempts pending beside
    them (a writer commits a request with its attempts), the attempts by themselves. Returns
    (requests, attempts, whether that was every pending row the statement saw).

    One statement, so one snapshot: a writer's transaction is in it whole or not at all, and
    a request is never compacted apart from the attempts written with it. The caller holds
    the compactor's advisory lock. The raw rows are found by id and timestamp, so a
    partitioned table probes only the partition of each row.
    """
    (pr, pr_at), (pa, pa_at) = PENDING["requests"], PENDING["attempts"]
    ctes = [
        f"g AS (SELECT txn, count(*) AS n FROM (SELECT txn FROM {pr} UNION ALL "
        f"SELECT txn FROM {pa}) u GROUP BY txn)",
        "c AS (SELECT txn, sum(n) OVER (ORDER BY txn) AS run FROM g)",
        f"cut AS (SELECT COALESCE(max(txn) FILTER (WHERE run <= {int(limit)}), min(txn)) "
        "AS upto, max(txn) AS last FROM c)",
        f"del_r AS (DELETE FROM {pr} p USING cut WHERE p.txn <= cut.upto "
        f"RETURNING p.id, p.{pr_at})",
        f"del_a AS (DELETE FROM {pa} p USING cut WHERE p.txn <= cut.upto "
        f"RETURNING p.id, p.{pa_at})",
        f"ins_r AS ({_reread('requests', REQUEST_COLUMNS, 'del_r', pr_at)})",
        f"ins_a AS ({_reread('attempts', ATTEMPT_COLUMNS, 'del_a', pa_at)})",
        *_upserts("ins_r", "ins_a"),
    ]
    return (
        f"WITH {', '.join(ctes)} SELECT (SELECT count(*) FROM del_r), "
        "(SELECT count(*) FROM del_a), (SELECT upto IS NOT DISTINCT FROM last FROM cut)"
    )
