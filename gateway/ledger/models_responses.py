"""Stored Responses (`POST /v1/responses` with `store`), so `previous_response_id` works
whichever deployment answers the next turn, on any replica.

`input_items` is the whole conversation as it was sent to the model (the previous turn's
input and output, then this turn's input), so resolving a chain is one lookup, not a walk.
`response` is the Response object exactly as the client got it. Neither is ever logged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Table
from sqlalchemy.orm import Mapped, mapped_column

from gateway.ledger.base import ID, NAME, TAG, Base


class StoredResponseRecord(Base):
    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(ID, primary_key=True)  # resp_… as the client saw it
    request_id: Mapped[str] = mapped_column(ID)  # the ledger request that produced it
    key_id: Mapped[str | None] = mapped_column(NAME)  # only this key may read or chain it
    workflow_id: Mapped[str | None] = mapped_column(ID)
    previous_response_id: Mapped[str | None] = mapped_column(ID)
    model: Mapped[str] = mapped_column(NAME)
    status: Mapped[str] = mapped_column(TAG)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    input_items: Mapped[list[Any]] = mapped_column(JSON)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (Index("ix_responses_expires_at", "expires_at"),)


responses_table: Table = Base.metadata.tables["responses"]
