"""The slow-client body deadline of read_body, on a real event loop with fake ASGI receives."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.api import asgi
from gateway.api.asgi import read_body
from gateway.errors import GatewayError

SCOPE: dict[str, Any] = {"headers": []}


def test_a_body_that_never_arrives_is_408() -> None:
    async def main() -> float:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(60)  # a body that never arrives
            raise AssertionError("unreachable")

        started = time.monotonic()
        with pytest.raises(GatewayError) as info:
            await read_body(SCOPE, receive, 1000, 0.1)
        assert info.value.status == 408 and info.value.code == "request_timeout"
        assert (b"connection", b"close") in info.value.extra_headers
        # The handler's task is not left cancelled: it can still answer.
        await asyncio.sleep(0.01)  # raises CancelledError if the task were left cancelled
        return time.monotonic() - started

    assert 0.09 <= asyncio.run(main()) < 1.0


def test_a_body_in_parts_within_the_deadline_is_read() -> None:
    parts = [b'{"a": ', b"1}"]

    async def main() -> bytes:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.01)  # simulated gap between body parts
            chunk = parts.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

        return await read_body(SCOPE, receive, 1000, 5.0)

    assert asyncio.run(main()) == b'{"a": 1}'


def test_a_deadline_firing_as_the_read_completes_does_not_cancel_the_handler() -> None:
    async def main() -> str:
        task = asyncio.current_task()
        assert task is not None

        async def receive() -> dict[str, Any]:
            # What the ticker does when the body's last message is already on its way.
            deadlines = asgi._DEADLINES[asyncio.get_running_loop()]
            deadlines.expired.add(task)
            task.cancel()
            return {"type": "http.request", "body": b"{}", "more_body": False}

        body = await read_body(SCOPE, receive, 1000, 5.0)
        await asyncio.sleep(0)  # would raise CancelledError if the cancel were left pending
        return body.decode()

    assert asyncio.run(main()) == "{}"


def test_oversized_streamed_body_is_413_and_closes() -> None:
    async def main() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"x" * 600, "more_body": True}

        with pytest.raises(GatewayError) as info:
            await read_body(SCOPE, receive, 1000, 5.0)
        assert info.value.status == 413
        assert (b"connection", b"close") in info.value.extra_headers

    asyncio.run(main())
