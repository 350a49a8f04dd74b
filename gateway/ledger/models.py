"""Ledger tables: one column per field of the RequestRow / AttemptRow dataclasses, same names.

Ids are gateway-generated strings and the primary keys, so a replayed spool batch is a no-op.
`attempts.request_id` is indexed but deliberately NOT a foreign key: the batch writer may flush
an attempt before its request row (or a spool may replay them out of order), and an insert must
never fail on ordering.

Partitioning: at ~50M attempts a month, `attempts` is meant to become
`PARTITION BY RANGE (started_at)` with one partition per month (a retention job then detaches
old months instead of deleting rows). Postgres requires the partition key in every unique
constraint, so the primary key will become (id, started_at) and the writer's conflict target
follows it; that is safe because an attempt's started_at never changes between replays. Every
report index below already leads with or ends in started_at so it carries over per partition.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, MetaData, Numeric, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so Alembic revisions and autogenerate agree across dialects.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Ten decimal places keep sub-micro-dollar per-token prices exact; 18 digits hold any realistic
# month of spend.
COST = Numeric(18, 10)
ID = String(128)
NAME = String(255)
TAG = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


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

    __table_args__ = (
        Index("ix_requests_received_at", "received_at"),
        Index("ix_requests_key_id_received_at", "key_id", "received_at"),
        Index("ix_requests_route_received_at", "route", "received_at"),
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
    price_version: Mapped[str | None] = mapped_column(TAG)
    gate_outcome: Mapped[str | None] = mapped_column(TAG)
    drill_id: Mapped[str | None] = mapped_column(ID)

    __table_args__ = (
        Index("ix_attempts_request_id", "request_id"),
        Index("ix_attempts_started_at", "started_at"),
        Index("ix_attempts_deployment_started_at", "deployment", "started_at"),
        Index("ix_attempts_provider_started_at", "provider", "started_at"),
    )


requests_table: Table = Base.metadata.tables["requests"]
attempts_table: Table = Base.metadata.tables["attempts"]
