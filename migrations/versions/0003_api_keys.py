"""Virtual API keys, the admin audit trail, and the team/segment a request was billed to.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a revision must not change when models.py changes later.
ID = sa.String(128)
NAME = sa.String(255)
TAG = sa.String(64)
USD = sa.Numeric(18, 6)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("team", NAME, nullable=True),
        sa.Column("key_hash", TAG, nullable=False),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("routes", sa.JSON(), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("budget_usd", USD, nullable=True),
        sa.Column("soft_budget_ratio", sa.Float(), nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )
    op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
    op.create_index("ix_api_keys_updated_at", "api_keys", ["updated_at"])

    op.create_table(
        "admin_audit",
        sa.Column("id", ID, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", NAME, nullable=False),
        sa.Column("action", TAG, nullable=False),
        sa.Column("target", ID, nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("client", NAME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_admin_audit"),
    )
    op.create_index("ix_admin_audit_at", "admin_audit", ["at"])

    op.add_column("requests", sa.Column("team", NAME, nullable=True))
    op.add_column("requests", sa.Column("segment", NAME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("segment")
        batch.drop_column("team")
    op.drop_table("admin_audit")
    op.drop_table("api_keys")
