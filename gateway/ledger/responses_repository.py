"""SQL for stored Responses (table `responses`, gateway/ledger/models_responses.py).

Runs on the ledger's own engine (Postgres in production, SQLite in the demo): the store in
gateway/conversations adds the timeouts, the never-raise save and the id rules on top.

The two JSON columns are written and read as text the caller has already encoded (orjson):
a conversation can be hundreds of kilobytes, and the stdlib encoder SQLAlchemy would use is
several times slower on the event loop. Timestamps go in as UTC, because SQLite keeps them
as text without an offset, and come back aware.

Nothing here may log a conversation: the ledger engine hides statement parameters from log
lines and exception messages (`hide_parameters`, gateway/ledger/repository.py), and aiosqlite's
per-statement debug lines, which print them, are turned off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Insert,
    Text,
    cast,
    delete,
    insert,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.models_responses import responses_table

_JSON_COLUMNS = ("input_items", "response")
_TIME_COLUMNS = ("created_at", "expires_at")
_c = responses_table.c
# Every column, the JSON ones as their text (decoded by the caller with orjson): cast in SQL,
# since asyncpg would otherwise decode a json column itself, with the stdlib decoder.
_SELECT = select(
    *(cast(col, Text).label(col.name) if col.name in _JSON_COLUMNS else col for col in _c)
)


def quiet_aiosqlite() -> None:
    """aiosqlite logs every statement with its parameters at DEBUG (a root logger at DEBUG
    turns it on): here those parameters are the stored conversations, which are never logged.
    Its warnings and errors still show."""
    driver_log = logging.getLogger("aiosqlite")
    # Its own level, not the effective one: a root logger lowered to DEBUG later must not
    # turn the statements on.
    if driver_log.level < logging.INFO:  # NOTSET (0) included
        driver_log.setLevel(logging.INFO)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ResponsesRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        # Shared with the ledger: disposed by its owner (LedgerRepository.close), not here.
        self.engine = engine
        dialect = engine.dialect.name
        postgres = dialect == "postgresql"
        if dialect == "sqlite":
            quiet_aiosqlite()
        self._insert = pg_insert if postgres else sqlite_insert if dialect == "sqlite" else None
        # Postgres will not put a text parameter in a json column unless told to; SQLite's
        # JSON is text already (and a CAST to an unknown type there would make it a number).
        self._json: Callable[[str], ColumnElement[Any]] = (
            (lambda value: cast(type_coerce(value, Text), JSON))
            if postgres
            else (lambda value: type_coerce(value, Text))
        )

    async def insert(self, row: Mapping[str, Any]) -> bool:
        """One row; `input_items` and `response` are JSON text. False when the id exists
        (a replayed save), which leaves the stored row as it was."""
        values = dict(row)
        for name in _JSON_COLUMNS:
            values[name] = self._json(values[name])
        for name in _TIME_COLUMNS:
            values[name] = _utc(values[name])
        stmt: Insert
        if self._insert is not None:
            stmt = self._insert(responses_table).values(values).on_conflict_do_nothing()
        else:  # another dialect: a plain insert (a replay then fails on the primary key)
            stmt = insert(responses_table).values(values)
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    async def fetch(
        self, response_id: str, key_id: str | None, now: datetime
    ) -> dict[str, Any] | None:
        """The row (JSON columns as text) if it exists, belongs to `key_id` (None matches only
        rows stored without a key) and has not expired."""
        stmt = _SELECT.where(
            _c.id == response_id,
            _c.key_id.is_not_distinct_from(key_id),
            _c.expires_at > _utc(now),
        )
        async with self.engine.connect() as conn:
            found = (await conn.execute(stmt)).mappings().first()
        if found is None:
            return None
        out = dict(found)
        for name in _TIME_COLUMNS:
            out[name] = _utc(out[name])
        return out

    async def delete(self, response_id: str, key_id: str | None, now: datetime) -> bool:
        """Delete the row if `fetch` would have returned it; whether one was deleted."""
        stmt = delete(responses_table).where(
            _c.id == response_id,
            _c.key_id.is_not_distinct_from(key_id),
            _c.expires_at > _utc(now),
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    async def purge_batch(self, now: datetime, limit: int) -> int:
        """Delete up to `limit` rows expired at `now`, in one short transaction (the
        expires_at index finds them); how many were deleted."""
        expired = select(_c.id).where(_c.expires_at <= _utc(now)).limit(limit)
        stmt = delete(responses_table).where(_c.id.in_(expired))
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount or 0)
