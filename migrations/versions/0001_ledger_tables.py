"""Ledger tables: requests and attempts, with the indexes monthly reports scan.

Revision ID: 0001
Revises:
Create Date: 2025-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a revision must not change when models.py changes later.
ID = sa.String(128)
NAME = sa.String(255)
TAG = sa.String(64)
COST = sa.Numeric(18, 10)
TS = sa.DateTime(timezone=True)


def _tokens() -> list[sa.Column[int]]:
    names = (
        "input_uncached_tokens",
        "cached_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
    )
    return [sa.Column(name, sa.Integer(), nullable=False) for name in names]


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", ID, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("key_id", NAME, nullable=True),
        sa.Column("route", NAME, nullable=False),
        sa.Column("requested_model", NAME, nullable=False),
        sa.Column("endpoint", TAG, nullable=False),
        sa.Column("workload", NAME, nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("final_status", sa.Integer(), nullable=False),
        sa.Column("error_class", TAG, nullable=True),
        sa.Column("final_deployment", NAME, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        *_tokens(),
        sa.Column("cost_usd", COST, nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("gate_outcome", TAG, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
    )
    op.create_index("ix_requests_received_at", "requests", ["received_at"])
    op.create_index("ix_requests_key_id_received_at", "requests", ["key_id", "received_at"])
    op.create_index("ix_requests_route_received_at", "requests", ["route", "received_at"])

    # No foreign key to requests: the two kinds of rows may arrive in different batches.
    op.create_table(
        "attempts",
        sa.Column("id", ID, nullable=False),
        sa.Column("request_id", ID, nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("role", TAG, nullable=False),
        sa.Column("deployment", NAME, nullable=False),
        sa.Column("provider", NAME, nullable=False),
        sa.Column("provider_kind", TAG, nullable=False),
        sa.Column("upstream_model", NAME, nullable=False),
        sa.Column("provider_request_id", sa.String(512), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_class", TAG, nullable=True),
        *_tokens(),
        sa.Column("token_source", sa.String(16), nullable=False),
        sa.Column("cost_usd", COST, nullable=True),
        sa.Column("price_version", TAG, nullable=True),
        sa.Column("gate_outcome", TAG, nullable=True),
        sa.Column("drill_id", ID, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_attempts"),
    )
    op.create_index("ix_attempts_request_id", "attempts", ["request_id"])
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"])
    op.create_index("ix_attempts_deployment_started_at", "attempts", ["deployment", "started_at"])
    op.create_index("ix_attempts_provider_started_at", "attempts", ["provider", "started_at"])


def downgrade() -> None:
    op.drop_table("attempts")
    op.drop_table("requests")
