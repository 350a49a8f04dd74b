"""requests.decision: why cost/weighted/latency routing chose the first deployment.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("decision", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("decision")
