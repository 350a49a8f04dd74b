"""requests.consensus: the outcome of a consensus route (agree | majority | disagree).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: only consensus requests carry it, so a plain ADD COLUMN, no backfill.
    op.add_column("requests", sa.Column("consensus", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("consensus")
