"""gateway/runtime/after_answer.py: bookkeeping queued during a loop pass runs after it, in
order, once; without a loop it runs at once; a failure does not drop the rest."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.runtime.after_answer import after_answer


def test_without_a_loop_the_work_runs_at_once() -> None:
    done: list[int] = []
    after_answer(done.append, 1)
    assert done == [1]


def test_work_runs_after_the_current_step_in_order() -> None:
    done: list[object] = []

    async def answer() -> None:
        for n in range(5):
            after_answer(done.append, n)
        done.append("answered")  # the write: before any of the bookkeeping
        await asyncio.sleep(0)
        done.append("next step")

    asyncio.run(answer())
    assert done == ["answered", 0, 1, 2, 3, 4, "next step"]


def test_one_failure_does_not_drop_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    done: list[int] = []

    def boom() -> None:
        raise RuntimeError("metrics broke")

    async def answer() -> None:
        after_answer(done.append, 1)
        after_answer(boom)
        after_answer(done.append, 2)
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR):
        asyncio.run(answer())
    assert done == [1, 2]
    assert "bookkeeping after an answer failed" in caplog.text


def test_work_left_by_a_stopped_loop_runs_before_the_next_loops() -> None:
    done: list[str] = []

    loop = asyncio.new_event_loop()

    def last_step() -> None:
        after_answer(done.append, "old")
        loop.stop()  # the loop ends before the flush it scheduled runs

    loop.call_soon(last_step)
    loop.run_forever()
    loop.close()
    assert done == []

    async def later() -> None:
        after_answer(done.append, "new")
        await asyncio.sleep(0)

    asyncio.run(later())
    assert done == ["old", "new"]
