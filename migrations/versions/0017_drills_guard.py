"""drills.guard: the guard checks a drill tries on its cohort in flag mode (the config's
`guard:` form, JSON); NULL for a failover drill. A drill that only tries checks stores
`target` as "" (the column stays NOT NULL: every failover drill has one).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("drills") as batch:
        batch.add_column(sa.Column("guard", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("drills") as batch:
        batch.drop_column("guard")
