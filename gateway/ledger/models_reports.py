"""Report tables: imported invoice lines and stored reconciliation runs.

Registered on the ledger's `Base.metadata` (gateway.ledger.models imports this module at its
end), so Alembic autogenerate and the migration drift test see them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Numeric, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from gateway.ledger.base import COST, ID, NAME, TAG, Base

# Hours on a GPU bill are fractional; token counts fit with room to spare.
QUANTITY = Numeric(24, 4)
PCT = Numeric(14, 4)


class InvoiceLineRecord(Base):
    """One line of a provider's invoice or usage export, in the ledger's vocabulary.

    `id` is `<import_id>:<n>` and `import_id` a hash of provider, format and file content,
    so re-importing a file rewrites the same rows instead of adding to them.
    """

    __tablename__ = "invoice_lines"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    import_id: Mapped[str] = mapped_column(TAG)
    provider: Mapped[str] = mapped_column(NAME)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model: Mapped[str] = mapped_column(NAME)
    token_type: Mapped[str] = mapped_column(TAG)
    tokens: Mapped[Decimal | None] = mapped_column(QUANTITY)
    amount_usd: Mapped[Decimal | None] = mapped_column(COST)
    requests: Mapped[int | None] = mapped_column(BigInteger)
    line_item: Mapped[str] = mapped_column(String(512))
    source_file: Mapped[str] = mapped_column(String(1024))
    source_format: Mapped[str] = mapped_column(TAG)
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_invoice_lines_provider_period_start", "provider", "period_start"),
        Index("ix_invoice_lines_import_id", "import_id"),
    )


class ReconciliationRecord(Base):
    """One `farebox reconcile` run: its verdict and the figures behind it."""

    __tablename__ = "reconciliations"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    month: Mapped[str] = mapped_column(String(7))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(TAG)  # ok | flagged
    token_threshold_pct: Mapped[Decimal] = mapped_column(PCT)
    cost_threshold_pct: Mapped[Decimal] = mapped_column(PCT)
    token_variance_pct: Mapped[Decimal | None] = mapped_column(PCT)
    cost_variance_pct: Mapped[Decimal | None] = mapped_column(PCT)
    metered_usd: Mapped[Decimal | None] = mapped_column(COST)
    invoiced_usd: Mapped[Decimal | None] = mapped_column(COST)
    import_ids: Mapped[list[str]] = mapped_column(JSON)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (Index("ix_reconciliations_month_created_at", "month", "created_at"),)


invoice_lines_table: Table = Base.metadata.tables["invoice_lines"]
reconciliations_table: Table = Base.metadata.tables["reconciliations"]
