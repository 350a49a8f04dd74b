"""requests.guard: what the route's guard checks did to a request, as its `x-farebox-guard`
header said it ("reroute; rerouted=pii-local; masked=mask-rest"; NULL when no check fired),
and `ix_requests_guard_received_at`, a partial index of the requests that have one.

The reports' "guardrail hits" section groups a month's guarded requests by route and
summary: like the consensus section (0015), it reads them on the partial index instead of
scanning a month of requests, most of which no check fired on. On Postgres both the column
and the index are made on the partitioned table, so every partition (DEFAULT included) gets
them and the partitions made later inherit them; a plain ADD COLUMN of a nullable column
without a default rewrites no partition.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("guard IS NOT NULL")


def upgrade() -> None:
    op.add_column("requests", sa.Column("guard", sa.String(255), nullable=True))
    op.create_index(
        "ix_requests_guard_received_at",
        "requests",
        ["received_at"],
        postgresql_where=_WHERE,
        sqlite_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_requests_guard_received_at", table_name="requests")
    with op.batch_alter_table("requests") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("guard")
