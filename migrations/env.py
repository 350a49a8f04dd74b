"""Alembic environment for the ledger, async because the gateway only ships async drivers.

The URL comes from, in order: `config.attributes["url"]` (set by gateway.ledger.migrate, so
passwords with `%` never pass through configparser interpolation), `sqlalchemy.url` in the
ini file, then FAREBOX_DATABASE_URL via Settings.
"""

from __future__ import annotations

import asyncio
import threading
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from gateway.ledger.models import Base
from gateway.ledger.partitions import is_partition
from gateway.ledger.repository import ensure_sqlite_directory
from gateway.settings import Settings

config = context.config

# Programmatic callers keep their own logging; fileConfig would disable their loggers.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    return str(url) if url else Settings().database_url


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate compares the models with the parents only: a Postgres ledger's day
    partitions (gateway/ledger/partitions.py) are not tables the models describe."""
    return not (type_ == "table" and name is not None and is_partition(name))


def configure_kwargs(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "include_name": include_name,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
    }


def run_migrations_offline() -> None:
    url = database_url()
    dialect = url.split(":", 1)[0].split("+", 1)[0]
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_kwargs(dialect),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, **configure_kwargs(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    url = database_url()
    ensure_sqlite_directory(url)
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = url
    # NullPool: a migration is one connection, and nothing should outlive this command.
    engine = async_engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(run_async_migrations())
        return
    # Called from inside an event loop (e.g. a lifespan hook): asyncio.run would refuse, so run
    # the migration on a private loop in a worker thread and re-raise its error here.
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run_async_migrations())
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=target, name="alembic-migrate")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
