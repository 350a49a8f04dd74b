"""batches: the Batch API's batches and their finished lines; requests.batch_id; per-unit
metering on attempts (images, audio seconds, search units); files.expires_at.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _at(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(255), nullable=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(128), nullable=False),
        sa.Column("completion_window", sa.String(64), nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("path", sa.String(64), nullable=True),
        sa.Column("route", sa.String(255), nullable=True),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("deployment", sa.String(255), nullable=True),
        sa.Column("upstream_batch_id", sa.String(255), nullable=True),
        sa.Column("output_file_id", sa.String(128), nullable=True),
        sa.Column("error_file_id", sa.String(128), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _at("in_progress_at"),
        _at("finalizing_at"),
        _at("completed_at"),
        _at("failed_at"),
        _at("expired_at"),
        _at("expires_at"),
        _at("cancelling_at"),
        _at("cancelled_at"),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("reserved_usd", sa.Numeric(18, 10), nullable=True),
        sa.Column("principal", sa.JSON(), nullable=True),
        sa.Column("output_expires_after_s", sa.Integer(), nullable=True),
        sa.Column("owner", sa.String(255), nullable=True),
        _at("lease_until"),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    op.create_index("ix_batches_key_id_created_at", "batches", ["key_id", "created_at"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(512), nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "line_no", name="pk_batch_lines"),
    )
    # Nullable: only the lines of a batch carry one.
    op.add_column("requests", sa.Column("batch_id", sa.String(128), nullable=True))
    op.create_index("ix_requests_batch_id", "requests", ["batch_id"])
    # Attempts billed per unit (images, audio seconds, search units) rather than per token.
    op.add_column("attempts", sa.Column("units", sa.Numeric(20, 6), nullable=True))
    op.add_column("attempts", sa.Column("unit", sa.String(64), nullable=True))
    # Price versions name their source, and a litellm one ("litellm:<version>:<provider>/
    # <model>") can pass 64 characters, which Postgres would refuse.
    with op.batch_alter_table("attempts") as batch:
        batch.alter_column("price_version", type_=sa.String(255), existing_type=sa.String(64))
    op.add_column("files", _at("expires_at"))
    op.create_index("ix_files_expires_at", "files", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_files_expires_at", table_name="files")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("unit")
        batch.drop_column("units")
        batch.alter_column("price_version", type_=sa.String(64), existing_type=sa.String(255))
    op.drop_index("ix_requests_batch_id", table_name="requests")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("batch_id")
    op.drop_table("batch_lines")
    op.drop_index("ix_batches_status", table_name="batches")
    op.drop_index("ix_batches_key_id_created_at", table_name="batches")
    op.drop_table("batches")
