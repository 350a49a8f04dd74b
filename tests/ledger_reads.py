"""Reading a test gateway's ledger back with plain SQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.gateway_harness import RunningGateway


def sql_rows(url: str, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
    """All rows of one query, on a fresh engine (the test's loop is not the gateway's)."""

    async def run() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(text(sql), dict(params or {}))).all())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def ledger_url(gw: RunningGateway) -> str:
    assert gw.state.repository is not None, "this gateway runs without a ledger"
    return gw.state.repository.engine.url.render_as_string(hide_password=False)


def wait_for_rows(
    url: str, sql: str, params: Mapping[str, Any] | None = None, timeout: float = 10
) -> list[Any]:
    """The query's rows once there are any: the ledger writer flushes in the background."""
    deadline = time.monotonic() + timeout
    while True:
        rows = sql_rows(url, sql, params)
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)  # poll: a condition wait
