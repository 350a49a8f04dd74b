"""The group-commit writer alone (gateway/conversations/group_commit.py), on a fake `write`
the test holds: batching, its bounds, outcomes only after the write, failures, timeouts,
callers that give up, a row-level failure retried alone, and close()."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from gateway.conversations.group_commit import Closed, GroupCommit
from gateway.runtime.background import Background
from tests.waiting import until


class BadRow(Exception):
    """A row-level failure (as a data error from the database)."""


class FakeDatabase:
    """Records each batch; `gate` (when set) holds writes until released; a batch holding an
    item in `bad` fails with BadRow; `fail` fails every batch with it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.committed: list[str] = []
        self.gate: asyncio.Event | None = None
        self.waiting = 0
        self.bad: set[str] = set()
        self.fail: BaseException | None = None

    async def write(self, items: Sequence[str]) -> None:
        self.batches.append(list(items))
        if self.gate is not None:
            self.waiting += 1
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if self.bad.intersection(items):
            raise BadRow
        self.committed.extend(items)


def writer(db: FakeDatabase, **kw: object) -> GroupCommit[str]:
    options: dict[object, object] = {"timeout_s": 5.0, "split_on": lambda e: isinstance(e, BadRow)}
    options.update(kw)
    return GroupCommit(db.write, tasks=Background(), **options)  # type: ignore[arg-type]


def test_a_lone_save_is_written_at_once_and_saves_queued_meanwhile_go_together() -> None:
    async def run() -> None:
        db = FakeDatabase()
        group = writer(db)
        assert await group.put("a", 1) is None
        assert db.batches == [["a"]]

        db.gate = asyncio.Event()
        first = asyncio.ensure_future(group.put("b", 1))
        await until(lambda: db.waiting == 1, "the first batch in flight")
        rest = [asyncio.ensure_future(group.put(f"r{n}", 1)) for n in range(50)]
        await asyncio.sleep(0)  # let every put queue
        assert not first.done() and not any(f.done() for f in rest)  # nothing before commit
        db.gate.set()
        assert await asyncio.gather(first, *rest) == [None] * 51
        assert db.batches == [["a"], ["b"], [f"r{n}" for n in range(50)]]
        await group.close()

    asyncio.run(run())


def test_a_batch_is_bounded_in_rows_and_bytes() -> None:
    async def run() -> None:
        db = FakeDatabase()
        group = writer(db, max_rows=3, max_bytes=100)
        db.gate = asyncio.Event()
        head = asyncio.ensure_future(group.put("head", 1))
        await until(lambda: db.waiting == 1, "the first batch in flight")
        small = [asyncio.ensure_future(group.put(f"s{n}", 10)) for n in range(5)]
        big = [asyncio.ensure_future(group.put(f"b{n}", 60)) for n in range(2)]
        huge = asyncio.ensure_future(group.put("huge", 500))  # over the bound: goes alone
        await asyncio.sleep(0)  # one loop turn so the puts above enqueue: a yield, not a wait
        db.gate.set()
        assert await asyncio.gather(head, *small, *big, huge) == [None] * 9
        assert db.batches == [
            ["head"],
            ["s0", "s1", "s2"],  # max_rows
            ["s3", "s4", "b0"],  # 80 bytes; b1 would make 140
            ["b1"],  # b1 + huge is over
            ["huge"],
        ]
        await group.close()

    asyncio.run(run())


def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_is_written() -> None:
    async def run() -> None:
        db = FakeDatabase()
        group = writer(db)
        db.fail = ConnectionResetError("connection lost")
        db.gate = asyncio.Event()
        saves = [asyncio.ensure_future(group.put(f"x{n}", 1)) for n in range(10)]
        await until(lambda: db.waiting == 1, "a batch in flight")
        db.gate.set()
        outcomes = await asyncio.gather(*saves)
        assert all(isinstance(o, ConnectionResetError) for o in outcomes), outcomes
        # The writer starts with the first save and runs after the others queued: one batch.
        assert db.committed == [] and db.batches == [[f"x{n}" for n in range(10)]]
        db.fail = None
        assert await group.put("later", 1) is None
        assert db.committed == ["later"]
        await group.close()

    asyncio.run(run())


def test_a_row_level_failure_is_retried_row_by_row() -> None:
    """One bad row (e.g. a value too long for its column) fails only its own save."""

    async def run() -> None:
        db = FakeDatabase()
        group = writer(db)
        db.bad = {"bad"}
        db.gate = asyncio.Event()
        head = asyncio.ensure_future(group.put("head", 1))
        await until(lambda: db.waiting == 1, "the first batch in flight")
        saves = [asyncio.ensure_future(group.put(item, 1)) for item in ("a", "bad", "b")]
        await asyncio.sleep(0)  # one loop turn so the puts above enqueue: a yield, not a wait
        db.gate.set()
        assert await head is None
        outcomes = await asyncio.gather(*saves)
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], BadRow)
        assert db.committed == ["head", "a", "b"]
        assert db.batches[1:] == [["a", "bad", "b"], ["a"], ["bad"], ["b"]]
        # Any other failure is not split: the whole batch fails.
        db.fail = ConnectionResetError()
        db.gate, db.waiting = asyncio.Event(), 0
        first = asyncio.ensure_future(group.put("c", 1))
        await until(lambda: db.waiting == 1, "a batch in flight")
        more = [asyncio.ensure_future(group.put(item, 1)) for item in ("d", "e")]
        await asyncio.sleep(0)  # one loop turn so the puts above enqueue: a yield, not a wait
        db.gate.set()
        outcomes = await asyncio.gather(first, *more)
        assert all(isinstance(o, ConnectionResetError) for o in outcomes)
        assert db.batches[-1] == ["d", "e"]
        await group.close()

    asyncio.run(run())


def test_a_hung_write_times_out_its_callers_and_the_writer_moves_on() -> None:
    async def run() -> None:
        db = FakeDatabase()
        group = writer(db, timeout_s=0.3)
        db.gate = asyncio.Event()  # never set while frozen: every write hangs
        started = time.monotonic()
        head = asyncio.ensure_future(group.put("f0", 1))
        await until(lambda: db.waiting == 1, "the first batch in flight")
        saves = [head, *(asyncio.ensure_future(group.put(f"f{n}", 1)) for n in range(1, 5))]
        outcomes = await asyncio.gather(*saves)
        took = time.monotonic() - started
        assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
        assert took < 0.3 + 0.3, took
        # The writer gave [f0] up when its caller did, then tried the saves queued behind it
        # (their callers still waited) and gave those up with them.
        await until(lambda: len(db.batches) == 2 and not group._writing, "the writer idle")
        assert db.batches == [["f0"], ["f1", "f2", "f3", "f4"]]
        db.gate.set()  # thawed: the abandoned writes were cancelled, nothing of theirs lands
        db.gate = None
        assert await group.put("after", 1) is None
        assert db.committed == ["after"]
        await group.close()

    asyncio.run(run())


def test_a_cancelled_caller_is_not_written() -> None:
    async def run() -> None:
        db = FakeDatabase()
        group = writer(db)
        db.gate = asyncio.Event()
        head = asyncio.ensure_future(group.put("head", 1))
        await until(lambda: db.waiting == 1, "the first batch in flight")
        gone = asyncio.ensure_future(group.put("gone", 1))
        kept = asyncio.ensure_future(group.put("kept", 1))
        await asyncio.sleep(0)  # one loop turn so the puts above enqueue: a yield, not a wait
        gone.cancel()
        db.gate.set()
        assert await head is None and await kept is None
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert db.batches == [["head"], ["kept"]]
        await group.close()

    asyncio.run(run())


def test_close_fails_pending_saves_and_refuses_new_ones() -> None:
    async def run() -> None:
        db = FakeDatabase()
        group = writer(db)
        db.gate = asyncio.Event()  # the first batch never commits
        writing = asyncio.ensure_future(group.put("writing", 1))
        await until(lambda: db.waiting == 1, "a batch in flight")
        queued = [asyncio.ensure_future(group.put(f"q{n}", 1)) for n in range(3)]
        await asyncio.sleep(0)  # one loop turn so the puts above enqueue: a yield, not a wait
        started = time.monotonic()
        await group.close()
        outcomes = await asyncio.gather(writing, *queued)
        assert time.monotonic() - started < 1.0
        assert all(isinstance(o, Closed) for o in outcomes), outcomes
        assert isinstance(await group.put("late", 1), Closed)
        assert db.committed == [] and db.batches == [["writing"]]

    asyncio.run(run())


def test_a_writer_ended_by_a_bug_is_restarted_by_the_next_save(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        db = FakeDatabase()
        calls: list[int] = []

        def on_batch(n: int) -> None:
            calls.append(n)
            if len(calls) == 1:
                raise RuntimeError("a bug")

        group = writer(db, timeout_s=0.2, on_batch=on_batch)
        assert isinstance(await group.put("lost", 1), TimeoutError)
        assert await group.put("after", 1) is None
        assert db.committed == ["after"]
        await group.close()

    asyncio.run(run())
    assert "group-commit writer stopped (RuntimeError)" in caplog.text
