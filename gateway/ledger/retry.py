"""Retrying a ledger batch's transaction after a deadlock or serialization failure (two
replicas upserting the same rollup rows). No SQLAlchemy: the Postgres writer on the serving
worker uses it (gateway/ledger/pg_sink.py), as does the SQLite repository.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# SQLSTATEs a concurrent upsert can end in: retrying the whole batch is safe (its
# transaction rolled back, nothing was written).
_RETRYABLE = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure
_ATTEMPTS = 5


def is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure (asyncpg's or wrapped by SQLAlchemy)."""
    for err in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if state in _RETRYABLE:
            return True
    return False


async def retrying(run: Callable[[], Awaitable[T]]) -> T:
    """Run one batch's transaction, again after a deadlock or serialization failure (two
    replicas upserting the same rollup rows): each try is the whole transaction."""
    for attempt in range(_ATTEMPTS):
        try:
            return await run()
        except Exception as exc:
            if attempt + 1 == _ATTEMPTS or not is_retryable(exc):
                raise
            await asyncio.sleep(0.01 * 2**attempt)
    raise AssertionError("unreachable")
