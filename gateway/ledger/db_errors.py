"""What a database call raises when the database, not the caller, is at fault.

Callers that degrade while the database is away (stale keys, a 503 from the admin API, a budget
read as zero) catch exactly these, so a bug in their own code still surfaces as one.
"""

from __future__ import annotations

import sqlite3

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.exc import SQLAlchemyError

DATABASE_ERRORS: tuple[type[Exception], ...] = (
    # Refused, reset, DNS; and TimeoutError (a subclass) from a connect or asyncio.timeout.
    OSError,
    # The engine, its pool, and every DBAPI error it wraps.
    SQLAlchemyError,
    # Raw asyncpg, as the ledger's COPY path uses it (not wrapped by SQLAlchemy).
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    # aiosqlite re-raises sqlite3's own errors.
    sqlite3.Error,
)
