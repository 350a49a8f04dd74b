"""LeanCycle's wire format (gateway/serving/protocol.py): the bytes and the number of
transport writes per answer, on a recording transport. The end-to-end behaviour (keep-alive,
disconnects, drains, head limits) is covered by the e2e suites, which run on this protocol."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.serving.protocol import LeanCycle


def synchronous(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


DATE = (b"date", b"Mon, 07 Dec 2026 03:00:00 GMT")


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Flow:
    write_paused = False

    def resume_reading(self) -> None:
        pass


def cycle(
    method: str = "POST", keep_alive: bool = True, expect_100: bool = False
) -> tuple[LeanCycle, Transport, list[int]]:
    transport = Transport()
    completed: list[int] = []
    protocol: Any = SimpleNamespace(
        transport=transport,
        flow=Flow(),
        server_state=SimpleNamespace(default_headers=[DATE]),
        on_response_complete=lambda: completed.append(1),
        expect_100_continue=expect_100,
    )
    scope = {"type": "http", "method": method, "path": "/v1/chat/completions"}
    return LeanCycle(scope, protocol, keep_alive), transport, completed


def start(status: int, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


@synchronous
async def test_an_answer_with_a_length_is_one_write() -> None:
    lean, transport, completed = cycle()
    await lean.send(start(200, [(b"content-type", b"application/json"), (b"content-length", b"2")]))
    assert transport.writes == []  # held for the body
    await lean.send(body(b"{}"))
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec 2026 03:00:00 GMT\r\n"
        b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    ]
    assert lean.response_complete and completed == [1] and not transport.closed
    assert await lean.receive() == {"type": "http.disconnect"}


@synchronous
async def test_a_stream_is_one_write_per_chunk_the_head_with_the_first() -> None:
    lean, transport, _ = cycle()
    await lean.send(start(200, [(b"content-type", b"text/event-stream")]))
    await lean.send(body(b"data: 1\n\n", more=True))  # in the same loop pass
    await lean.send(body(b"", more=True))  # nothing to frame: no write
    await lean.send(body(b"data: [DONE]\n\n"))
    await asyncio.sleep(0)  # the head's flush, scheduled at start, finds nothing left
    first, last = transport.writes
    head, chunk = first.split(b"\r\n\r\n", 1)
    assert head.endswith(b"transfer-encoding: chunked")
    assert chunk == b"9\r\ndata: 1\n\n\r\n"
    assert last == b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"  # the terminator in the same write
    assert lean.response_complete


@synchronous
async def test_a_stream_whose_first_chunk_is_late_sends_its_head_alone() -> None:
    lean, transport, _ = cycle()
    await lean.send(start(200, [(b"content-type", b"text/event-stream")]))
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    await lean.send(body(b"x", more=True))
    assert transport.writes[1] == b"1\r\nx\r\n"


@synchronous
async def test_an_empty_last_chunk_is_the_terminator_alone() -> None:
    lean, transport, _ = cycle()
    await lean.send(start(200, []))
    await lean.send(body(b"x", more=True))
    await lean.send(body(b""))
    assert transport.writes[0].endswith(b"\r\n\r\n1\r\nx\r\n")
    assert transport.writes[1:] == [b"0\r\n\r\n"]


@synchronous
async def test_head_requests_get_no_body() -> None:
    lean, transport, _ = cycle(method="HEAD")
    await lean.send(start(200, [(b"content-length", b"5")]))
    await lean.send(body(b"hello"))
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec 2026 03:00:00 GMT\r\ncontent-length: 5\r\n\r\n"
    ]
    assert lean.response_complete


@synchronous
async def test_connection_close_closes_after_the_answer() -> None:
    lean, transport, _ = cycle()
    headers = [(b"connection", b"close"), (b"content-length", b"0")]
    await lean.send(start(503, headers))
    await lean.send(body(b""))
    assert transport.writes[0].count(b"connection: close") == 1
    assert transport.closed


@synchronous
async def test_a_connection_that_cannot_be_kept_says_close() -> None:
    lean, transport, _ = cycle(keep_alive=False)  # HTTP/1.0, or draining
    await lean.send(start(200, [(b"content-length", b"0")]))
    await lean.send(body(b""))
    assert b"connection: close\r\n" in transport.writes[0]
    assert transport.closed


@pytest.mark.parametrize(
    ("name", "value"),
    [(b"x-bad name", b"v"), (b"x-ok", b"line\r\nbreak"), (b"x-ok", b"nul\x00")],
)
@synchronous
async def test_header_injection_is_refused(name: bytes, value: bytes) -> None:
    lean, _, _ = cycle()
    with pytest.raises(RuntimeError, match="Invalid HTTP header"):
        await lean.send(start(200, [(name, value), (b"content-length", b"0")]))


@synchronous
async def test_a_body_longer_than_its_length_is_refused() -> None:
    lean, _, _ = cycle()
    await lean.send(start(200, [(b"content-length", b"1")]))
    with pytest.raises(RuntimeError, match="longer than Content-Length"):
        await lean.send(body(b"too long"))


@synchronous
async def test_a_failing_handler_is_a_500_before_its_answer() -> None:
    lean, transport, _ = cycle()

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("bug")

    await lean.run_asgi(broken)  # type: ignore[arg-type]
    assert transport.writes[0].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nInternal Server Error")
    assert transport.closed


@synchronous
async def test_receive_gives_the_body_then_waits_for_the_disconnect() -> None:
    lean, transport, _ = cycle(expect_100=True)
    lean.body += b'{"a":1}'
    lean.more_body = False
    lean.message_event.set()
    assert await lean.receive() == {"type": "http.request", "body": b'{"a":1}', "more_body": False}
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    waiting = asyncio.ensure_future(lean.receive())
    await asyncio.sleep(0)
    assert not waiting.done()
    lean.disconnected = True  # what connection_lost does
    lean.message_event.set()
    assert await waiting == {"type": "http.disconnect"}
