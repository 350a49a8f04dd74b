"""The files store on a real ledger database (SQLite and PostgreSQL), below the HTTP layer:
what the Batch API will call to write its output files and read its input files; file
expiry and the purge, on both storage backends (a directory, an S3-compatible server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.errors import InvalidRequest, NotFound
from gateway.files.storage import FileStorage, LocalDirectory
from gateway.files.storage_s3 import S3Storage
from gateway.files.store import FileStore
from gateway.ledger.files_repository import FilesRepository
from gateway.ledger.migrate import upgrade
from tests.s3_server import REGION, aws_env, s3_server
from tests.waiting import until


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        upgrade(url)
        return url
    return str(request.getfixturevalue("pg_url"))


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_create_read_page_and_delete(db_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        engine = create_async_engine(db_url)
        store = FileStore(
            FilesRepository(engine), LocalDirectory(tmp_path / "files"), max_bytes=100, max_lines=5
        )
        try:
            made = [
                await store.create("k1", f"out-{n}.jsonl", "batch_output", chunks(b"a", b"b"))
                for n in range(5)
            ]
            await store.create("k2", "theirs.jsonl", "batch_output", chunks(b"c"))
            assert made[0]["purpose"] == "batch_output" and made[0]["bytes"] == 2
            row = await store.get(made[0]["id"], "k1")
            assert b"".join([c async for c in store.content(row)]) == b"ab"
            with pytest.raises(NotFound):
                await store.get(made[0]["id"], "k2")

            # Every file once, in order, page by page, both ways.
            for order, expected in (("asc", made), ("desc", made[::-1])):
                seen: list[str] = []
                after = None
                while True:
                    page = await store.list("k1", purpose=None, limit=2, after=after, order=order)
                    seen += [f["id"] for f in page["data"]]
                    if not page["has_more"]:
                        break
                    after = page["last_id"]
                assert seen == [f["id"] for f in expected]
            none = await store.list("k1", purpose="batch", limit=10, after=None, order="desc")
            assert none["data"] == [] and none["first_id"] is None

            # A batch file the gateway writes is checked like an upload.
            with pytest.raises(InvalidRequest, match="Line 1"):
                await store.create("k1", "in.jsonl", "batch", chunks(b"{}\n"))

            await store.delete(made[0]["id"], "k1")
            with pytest.raises(NotFound):
                await store.delete(made[0]["id"], "k1")
            assert not (tmp_path / "files" / made[0]["id"]).exists()
            # Staged bytes of refused files are gone too: five of k1's, one of k2's remain.
            assert len(list((tmp_path / "files").iterdir())) == 5
        finally:
            await engine.dispose()

    asyncio.run(main())


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileStorage]:
    if request.param == "local":
        yield LocalDirectory(tmp_path / "files")
        return
    with s3_server() as s3, aws_env():
        bucket = s3.new_bucket()
        yield S3Storage(bucket, prefix="f/", endpoint_url=s3.url, region=REGION)


async def stored(storage: FileStorage, key: str) -> bytes | None:
    try:
        return b"".join([chunk async for chunk in storage.open(key)])
    except FileNotFoundError:
        return None


def test_expired_files_are_gone_at_once_and_purged(db_url: str, storage: FileStorage) -> None:
    async def main() -> None:
        engine = create_async_engine(db_url)
        store = FileStore(FilesRepository(engine), storage, max_bytes=100, max_lines=5)
        now = datetime.now(UTC)
        try:
            old = await store.create(
                "k1", "old.jsonl", "batch_output", chunks(b"old"), expires_at=now - timedelta(1)
            )
            soon = await store.create(
                "k1", "soon.jsonl", "batch_output", chunks(b"soon"), expires_at=now + timedelta(1)
            )
            kept = await store.create("k1", "kept.jsonl", "batch_output", chunks(b"kept"))
            assert old["expires_at"] == int((now - timedelta(1)).timestamp())
            assert "expires_at" not in kept  # the spec's integer, left out rather than null

            # Expired: a 404 for every read at once, purged or not.
            for call in (store.get, store.delete):
                with pytest.raises(NotFound):
                    await call(old["id"], "k1")
            listed = await store.list("k1", purpose=None, limit=10, after=None, order="asc")
            assert [f["id"] for f in listed["data"]] == [soon["id"], kept["id"]]
            assert listed["data"][0]["expires_at"] == soon["expires_at"]
            assert await stored(storage, old["id"]) == b"old"  # not purged yet

            assert await store.purge(now) == 1
            assert await stored(storage, old["id"]) is None
            assert await store.purge(now) == 0  # idempotent: a second replica finds nothing
            # A day later the other one goes too; the file without expiry stays.
            assert await store.purge(now + timedelta(days=2)) == 1
            assert await stored(storage, soon["id"]) is None
            assert await stored(storage, kept["id"]) == b"kept"
            assert (await store.get(kept["id"], "k1"))["bytes"] == 4
        finally:
            await store.close()
            await engine.dispose()

    asyncio.run(main())


def test_the_purge_runs_in_the_background(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    upgrade(url)

    async def main() -> None:
        engine = create_async_engine(url)
        storage = LocalDirectory(tmp_path / "files")
        store = FileStore(
            FilesRepository(engine), storage, max_bytes=100, max_lines=5, purge_interval_s=0.05
        )
        try:
            made = await store.create(
                None, "a.jsonl", "batch_output", chunks(b"a"), expires_at=datetime.now(UTC)
            )
            store.start()

            async def purged() -> bool:
                # Bytes first, then the row: both must go (waited on, not raced).
                if (tmp_path / "files" / made["id"]).exists():
                    return False
                later = datetime.now(UTC) + timedelta(1)
                return await store.repository.expired(later, 10) == []

            await until(purged, "the purge of the file's bytes and row")
        finally:
            await store.close()
            await engine.dispose()

    asyncio.run(main())
