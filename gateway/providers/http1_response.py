"""One answer of the lean HTTP/1.1 client (gateway/providers/http1.py): its status and
headers as soon as they are in, then its body — whole, or piece by piece for a stream, with
the flow control and the release of the connection once the answer's framing ends — and the
timers that bound each wait (a timer on the awaited future: asyncio.timeout's task
cancellation costs several times more on every call of the hot path).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

_HIGH_WATER = 1 << 20  # unread stream bytes that pause the socket
_FINISH_S = 2.0  # how long a finished stream's connection may wait for its last chunk


class Reading(Protocol):
    """What an answer needs of its connection."""

    paused: bool

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def abandon(self) -> None: ...


class UpstreamClosed(Exception):
    """The connection ended before the whole answer arrived."""

    def __init__(self, before_status: bool) -> None:
        super().__init__(
            "server closed the connection"
            + (" before answering" if before_status else " mid-answer")
        )
        self.before_status = before_status


async def await_within(waiter: asyncio.Future[None], seconds: float | None) -> None:
    """Await `waiter`, failing it with TimeoutError after `seconds`. A timer on the future
    itself: asyncio.timeout's task cancellation and rescheduling cost several times more,
    on every call of the hot path."""
    if seconds is None:
        await waiter
        return
    timer = asyncio.get_running_loop().call_later(seconds, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """One answer: status and headers as soon as they are in, then the body."""

    __slots__ = (
        "_buffered",
        "_conn",
        "_decoder",
        "_error",
        "_pieces",
        "_wake",
        "body",
        "deadline",
        "done",
        "head_done",
        "headers",
        "status",
        "stream",
    )

    def __init__(self, conn: Reading, stream: bool) -> None:
        loop = asyncio.get_running_loop()
        self._conn: Reading | None = conn
        self.stream = stream
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.deadline: float | None = None  # loop time the whole answer must be in by
        self.head_done: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._wake: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._decoder: Any = None

    # -- fed by the connection --------------------------------------------------------

    def _got_head(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers
        encoding = headers.get("content-encoding")
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        if not self.head_done.done():
            self.head_done.set_result(None)

    def _got_body(self, data: bytes) -> None:
        if self._decoder is not None:
            data = self._decoder.decompress(data)
            if not data:
                return
        self._pieces.append(data)
        self._buffered += len(data)
        if self.stream:
            self._wakeup()
            if self._buffered > _HIGH_WATER and self._conn is not None:
                self._conn.pause()

    def _complete(self) -> None:
        if self._decoder is not None:
            rest = self._decoder.flush()
            if rest:
                self._pieces.append(rest)
        if not self.stream:
            self.body = b"".join(self._pieces) if len(self._pieces) != 1 else self._pieces[0]
            self._pieces = []
        self._conn = None
        if not self.done.done():
            self.done.set_result(None)
        self._wakeup()

    def _failed(self, error: BaseException) -> None:
        self._error = error
        self._conn = None
        for waiter in (self.head_done, self.done):
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved: no "never retrieved" warning if unawaited
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    # -- read by the caller -----------------------------------------------------------

    async def iter(self, read_s: float | None) -> AsyncIterator[bytes]:
        """The body as it arrives (see `next_piece`)."""
        while (piece := await self.next_piece(read_s)) is not None:
            yield piece

    async def next_piece(self, read_s: float | None) -> bytes | None:
        """The next piece of the body, everything buffered since the last one; None once
        the body is complete. A silence longer than `read_s` (or reaching the request's
        deadline) raises TimeoutError, a cut UpstreamClosed. (A coroutine rather than only
        an async generator: a reader that stops at an end marker leaves no suspended
        generator for the loop to finalize with a task of its own.)"""
        while True:
            if self._pieces:
                pieces, self._pieces = self._pieces, []
                self._buffered = 0
                conn = self._conn
                if conn is not None and conn.paused:
                    conn.resume()
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if self.done.done():
                if self._error is not None:
                    raise self._error
                return None
            if self._error is not None:
                raise self._error
            loop = asyncio.get_running_loop()
            wake = self._wake = loop.create_future()
            wait = read_s
            deadline = self.deadline
            if deadline is not None:
                left = max(0.0, deadline - loop.time())
                wait = left if wait is None else min(wait, left)
            try:
                await await_within(wake, wait)
            finally:
                self._wake = None

    def close(self) -> None:
        """Done with this answer: an unfinished one closes its connection (never reused),
        which also tells the upstream to stop generating."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.abandon()

    def release(self) -> None:
        """The caller has all it wanted (a stream's end marker): the connection goes back
        to the pool once the framing ends (the last chunk often comes in its own read),
        or is closed if that does not happen within `_FINISH_S`."""
        conn = self._conn
        if conn is None or self.done.done():
            return
        self._pieces = []
        self.stream = False  # nobody reads any more: drop, don't wake

        def give_up() -> None:
            if self._conn is conn and not self.done.done():
                self.close()

        asyncio.get_running_loop().call_later(_FINISH_S, give_up)
