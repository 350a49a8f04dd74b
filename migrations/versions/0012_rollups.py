"""rollups: the ledger summed per UTC hour (gateway/ledger/models_rollups.py), filled here
from the raw rows already in the ledger (by 0014).

Six plain tables on both dialects, primary key = their dimensions (NULL dimensions are
stored as ''). They are filled from the raw rows by migration 0014 (the rebuild
`farebox ledger rollup --rebuild` runs, over all time); from this revision on, the writer
keeps them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COST = sa.Numeric(18, 10)
_NAME = sa.String(255)
_TAG = sa.String(64)

_LCPR = (
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
_USAGE = (
    "input_uncached",
    "cached_read",
    "cache_write",
    "output_all",
    "reasoning",
    "unpriced",
    "failed",
)
_ATTEMPT = (
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
_MONEY = frozenset({"cost", "clean_cost", "saved"})


def _hour() -> sa.Column[object]:
    return sa.Column("hour", sa.DateTime(timezone=True), nullable=False)


def _dims(*names: str, types: dict[str, object] | None = None) -> list[sa.Column[object]]:
    types = types or {}
    return [sa.Column(n, types.get(n, _NAME), nullable=False) for n in names]  # type: ignore[arg-type]


def _measures(names: Sequence[str]) -> list[sa.Column[object]]:
    return [
        sa.Column(n, _COST if n in _MONEY else sa.BigInteger(), nullable=False, server_default="0")
        for n in names
    ]


def _table(name: str, dims: Sequence[str], *columns: sa.Column[object]) -> None:
    op.create_table(name, *columns, sa.PrimaryKeyConstraint("hour", *dims, name=f"pk_{name}"))


def upgrade() -> None:
    request_dims = ("route", "workload", "key_id", "final_deployment", "batch")
    _table(
        "rollup_requests",
        request_dims,
        _hour(),
        *_dims(*request_dims, types={"batch": sa.Integer()}),
        *_measures(("requests", "successful")),
        *_measures(_LCPR),
        *_measures(_USAGE),
    )
    _table("rollup_deployments", ("deployment",), _hour(), *_dims("deployment"), *_measures(_LCPR))
    attempt_dims = (
        "provider",
        "provider_kind",
        "deployment",
        "upstream_model",
        "role",
        "price_version",
        "batch_path",
    )
    _table(
        "rollup_attempts",
        attempt_dims,
        _hour(),
        *_dims(*attempt_dims, types={"provider_kind": _TAG, "role": _TAG, "batch_path": _TAG}),
        *_measures(_ATTEMPT),
        sa.Column("busy_ms", sa.Numeric(), nullable=False, server_default="0"),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
    )
    dedicated_dims = ("route", "workload", "key_id", "provider")
    _table(
        "rollup_dedicated",
        dedicated_dims,
        _hour(),
        *_dims(*dedicated_dims),
        *_measures(("tokens",)),
    )
    _table(
        "rollup_workflows",
        ("key_id", "workflow_id"),
        _hour(),
        *_dims("key_id", "workflow_id", types={"workflow_id": sa.String(128)}),
        *_measures(("calls", "ok_calls", "retries", "cost")),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_id", sa.String(128), nullable=False),
        sa.Column("first_route", _NAME, nullable=False),
        sa.Column("first_workload", _NAME, nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_id", sa.String(128), nullable=False),
        sa.Column("last_ok", sa.Integer(), nullable=False),
    )
    spend_dims = (
        "started_hour",
        "route",
        "workload",
        "batch",
        "deployment",
        "provider",
        "provider_kind",
        "upstream_model",
    )
    _table(
        "rollup_spend",
        spend_dims,
        _hour(),
        sa.Column("started_hour", sa.DateTime(timezone=True), nullable=False),
        *_dims(*spend_dims[1:], types={"batch": sa.Integer(), "provider_kind": _TAG}),
        *_measures(
            (
                "attempts",
                "input_uncached",
                "cached_read",
                "cache_write",
                "output",
                "cost",
                "unpriced",
            )
        ),
    )
    # No backfill here: migration 0014 builds every rollup from the raw rows when it finds
    # them empty (this revision used to run the rebuild, which is the head's: its tables
    # are 0014's, not these).


def downgrade() -> None:
    for name in (
        "rollup_spend",
        "rollup_workflows",
        "rollup_dedicated",
        "rollup_attempts",
        "rollup_deployments",
        "rollup_requests",
    ):
        op.drop_table(name)
