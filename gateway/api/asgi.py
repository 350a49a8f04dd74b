"""Minimal ASGI plumbing for the hot path: read a bounded body, send a complete answer."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import (
    GatewayError,
    HeadersTooLarge,
    RequestTimeout,
    bad_request,
    too_large,
)
from gateway.runtime.asgi_types import Headers as Headers
from gateway.runtime.asgi_types import Scope as Scope
from gateway.runtime.asgi_types import header as header

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")
# Sent with errors that leave a request unread (too large, too slow): the connection
# cannot carry another request, so the client should not try.
CLOSE = (b"connection", b"close")
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class DisconnectWatch:
    """Cancels the handling task when the client hangs up, so the upstream call stops too.

    Must be stopped before the last response message: uvicorn also answers `receive()`
    with `http.disconnect` once a response is complete. As a context manager it stops
    itself on exit and swallows the cancellation it caused: the service has recorded the
    hang-up, and there is no one left to answer.
    """

    __slots__ = ("_task", "_waiter", "_watch", "fired")

    def __init__(self, receive: Receive) -> None:
        self.fired = False
        self._task = asyncio.current_task()
        # Farebox's own request cycle (gateway/serving/protocol.py) calls back on a hang-up;
        # any other ASGI server is watched by a task parked in receive().
        self._watch = getattr(getattr(receive, "__self__", None), "watch_disconnect", None)
        if self._watch is not None:
            self._waiter: asyncio.Future[Message] | None = None
            self._watch(self._hung_up)
        else:
            self._waiter = asyncio.ensure_future(receive())
            self._waiter.add_done_callback(self._on_message)

    def _on_message(self, waiter: asyncio.Future[Message]) -> None:
        if waiter.cancelled() or waiter.exception() is not None:
            return
        if waiter.result().get("type") == "http.disconnect":
            self._hung_up()

    def _hung_up(self) -> None:
        if self._task is not None and not self.fired:
            self.fired = True
            self._task.cancel()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch(None)
            return
        assert self._waiter is not None
        self._waiter.remove_done_callback(self._on_message)
        self._waiter.cancel()

    def __enter__(self) -> DisconnectWatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        self.stop()
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and self.fired:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return True
        return False


class ClientGone(Exception):
    """The client disconnected before we finished reading its request."""


# A random per-process prefix plus a counter: unique across workers and restarts, and
# ~20x cheaper than a getrandom() syscall per request on this VM.
_ID_PREFIX = "req_" + os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


def reseed_request_ids() -> None:
    """Give a forked worker its own prefix."""
    global _ID_PREFIX
    _ID_PREFIX = "req_" + os.urandom(6).hex()


# Request ids are the ledger's primary keys too: a child forked by any server gets its own.
os.register_at_fork(after_in_child=reseed_request_ids)


def body_too_large(limit: int) -> GatewayError:
    error = too_large(limit)
    error.extra_headers.append(CLOSE)
    return error


def body_timeout(timeout_s: float) -> RequestTimeout:
    return RequestTimeout(
        f"The request body did not arrive within {timeout_s:g} s.",
        headers=[CLOSE],
    )


def headers_too_large(scope: Scope, max_count: int, max_bytes: int) -> GatewayError | None:
    """431 when the request head has more header lines, or more bytes, than allowed.

    The count is free; the byte sum costs ~1.3 µs for an SDK's ~17 headers (measured).
    """
    headers = scope["headers"]
    if len(headers) > max_count:
        return HeadersTooLarge(
            f"The request has {len(headers)} header lines; this gateway allows {max_count}.",
            headers=[CLOSE],
        )
    if sum(len(k) + len(v) for k, v in headers) > max_bytes:
        return HeadersTooLarge(
            f"The request headers are larger than this gateway's limit of {max_bytes} bytes.",
            headers=[CLOSE],
        )
    return None


class _BodyDeadlines:
    """One event loop's body reads in progress, and the task that expires them.

    A per-read `asyncio.timeout` costs ~5.5 µs under uvloop (a libuv timer armed and
    disarmed per request); registering a deadline here costs ~0.9 µs (measured in
    bench/validate_cost.py). One coarse ticker per loop cancels the reads that
    overstay, and runs only while some read is registered.
    """

    __slots__ = ("expired", "reads", "tick_s", "ticker")

    def __init__(self) -> None:
        self.reads: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.ticker: asyncio.Task[None] | None = None
        self.tick_s = 1.0

    def add(self, task: asyncio.Task[Any], timeout_s: float) -> None:
        self.reads[task] = time.monotonic() + timeout_s
        if timeout_s < 2 * self.tick_s:
            self.tick_s = timeout_s / 2
        if self.ticker is None:
            self.ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        try:
            while self.reads:
                await asyncio.sleep(self.tick_s)
                now = time.monotonic()
                for task, deadline in list(self.reads.items()):
                    if deadline <= now:
                        # The task is suspended in receive(): its only await while registered.
                        del self.reads[task]
                        self.expired.add(task)
                        task.cancel()
        finally:
            self.ticker = None


_DEADLINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _BodyDeadlines] = (
    weakref.WeakKeyDictionary()
)


async def read_body(
    scope: Scope, receive: Receive, limit: int, timeout_s: float | None = None
) -> bytes:
    """The whole body, at most `limit` bytes (413), within `timeout_s` seconds (408)."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise body_too_large(limit)
        except ValueError:
            raise bad_request("Invalid Content-Length header.") from None
    if timeout_s is None:
        return await _read(receive, limit)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    deadlines = _DEADLINES.get(loop)
    if deadlines is None:
        deadlines = _DEADLINES[loop] = _BodyDeadlines()
    deadlines.add(task, timeout_s)
    try:
        return await _read(receive, limit)
    except asyncio.CancelledError:
        if task in deadlines.expired:
            deadlines.expired.discard(task)
            task.uncancel()
            raise body_timeout(timeout_s) from None
        raise
    finally:
        deadlines.reads.pop(task, None)
        if task in deadlines.expired:
            # The ticker fired in the loop pass that finished the read (or raised 413): its
            # cancel is still pending and would hit the handler's next await. Take it here.
            deadlines.expired.discard(task)
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                task.uncancel()


async def _read(receive: Receive, limit: int) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise body_too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


# Paths whose clients speak Anthropic's wire format, sub-paths included: their errors take
# Anthropic's body shape and also carry `request-id` (what the Anthropic SDKs read).
_ANTHROPIC_PREFIXES = ("/v1/messages", "/messages")


def speaks_anthropic(path: str) -> bool:
    for prefix in _ANTHROPIC_PREFIXES:
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return True
    return False


def id_headers(request_id: str, anthropic: bool) -> Headers:
    raw = request_id.encode()
    return [(b"x-request-id", raw), (b"request-id", raw)] if anthropic else [(b"x-request-id", raw)]


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, error: GatewayError, headers: Headers, body: bytes | None = None
) -> None:
    """Answer `error`; `body` replaces the OpenAI-format body for other wire formats."""
    headers.append(JSON_TYPE)
    headers.extend(error.extra_headers)
    await send_bytes(send, error.status, error.body() if body is None else body, headers)


async def send_edge_error(scope: Scope, send: Send, error: GatewayError) -> None:
    """Answer an error found before any handler ran (a 431 head), in the wire format of
    the request's path, under a new request id."""
    anthropic = speaks_anthropic(scope["path"])
    headers = id_headers(new_request_id(), anthropic)
    await send_error(send, error, headers, error.anthropic_body() if anthropic else None)
