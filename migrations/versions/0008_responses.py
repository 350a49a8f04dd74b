"""responses: stored Responses API objects; requests.workflow_id: calls grouped as workflows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(255), nullable=True),
        sa.Column("workflow_id", sa.String(128), nullable=True),
        sa.Column("previous_response_id", sa.String(128), nullable=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input_items", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_responses"),
    )
    op.create_index("ix_responses_expires_at", "responses", ["expires_at"])
    # Nullable: only calls chained by previous_response_id or tagged by the client carry one.
    op.add_column("requests", sa.Column("workflow_id", sa.String(128), nullable=True))
    op.create_index(
        "ix_requests_workflow_id_received_at", "requests", ["workflow_id", "received_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_requests_workflow_id_received_at", table_name="requests")
    with op.batch_alter_table("requests") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("workflow_id")
    op.drop_index("ix_responses_expires_at", table_name="responses")
    op.drop_table("responses")
