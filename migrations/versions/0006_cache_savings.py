"""Response cache: what a cache hit saved.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: only attempts of role cache_hit carry a saving, so no backfill and no
    # table rewrite (a plain ADD COLUMN on both dialects, even on a 50M-row month).
    op.add_column("attempts", sa.Column("saved_usd", sa.Numeric(18, 10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("saved_usd")
