"""Failover drills.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(128)
NAME = sa.String(255)
TAG = sa.String(64)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "drills",
        sa.Column("id", ID, nullable=False),
        sa.Column("route", NAME, nullable=False),
        sa.Column("target", NAME, nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("simulate_outage", sa.Boolean(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ends_at", TS, nullable=False),
        sa.Column("status", TAG, nullable=False),
        sa.Column("abort_after_errors", sa.Integer(), nullable=False),
        sa.Column("abort_error_rate", sa.Float(), nullable=False),
        sa.Column("created_by", NAME, nullable=True),
        sa.Column("schedule", NAME, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("result", sa.String(8), nullable=True),
        sa.Column("verdict", sa.JSON(), nullable=True),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_drills"),
    )
    op.create_index("ix_drills_status", "drills", ["status"])
    op.create_index("ix_drills_route_started_at", "drills", ["route", "started_at"])
    op.create_index("ix_drills_updated_at", "drills", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_drills_updated_at", table_name="drills")
    op.drop_index("ix_drills_route_started_at", table_name="drills")
    op.drop_index("ix_drills_status", table_name="drills")
    op.drop_table("drills")
