"""Ledger tables: one column per field of the RequestRow / AttemptRow tuples, in their order.

Ids are gateway-generated strings and the primary keys, so a replayed spool batch is a no-op.
`attempts.request_id` is indexed but deliberately NOT a foreign key: the batch writer may flush
an attempt before its request row (or a spool may replay them out of order), and an insert must
never fail on ordering.

Partitioning (Postgres only, migration 0011; gateway/ledger/partitions.py): `requests` is
`PARTITION BY RANGE (received_at)` and `attempts` `PARTITION BY RANGE (started_at)`, one
partition per UTC day plus a DEFAULT partition, so a report scans only its days and retention
drops whole days. Postgres requires the partition key in every unique constraint, so there the
primary keys are (id, received_at) and (id, started_at), and the writers insert with a
target-less `ON CONFLICT DO NOTHING`: a replayed row carries the same timestamp, so it still
conflicts and is skipped. The models keep `id` alone as the primary key: that is the SQLite
schema (plain tables), what the ORM needs, and what ids are in practice. The indexes below
exist on every partition; the report ones carry the partition key, so a month's report prunes
to its days, while a lookup by request_id or batch_id alone probes each day's index.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

# Re-exported: importers of the tables also take the shared column types and Base from here.
from gateway.ledger.base import COST as COST
from gateway.ledger.base import ID, NAME, TAG, USD
from gateway.ledger.base import NAMING_CONVENTION as NAMING_CONVENTION
from gateway.ledger.base import Base as Base


class RequestRecord(Base):
    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_id: Mapped[str | None] = mapped_column(NAME)
    route: Mapped[str] = mapped_column(NAME)
    requested_model: Mapped[str] = mapped_column(NAME)
    endpoint: Mapped[str] = mapped_column(TAG)
    workload: Mapped[str | None] = mapped_column(NAME)
    stream: Mapped[bool] = mapped_column(Boolean)
    final_status: Mapped[int] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(TAG)
    final_deployment: Mapped[str | None] = mapped_column(NAME)
    attempts: Mapped[int] = mapped_column(Integer)
    input_uncached_tokens: Mapped[int] = mapped_column(Integer)
    cached_read_tokens: Mapped[int] = mapped_column(Integer)
    cache_write_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    reasoning_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[Decimal | None] = mapped_column(COST)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    gate_outcome: Mapped[str | None] = mapped_column(TAG)
    decision: Mapped[str | None] = mapped_column(NAME)
    team: Mapped[str | None] = mapped_column(NAME)
    segment: Mapped[str | None] = mapped_column(NAME)
    consensus: Mapped[str | None] = mapped_column(TAG)
    workflow_id: Mapped[str | None] = mapped_column(ID)
    batch_id: Mapped[str | None] = mapped_column(ID)
    guard: Mapped[str | None] = mapped_column(NAME)

    __table_args__ = (
        Index("ix_requests_received_at", "received_at"),
        Index("ix_requests_batch_id", "batch_id"),
        Index("ix_requests_workflow_id_received_at", "workflow_id", "received_at"),
        Index("ix_requests_key_id_received_at", "key_id", "received_at"),
        Index("ix_requests_route_received_at", "route", "received_at"),
        # Consensus requests only (the column is NULL on every other): the LCPR report's
        # consensus section reads them without scanning a month of requests (migration 0015).
        Index(
            "ix_requests_consensus_received_at",
            "received_at",
            postgresql_where=text("consensus IS NOT NULL"),
            sqlite_where=text("consensus IS NOT NULL"),
        ),
        # Requests a guard check fired on, likewise for the reports' guardrail hits
        # (migration 0016).
        Index(
            "ix_requests_guard_received_at",
            "received_at",
            postgresql_where=text("guard IS NOT NULL"),
            sqlite_where=text("guard IS NOT NULL"),
        ),
    )


class AttemptRecord(Base):
    __tablename__ = "attempts"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    request_id: Mapped[str] = mapped_column(ID)
    attempt_no: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(TAG)
    deployment: Mapped[str] = mapped_column(NAME)
    provider: Mapped[str] = mapped_column(NAME)
    provider_kind: Mapped[str] = mapped_column(TAG)
    upstream_model: Mapped[str] = mapped_column(NAME)
    provider_request_id: Mapped[str | None] = mapped_column(String(512))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(TAG)
    input_uncached_tokens: Mapped[int] = mapped_column(Integer)
    cached_read_tokens: Mapped[int] = mapped_column(Integer)
    cache_write_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    reasoning_tokens: Mapped[int] = mapped_column(Integer)
    token_source: Mapped[str] = mapped_column(String(16))
    cost_usd: Mapped[Decimal | None] = mapped_column(COST)
    price_version: Mapped[str | None] = mapped_column(NAME)
    gate_outcome: Mapped[str | None] = mapped_column(TAG)
    drill_id: Mapped[str | None] = mapped_column(ID)
    saved_usd: Mapped[Decimal | None] = mapped_column(COST)
    # Billed per unit rather than per token (images, audio seconds, search units).
    units: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    unit: Mapped[str | None] = mapped_column(TAG)

    __table_args__ = (
        Index("ix_attempts_request_id", "request_id"),
        Index("ix_attempts_started_at", "started_at"),
        Index("ix_attempts_deployment_started_at", "deployment", "started_at"),
        Index("ix_attempts_provider_started_at", "provider", "started_at"),
    )


class ApiKeyRecord(Base):
    """A virtual key. Only the sha256 of the secret is stored; the secret is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(NAME)
    team: Mapped[str | None] = mapped_column(NAME)
    key_hash: Mapped[str] = mapped_column(TAG)
    key_prefix: Mapped[str] = mapped_column(String(16))
    routes: Mapped[list[str] | None] = mapped_column(JSON)  # None: every route
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[Decimal | None] = mapped_column(USD)  # per calendar month
    soft_budget_ratio: Mapped[float | None] = mapped_column(Float)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Bumped on every change (revoke and rotate included): replicas poll it as a watermark.
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_api_keys_key_hash", "key_hash", unique=True),
        Index("ix_api_keys_updated_at", "updated_at"),
    )


class AdminAuditRecord(Base):
    __tablename__ = "admin_audit"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(NAME)  # "admin-api" or "cli:<user>"
    action: Mapped[str] = mapped_column(TAG)
    target: Mapped[str | None] = mapped_column(ID)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    client: Mapped[str | None] = mapped_column(NAME)

    __table_args__ = (Index("ix_admin_audit_at", "at"),)


requests_table: Table = Base.metadata.tables["requests"]
attempts_table: Table = Base.metadata.tables["attempts"]
api_keys_table: Table = Base.metadata.tables["api_keys"]
admin_audit_table: Table = Base.metadata.tables["admin_audit"]

# Report and drill tables (invoice lines, reconciliations, drills) register on the same metadata.
from gateway.ledger import models_batches as _batches  # noqa: E402, F401
from gateway.ledger import models_drills as _drills  # noqa: E402, F401
from gateway.ledger import models_files as _files  # noqa: E402, F401
from gateway.ledger import models_reports as _reports  # noqa: E402, F401
from gateway.ledger import models_responses as _responses  # noqa: E402, F401
from gateway.ledger import models_rollups as _rollups  # noqa: E402, F401
