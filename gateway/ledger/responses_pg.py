"""Stored Responses on a Postgres ledger, on asyncpg without SQLAlchemy (a serving worker,
issue #25): the same statements as ResponsesRepository's asyncpg path
(gateway/ledger/responses_repository.py), which SQLite ledgers keep using.

The JSON columns go in and come out as text the caller encodes and decodes (orjson); nothing
here logs a parameter (they are the conversations).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.ledger.pg import PgPool, rowcount

# The table's columns in order (gateway/ledger/models_responses.py); tests compare the two.
COLUMNS = (
    "id",
    "request_id",
    "key_id",
    "workflow_id",
    "previous_response_id",
    "model",
    "status",
    "created_at",
    "expires_at",
    "input_items",
    "response",
)
_JSON_COLUMNS = ("input_items", "response")
_TIME_COLUMNS = ("created_at", "expires_at")
_ARRAYS = ", ".join(
    f"${n}::timestamptz[]" if name in _TIME_COLUMNS else f"${n}::text[]"
    for n, name in enumerate(COLUMNS, start=1)
)
_VALUES = ", ".join(f"{name}::json" if name in _JSON_COLUMNS else name for name in COLUMNS)
_NAMES = ", ".join(COLUMNS)
INSERT = (
    f"INSERT INTO responses ({_NAMES}) SELECT {_VALUES} FROM unnest({_ARRAYS}) AS r({_NAMES})"
    " ON CONFLICT DO NOTHING"
)
_SELECTED = ", ".join(f"{n}::text AS {n}" if n in _JSON_COLUMNS else n for n in COLUMNS)
_VISIBLE = "id = $1 AND key_id IS NOT DISTINCT FROM $2 AND expires_at > $3"
FETCH = f"SELECT {_SELECTED} FROM responses WHERE {_VISIBLE}"
DELETE = f"DELETE FROM responses WHERE {_VISIBLE}"
PURGE = (
    "DELETE FROM responses WHERE id IN (SELECT id FROM responses WHERE expires_at <= $1 LIMIT $2)"
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def row_error(exc: BaseException) -> bool:
    """Whether a failed insert failed on a row's own values (SQLSTATE class 22, a data
    exception such as a value too long for its column, or 23, an integrity violation), not on
    the database or the connection: a batch that fails so is worth writing again row by row.
    asyncpg's errors carry the SQLSTATE; through SQLAlchemy it is on the wrapped `orig`."""
    code = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
    if isinstance(code, str):
        return code[:2] in ("22", "23")
    sa_exc = sys.modules.get("sqlalchemy.exc")  # SQLite through SQLAlchemy: no SQLSTATE
    return sa_exc is not None and isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError)


class PgResponsesRepository:
    def __init__(self, pool: PgPool) -> None:
        # The ledger's pool: closed by its owner (ServingLedger.close), not here.
        self._pool = pool

    async def insert(self, row: Mapping[str, Any]) -> bool:
        """One row; False when the id exists (a replayed save)."""
        return await self.insert_many((row,)) == 1

    async def insert_many(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Every row in one statement and one transaction; a row whose id exists is skipped.
        How many rows were inserted."""
        if not rows:
            return 0
        arrays = tuple(
            [_utc(row[name]) for row in rows]
            if name in _TIME_COLUMNS
            else [row[name] for row in rows]
            for name in COLUMNS
        )
        return rowcount(await self._pool.execute(INSERT, *arrays))

    async def fetch(
        self, response_id: str, key_id: str | None, now: datetime
    ) -> dict[str, Any] | None:
        """The row (JSON columns as text) if it exists, belongs to `key_id` (None matches only
        rows stored without a key) and has not expired."""
        found = await self._pool.fetchrow(FETCH, response_id, key_id, _utc(now))
        if found is None:
            return None
        out = dict(found)
        for name in _TIME_COLUMNS:
            out[name] = _utc(out[name])
        return out

    async def delete(self, response_id: str, key_id: str | None, now: datetime) -> bool:
        """Delete the row if `fetch` would have returned it; whether one was deleted."""
        return rowcount(await self._pool.execute(DELETE, response_id, key_id, _utc(now))) > 0

    async def purge_batch(self, now: datetime, limit: int) -> int:
        """Delete up to `limit` rows expired at `now`, in one short transaction."""
        return rowcount(await self._pool.execute(PURGE, _utc(now), limit))
