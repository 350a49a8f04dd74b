"""The files store on a real ledger database (SQLite and PostgreSQL), below the HTTP layer:
what the Batch API will call to write its output files and read its input files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.errors import InvalidRequest, NotFound
from gateway.files.storage import LocalDirectory
from gateway.files.store import FileStore
from gateway.ledger.files_repository import FilesRepository
from gateway.ledger.migrate import upgrade


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
