"""Invoice lines and reconciliation runs (monthly metering reconciliation).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a revision must not change when models change later.
ID = sa.String(128)
NAME = sa.String(255)
TAG = sa.String(64)
COST = sa.Numeric(18, 10)
QUANTITY = sa.Numeric(24, 4)
PCT = sa.Numeric(14, 4)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "invoice_lines",
        sa.Column("id", ID, nullable=False),
        sa.Column("import_id", TAG, nullable=False),
        sa.Column("provider", NAME, nullable=False),
        sa.Column("period_start", TS, nullable=False),
        sa.Column("period_end", TS, nullable=False),
        sa.Column("model", NAME, nullable=False),
        sa.Column("token_type", TAG, nullable=False),
        sa.Column("tokens", QUANTITY, nullable=True),
        sa.Column("amount_usd", COST, nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=True),
        sa.Column("line_item", sa.String(512), nullable=False),
        sa.Column("source_file", sa.String(1024), nullable=False),
        sa.Column("source_format", TAG, nullable=False),
        sa.Column("imported_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_invoice_lines"),
    )
    op.create_index(
        "ix_invoice_lines_provider_period_start", "invoice_lines", ["provider", "period_start"]
    )
    op.create_index("ix_invoice_lines_import_id", "invoice_lines", ["import_id"])

    op.create_table(
        "reconciliations",
        sa.Column("id", ID, nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("status", TAG, nullable=False),
        sa.Column("token_threshold_pct", PCT, nullable=False),
        sa.Column("cost_threshold_pct", PCT, nullable=False),
        sa.Column("token_variance_pct", PCT, nullable=True),
        sa.Column("cost_variance_pct", PCT, nullable=True),
        sa.Column("metered_usd", COST, nullable=True),
        sa.Column("invoiced_usd", COST, nullable=True),
        sa.Column("import_ids", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reconciliations"),
    )
    op.create_index(
        "ix_reconciliations_month_created_at", "reconciliations", ["month", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("reconciliations")
    op.drop_table("invoice_lines")
