"""Stored Responses against a real SQLite file and a real PostgreSQL, on the ledger's engine as
the gateway builds it: save/get/delete, keys kept apart, expiry and the purge, idempotent
saves, a frozen database, and no stored content in any log line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from gateway.config.loading import parse_config
from gateway.config.responses import ResponsesConfig
from gateway.conversations import store as store_module
from gateway.conversations.store import FAILURES, ResponseStore, StoredResponse, to_row
from gateway.errors import Unavailable
from gateway.ledger.migrate import upgrade
from gateway.ledger.models_responses import responses_table
from gateway.ledger.repository import LedgerRepository
from gateway.ledger.responses_repository import ResponsesRepository
from gateway.serving.reload import start_components
from gateway.state import build_state
from tests.conftest import sqlite_settings
from tests.services import PostgresServer
from tests.waiting import until

T = TypeVar("T")
SECRET = "the-patient-said-their-password-is-hunter2"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        upgrade(url)
        return url
    return str(request.getfixturevalue("pg_url"))


def with_store(url: str, fn: Callable[[ResponseStore], Awaitable[T]], **config: Any) -> T:
    """`fn` on a store built as gateway/state.py builds it: on the ledger repository's engine."""

    async def main() -> T:
        ledger = LedgerRepository.create(url)
        store = ResponseStore(ResponsesRepository(ledger.engine), ResponsesConfig(**config))
        try:
            return await fn(store)
        finally:
            await store.close()
            await ledger.close()

    return asyncio.run(main())


def record(id: str = "resp_1", key_id: str | None = "key_a", **kw: Any) -> StoredResponse:
    base = StoredResponse(
        id=id,
        request_id=f"req_{id}",
        key_id=key_id,
        workflow_id="wf_1",
        previous_response_id=None,
        model="chat",
        status="completed",
        created_at=NOW,
        expires_at=NOW + timedelta(days=30),
        input_items=[
            {"role": "user", "content": f"remember {SECRET}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        ],
        response={
            "id": id,
            "object": "response",
            "output": [{"type": "message", "id": "msg_out", "role": "assistant", "content": []}],
            "usage": {"input_tokens": 12, "output_tokens": 3},
        },
    )
    return replace(base, **kw)


async def count_rows(store: ResponseStore) -> int:
    async with store.repository.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(responses_table)) or 0)


def failures(operation: str, reason: str) -> float:
    return float(FAILURES.labels(operation, reason)._value.get())


def test_save_get_delete(db_url: str) -> None:
    async def run(store: ResponseStore) -> None:
        saved = record()
        assert await store.save(saved)
        got = await store.get("resp_1", "key_a")
        assert got is not None
        assert got == saved  # every field, the JSON ones and aware UTC timestamps included
        assert got.created_at == NOW and got.created_at.tzinfo is not None
        assert [item["id"][:4] for item in got.input_items] == ["msg_", "fco_"]
        assert got.input_items[0]["content"] == [
            {"type": "input_text", "text": f"remember {SECRET}"}
        ]
        assert got.response["usage"] == {"input_tokens": 12, "output_tokens": 3}
        assert await store.delete("resp_1", "key_a") is True
        assert await store.get("resp_1", "key_a") is None
        assert await store.delete("resp_1", "key_a") is False
        assert await store.get("resp_never", "key_a") is None

    with_store(db_url, run)


def test_another_key_can_neither_read_nor_delete(db_url: str) -> None:
    async def run(store: ResponseStore) -> None:
        assert await store.save(record("resp_a", key_id="key_a"))
        assert await store.save(record("resp_anon", key_id=None))
        assert await store.get("resp_a", "key_b") is None
        assert await store.get("resp_a", None) is None
        assert await store.delete("resp_a", "key_b") is False
        assert await store.delete("resp_a", None) is False
        assert await store.get("resp_a", "key_a") is not None  # still there for its owner
        # Stored without a key (auth off, the master key): only a keyless caller sees it.
        assert await store.get("resp_anon", "key_a") is None
        assert await store.get("resp_anon", None) is not None
        assert await store.delete("resp_anon", "key_a") is False
        assert await store.delete("resp_anon", None) is True

    with_store(db_url, run)


def test_expired_rows_are_invisible_and_purged_in_batches(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PURGE_BATCH", 3)

    async def run(store: ResponseStore) -> None:
        expired_at = datetime.now(UTC) - timedelta(seconds=1)
        for n in range(7):
            assert await store.save(record(f"resp_old{n}", expires_at=expired_at))
        assert await store.save(record("resp_live"))
        assert await store.get("resp_old0", "key_a") is None
        assert await store.delete("resp_old0", "key_a") is False
        batches: list[int] = []
        real = store.repository.purge_batch

        async def counted(now: datetime, limit: int) -> int:
            deleted = await real(now, limit)
            batches.append(deleted)
            return deleted

        store.repository.purge_batch = counted  # type: ignore[method-assign]
        assert await store.purge(datetime.now(UTC)) == 7
        assert batches == [3, 3, 1]
        assert await count_rows(store) == 1
        assert await store.get("resp_live", "key_a") is not None
        assert await store.purge(datetime.now(UTC)) == 0

    with_store(db_url, run)


def test_the_background_purge_runs_on_its_interval(db_url: str) -> None:
    async def run(store: ResponseStore) -> None:
        expired_at = datetime.now(UTC) - timedelta(seconds=1)
        assert await store.save(record("resp_old", expires_at=expired_at))
        assert await store.save(record("resp_live"))
        store.start()
        await until(lambda: _rows_are(store, 1), "the background purge")
        assert await store.get("resp_live", "key_a") is not None

    with_store(db_url, run, purge_interval_s=0.05)


async def _rows_are(store: ResponseStore, n: int) -> bool:
    return await count_rows(store) == n


def test_save_is_idempotent_on_id(db_url: str) -> None:
    async def run(store: ResponseStore) -> None:
        first = record()
        assert await store.save(first)
        again = record(status="failed", response={"id": "resp_1", "replayed": True})
        assert await store.save(again)  # already stored: still a success
        got = await store.get("resp_1", "key_a")
        assert got is not None and got.status == "completed" and "replayed" not in got.response
        assert await count_rows(store) == 1

    with_store(db_url, run)


def test_a_frozen_postgres_bounds_save_and_read(
    pg_url: str, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    timeout_s = 0.5

    async def run(store: ResponseStore) -> None:
        assert await store.save(record("resp_before"))  # the pool holds a live connection
        timeouts = failures("save", "timeout")
        with postgres.frozen():
            started = time.monotonic()
            assert await store.save(record("resp_frozen")) is False
            took = time.monotonic() - started
            assert took < timeout_s + 0.5, took
            assert failures("save", "timeout") == timeouts + 1
            started = time.monotonic()
            with pytest.raises(Unavailable) as info:
                await store.get("resp_before", "key_a")
            assert time.monotonic() - started < timeout_s + 0.5
            assert info.value.status == 503
            with pytest.raises(Unavailable):
                await store.delete("resp_before", "key_a")
        # Thawed: the store serves again (the connections the frozen calls held are dropped).
        await until(lambda: store.save(record("resp_after")), "a save after the thaw", 15)
        got = await store.get("resp_after", "key_a")
        assert got is not None
        assert await store.get("resp_frozen", "key_a") is None

    caplog.set_level(logging.DEBUG)
    with_store(pg_url, run, save_timeout_s=timeout_s)
    assert "resp_frozen" in caplog.text and "timeout" in caplog.text
    assert_no_content(caplog)


def test_a_failed_save_logs_no_content(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A database error's message carries the statement and its parameters: here the table is
    missing (no migration), the most verbose failure there is. Logs at DEBUG everywhere,
    SQLAlchemy's own loggers included."""
    url = f"sqlite+aiosqlite:///{tmp_path}/empty.db"
    caplog.set_level(logging.DEBUG)
    errors = failures("save", "database")

    async def run(store: ResponseStore) -> None:
        assert await store.save(record("resp_lost")) is False
        with pytest.raises(Unavailable):
            await store.get("resp_lost", "key_a")
        # Whoever logs a database error's message someday: the engine hides the parameters.
        with pytest.raises(SQLAlchemyError) as info:
            await store.repository.insert(to_row(record("resp_raw")))
        assert "INSERT INTO responses" in str(info.value)
        assert SECRET not in str(info.value)

    with_store(url, run)
    assert failures("save", "database") == errors + 1
    assert "resp_lost" in caplog.text  # the failure is logged, by id
    assert_no_content(caplog)


def test_an_unencodable_body_is_a_failed_save_not_an_exception(db_url: str) -> None:
    async def run(store: ResponseStore) -> None:
        errors = failures("save", "error")
        bad = record(response={"id": "resp_1", "bad": {1, 2}})  # a set: not JSON
        assert await store.save(bad) is False
        assert failures("save", "error") == errors + 1

    with_store(db_url, run)


def assert_no_content(caplog: pytest.LogCaptureFixture) -> None:
    for entry in caplog.records:
        text = entry.getMessage() + (entry.exc_text or "") + str(entry.exc_info or "")
        assert SECRET not in text, f"{entry.name}: stored content in a log line"
    assert SECRET not in caplog.text


STATE_CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1", api_key: sim}
deployments:
  a@sim: {provider: sim, model: sim-a}
routes:
  chat: {targets: [a@sim]}
"""


def test_the_gateway_state_builds_the_store_on_the_ledger_engine(tmp_path: Path) -> None:
    """build_state gives the store the ledger repository's engine; a reload builds a new store
    (the YAML's settings) on that same engine, and closing the old state stops only the old
    store's purge. Without a ledger database there is no store."""
    settings = sqlite_settings(tmp_path)

    async def scenario() -> None:
        old = build_state(settings, parse_config(STATE_CONFIG, "v1.yaml", {}))
        await start_components(old)
        assert old.responses is not None and old.repository is not None
        assert old.responses.repository.engine is old.repository.engine
        old_purge = old.responses._purger
        assert old_purge is not None and not old_purge.done()

        text = STATE_CONFIG + "responses: {retention_days: 7}\n"
        new = build_state(settings, parse_config(text, "v2.yaml", {}), previous=old)
        await start_components(new, previous=old)
        assert new.responses is not None and new.responses is not old.responses
        assert new.responses.repository.engine is old.repository.engine  # no second engine
        assert new.responses.config.retention_days == 7
        await old.close(keep=[new])
        assert old_purge.done()
        # The engine the old store used is the new one's, still open.
        assert await new.responses.save(record())
        assert await new.responses.get("resp_1", "key_a") is not None
        await new.close()

    asyncio.run(scenario())

    async def without_ledger() -> None:
        bare = sqlite_settings(tmp_path / "bare", ledger_enabled=False)
        state = build_state(bare, parse_config(STATE_CONFIG, "v1.yaml", {}))
        assert state.responses is None
        await state.close()

    asyncio.run(without_ledger())
