"""consensus index: `ix_requests_consensus_received_at`, a partial index of the requests a
consensus route answered (`consensus IS NOT NULL`; NULL on every other request).

The consensus section of `farebox lcpr` groups the month's consensus requests: without it,
that read scanned a month of requests (about 5 s per query at 42M requests a month, the
largest part of an LCPR report on the rollups). On Postgres the index is made on the
partitioned table, so every partition has it and the partitions made later inherit it.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("consensus IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_requests_consensus_received_at",
        "requests",
        ["received_at"],
        postgresql_where=_WHERE,
        sqlite_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_requests_consensus_received_at", table_name="requests")
