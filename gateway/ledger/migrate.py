"""Run the ledger's Alembic migrations from code (`farebox migrate`, tests, the demo).

Works from any working directory: alembic.ini and migrations/ are found next to the package.
Blocking; from inside an event loop call it through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from gateway.ledger.repository import ensure_sqlite_directory

# A source checkout (or editable install) has them next to the package; an installed wheel
# puts them in <prefix>/share/farebox (pyproject.toml's shared-data).
_SOURCE = Path(__file__).resolve().parents[2]
_INSTALLED = Path(sys.prefix) / "share" / "farebox"
ROOT = _SOURCE if (_SOURCE / "migrations").is_dir() else _INSTALLED
INI = ROOT / "alembic.ini"
SCRIPTS = ROOT / "migrations"


def alembic_config(url: str) -> Config:
    if not SCRIPTS.is_dir():
        raise FileNotFoundError(
            f"Alembic migrations not found at {SCRIPTS}: install the farebox wheel (it ships "
            f"them in {_INSTALLED}) or run from a source checkout"
        )
    cfg = Config(str(INI)) if INI.is_file() else Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    # Passed as an attribute, not an ini option, so `%` in a password is not interpolated.
    cfg.attributes["url"] = url
    # The caller owns logging; env.py would otherwise apply alembic.ini's handlers.
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    ensure_sqlite_directory(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision the database is at (None when never migrated)."""

    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async def run() -> str | None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(run())
