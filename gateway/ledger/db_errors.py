"""What a database call raises when the database, not the caller, is at fault.

Callers that degrade while the database is away (stale keys, a 503 from the admin API, a budget
read as zero) catch exactly these, so a bug in their own code still surfaces as one.

A serving worker on a Postgres ledger never imports SQLAlchemy (gateway/ledger/pg.py), so this
module must not either. `database_errors()` is the tuple to catch: the driver errors, plus
SQLAlchemy's base error once SQLAlchemy has been imported by someone (before that, nothing
can have raised one). `DATABASE_ERRORS` (the name the admin API, reports and files import)
is the full tuple and imports SQLAlchemy: only modules that already use it should name it.
"""

from __future__ import annotations

import sys
from typing import Any

from gateway.ledger.pg import DRIVER_ERRORS

_with_sqlalchemy: tuple[type[Exception], ...] | None = None


def database_errors() -> tuple[type[Exception], ...]:
    """For `except database_errors() as exc:` (evaluated only when something was raised)."""
    global _with_sqlalchemy
    if _with_sqlalchemy is not None:
        return _with_sqlalchemy
    exc_module = sys.modules.get("sqlalchemy.exc")
    if exc_module is None:
        return DRIVER_ERRORS
    # The engine, its pool, and every DBAPI error it wraps.
    _with_sqlalchemy = (*DRIVER_ERRORS, exc_module.SQLAlchemyError)
    return _with_sqlalchemy


def __getattr__(name: str) -> Any:
    if name == "DATABASE_ERRORS":
        import sqlalchemy.exc  # noqa: F401  (the importer uses SQLAlchemy anyway)

        return database_errors()
    raise AttributeError(name)
