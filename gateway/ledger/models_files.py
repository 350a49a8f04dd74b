"""Uploaded files' metadata (`/v1/files`, gateway/files/): one row per file, owned by the key
that uploaded it. The bytes themselves live in the files storage backend under `storage_key`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from gateway.ledger.base import ID, NAME, TAG, Base


class FileRecord(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(ID, primary_key=True)  # file-… as the client saw it
    key_id: Mapped[str | None] = mapped_column(NAME)  # only this key may see it
    filename: Mapped[str] = mapped_column(NAME)
    purpose: Mapped[str] = mapped_column(TAG)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(TAG)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    storage_key: Mapped[str] = mapped_column(String(512))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_files_key_id_created_at", "key_id", "created_at"),
        Index("ix_files_expires_at", "expires_at"),
    )


files_table: Table = Base.metadata.tables["files"]
