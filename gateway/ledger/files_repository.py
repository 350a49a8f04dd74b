"""SQL for uploaded files' metadata (table `files`, gateway/ledger/models_files.py).

Runs on the ledger's own engine; gateway/files/store.py adds the storage backend and the
rules (ids, ownership, validation) on top. Every query is scoped to the owning key: a key
(None for a gateway without auth) sees only its own files. A file past its `expires_at` is
gone for every read at once, before the purge (`expired`, `delete_expired`) removes it.
Timestamps go in as UTC (SQLite keeps them as text without an offset) and come back aware.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.models_files import files_table

_c = files_table.c
_OWNED = (_c.id == bindparam("file_id"), _c.key_id.is_not_distinct_from(bindparam("key_id")))


def _live(now: str = "now") -> ColumnElement[bool]:
    return _c.expires_at.is_(None) | (_c.expires_at > bindparam(now, type_=_c.expires_at.type))


_FETCH = select(files_table).where(*_OWNED, _live())
# A page's cursor is found even if it expired since the last page: the page goes on from it.
_CURSOR = select(_c.created_at, _c.id).where(*_OWNED)
_DELETE = delete(files_table).where(*_OWNED, _live())
_INSERT = insert(files_table)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _row(found: Any) -> dict[str, Any]:
    out = dict(found)
    out["created_at"] = _utc(out["created_at"])
    if out.get("expires_at") is not None:
        out["expires_at"] = _utc(out["expires_at"])
    return out


class FilesRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        # Shared with the ledger: disposed by its owner (LedgerRepository.close), not here.
        self.engine = engine

    async def insert(self, row: Mapping[str, Any]) -> None:
        values = dict(row)
        values["created_at"] = _utc(values["created_at"])
        if values.get("expires_at") is not None:
            values["expires_at"] = _utc(values["expires_at"])
        async with self.engine.begin() as conn:
            await conn.execute(_INSERT, values)

    async def fetch(self, file_id: str, key_id: str | None) -> dict[str, Any] | None:
        """The row if it exists, has not expired and belongs to `key_id` (None matches only
        rows without one)."""
        params = {"file_id": file_id, "key_id": key_id, "now": _now()}
        async with self.engine.connect() as conn:
            found = (await conn.execute(_FETCH, params)).mappings().first()
        return None if found is None else _row(found)

    async def delete(self, file_id: str, key_id: str | None) -> bool:
        """Delete the row if `fetch` would have returned it; whether one was deleted."""
        params = {"file_id": file_id, "key_id": key_id, "now": _now()}
        async with self.engine.begin() as conn:
            result = await conn.execute(_DELETE, params)
        return int(result.rowcount) > 0

    async def page(
        self,
        key_id: str | None,
        *,
        purpose: str | None,
        limit: int,
        after: str | None,
        descending: bool,
    ) -> list[dict[str, Any]]:
        """Up to `limit` of the key's files ordered by (created_at, id), starting after the
        file `after` (a cursor the key owns; an unknown one gives an empty page)."""
        query = select(files_table).where(
            _c.key_id.is_not_distinct_from(key_id),
            _c.expires_at.is_(None) | (_c.expires_at > _now()),
        )
        if purpose is not None:
            query = query.where(_c.purpose == purpose)
        async with self.engine.connect() as conn:
            if after is not None:
                cursor = (
                    (await conn.execute(_CURSOR, {"file_id": after, "key_id": key_id}))
                    .mappings()
                    .first()
                )
                if cursor is None:
                    return []
                at, ident = cursor["created_at"], cursor["id"]
                if descending:
                    query = query.where(
                        (_c.created_at < at) | ((_c.created_at == at) & (_c.id < ident))
                    )
                else:
                    query = query.where(
                        (_c.created_at > at) | ((_c.created_at == at) & (_c.id > ident))
                    )
            order = (
                (_c.created_at.desc(), _c.id.desc())
                if descending
                else (_c.created_at.asc(), _c.id.asc())
            )
            rows = (await conn.execute(query.order_by(*order).limit(limit))).mappings().all()
        return [_row(found) for found in rows]

    async def expired(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` files (id, storage_key) expired at `now`, any key's (the
        expires_at index finds them)."""
        query = (
            select(_c.id, _c.storage_key)
            .where(_c.expires_at <= _utc(now))
            .order_by(_c.expires_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(found) for found in (await conn.execute(query)).mappings().all()]

    async def delete_expired(self, ids: list[str], now: datetime) -> int:
        """Delete those of `ids` that are expired at `now`; how many were deleted (fewer
        when another replica's purge got there first)."""
        if not ids:
            return 0
        stmt = delete(files_table).where(_c.id.in_(ids), _c.expires_at <= _utc(now))
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount or 0)
