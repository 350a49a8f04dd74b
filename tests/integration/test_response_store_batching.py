"""Group commit of stored-Response saves (issue 23) against a real SQLite file and a real
PostgreSQL: concurrent saves share transactions and every row lands, a batch that fails fails
each of its callers within the timeout, one bad row fails only its own save, and close()
answers the saves still waiting."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from gateway.conversations.store import BATCH_ROWS, ResponseStore
from gateway.ledger.migrate import upgrade
from gateway.ledger.models_responses import responses_table
from tests.integration.test_response_store import (
    assert_no_content,
    count_rows,
    failures,
    record,
    with_store,
)
from tests.services import PostgresServer
from tests.waiting import until


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        upgrade(url)
        return url
    return str(request.getfixturevalue("pg_url"))


class Statements:
    """Counts, on the store's engine, the transactions committed and the INSERT statements
    into `responses` sent to the database (SQLAlchemy's own events, no hook in the store)."""

    def __init__(self, store: ResponseStore) -> None:
        self.commits = 0
        self.inserts = 0
        engine = store.repository.engine.sync_engine
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._execute)

    def _commit(self, _conn: Any) -> None:
        self.commits += 1

    def _execute(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith(f"INSERT INTO {responses_table.name} "):
            self.inserts += 1


def batches_observed() -> float:
    return sum(
        s.value for m in BATCH_ROWS.collect() for s in m.samples if s.name.endswith("_count")
    )


def test_concurrent_saves_share_transactions_and_every_row_lands(db_url: str) -> None:
    async def run(store: ResponseStore) -> None:
        counted = Statements(store)
        batches = batches_observed()
        records = [record(f"resp_{n:03d}", key_id=f"key_{n % 3}") for n in range(100)]
        assert await asyncio.gather(*(store.save(r) for r in records)) == [True] * 100
        assert await count_rows(store) == 100
        assert 1 <= counted.commits < 100, counted.commits
        assert counted.inserts == counted.commits  # one statement per transaction
        assert batches_observed() - batches == counted.commits
        for n in (0, 57, 99):
            got = await store.get(f"resp_{n:03d}", f"key_{n % 3}")
            assert got == records[n]  # every column, as saved
        # A lone save on an idle store goes at once, in its own transaction.
        assert await store.save(record("resp_lone"))
        assert counted.commits >= 2 and await count_rows(store) == 101

    with_store(db_url, run)


def test_the_same_id_twice_in_one_batch_is_one_row(db_url: str) -> None:
    async def run(store: ResponseStore) -> None:
        saves = [
            record("resp_twice"),
            record("resp_other"),
            record("resp_twice", status="failed"),
        ]
        assert await asyncio.gather(*(store.save(r) for r in saves)) == [True] * 3
        assert await count_rows(store) == 2
        assert await store.get("resp_twice", "key_a") is not None

    with_store(db_url, run)


def test_one_bad_row_fails_only_its_own_save(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A model name longer than its column (the upstream's `model`, stored as given): Postgres
    refuses the batch; the batch is written again row by row, so only that save fails."""

    async def run(store: ResponseStore) -> None:
        counted = Statements(store)
        errors = failures("save", "database")
        saves = [record(f"resp_ok{n}") for n in range(5)]
        saves.insert(2, record("resp_bad", model="m" * 300))
        outcomes = await asyncio.gather(*(store.save(r) for r in saves))
        assert outcomes == [True, True, False, True, True, True]
        assert failures("save", "database") == errors + 1
        assert await count_rows(store) == 5
        assert counted.inserts == 1 + 6  # the batch, then each row alone
        async with store.repository.engine.connect() as conn:
            ids = set((await conn.scalars(select(responses_table.c.id))).all())
        assert "resp_bad" not in ids

    caplog.set_level(logging.DEBUG)
    with_store(pg_url, run)
    assert "resp_bad" in caplog.text
    assert_no_content(caplog)


def test_a_frozen_database_fails_every_save_in_the_batch_within_the_timeout(
    pg_url: str, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    timeout_s = 0.5

    async def run(store: ResponseStore) -> None:
        assert await store.save(record("resp_before"))  # the pool holds a live connection
        timeouts = failures("save", "timeout")
        with postgres.frozen():
            started = time.monotonic()
            frozen = [store.save(record(f"resp_frozen{n}")) for n in range(20)]
            assert await asyncio.gather(*frozen) == [False] * 20
            took = time.monotonic() - started
            assert took < timeout_s + 0.5, took
            assert failures("save", "timeout") == timeouts + 20
        await until(lambda: store.save(record("resp_after")), "a save after the thaw", 15)
        assert await store.get("resp_after", "key_a") is not None
        # Whether the abandoned batch's rows are there is not asserted: a transaction given up
        # on is in doubt (its COMMIT may already be on its way), as a single save's always was;
        # its callers were told False, which is all the store promises. That an abandoned
        # write is cancelled, and that a caller who gave up is never queued for a later batch,
        # is tested on a fake database in tests/unit/test_group_commit.py.

    caplog.set_level(logging.DEBUG)
    with_store(pg_url, run, save_timeout_s=timeout_s)
    assert "resp_frozen7" in caplog.text
    assert_no_content(caplog)


def test_close_answers_the_saves_still_waiting(pg_url: str, postgres: PostgresServer) -> None:
    """Closing the store (the gateway stopping) while saves wait on a database that does not
    answer: each of them is False at once (reason `closed`), and a save after close() too."""

    async def run(store: ResponseStore) -> None:
        assert await store.save(record("resp_before"))
        closed = failures("save", "closed")
        with postgres.frozen():
            pending = [asyncio.ensure_future(store.save(record(f"resp_p{n}"))) for n in range(5)]
            await until(lambda: bool(store._saves._writing), "a batch being written")
            started = time.monotonic()
            closing = asyncio.ensure_future(store.close())
            assert await asyncio.gather(*pending) == [False] * 5
            assert time.monotonic() - started < 1.0
            assert failures("save", "closed") == closed + 5
            assert await store.save(record("resp_late")) is False
        await closing  # the abandoned statement's cleanup ends once the database answers

    with_store(pg_url, run, save_timeout_s=30.0)
