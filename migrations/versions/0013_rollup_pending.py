"""rollup pending: the rows the Postgres writer inserted and the compactor has not yet added
to the rollups (gateway/ledger/rollup_compactor.py).

`rollup_pending_requests (txn, id, received_at)` and `rollup_pending_attempts (txn, id,
started_at)`: `txn` is the writer's transaction id (the compactor takes whole writer
transactions, so a request is never compacted apart from its attempts), id and timestamp
find the raw row in its partition. Plain logged heaps without keys or indexes: appending
stays cheap, and a crash keeps them (an UNLOGGED table would be emptied, losing rollups).
SQLite gets the same tables for one schema on both dialects, and never uses them: its writer
adds to the rollups in its own transaction.

Nothing to backfill: at this revision every row already in the ledger is in the rollups.
A downgrade compacts what is pending first (0012's writer adds to the rollups at once).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = (
    ("rollup_pending_requests", "received_at"),
    ("rollup_pending_attempts", "started_at"),
)


def upgrade() -> None:
    for name, at in _TABLES:
        op.create_table(
            name,
            sa.Column("txn", sa.BigInteger(), nullable=False),
            sa.Column("id", sa.String(128), nullable=False),
            sa.Column(at, sa.DateTime(timezone=True), nullable=False),
        )


def downgrade() -> None:
    bind = op.get_bind()
    pending = " OR ".join(f"EXISTS (SELECT 1 FROM {name})" for name, _ in _TABLES)
    pending = f"SELECT {pending}"
    if bind.dialect.name == "postgresql" and bind.execute(sa.text(pending)).scalar():
        # 0012's writer keeps the rollups in its own transaction: add what is pending first
        # (a downgrade from a later revision has done so already, with its own tables).
        from gateway.ledger.pending_sql import pg_compact

        while not bind.execute(sa.text(pg_compact(200_000))).one()[2]:
            pass
    for name, _ in reversed(_TABLES):
        op.drop_table(name)
