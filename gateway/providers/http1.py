"""A lean HTTP/1.1 client for the hot path: keep-alive connections per origin, httptools.

Why not aiohttp here: on this machine one upstream POST through `aiohttp.ClientSession`
cost ~88 µs of CPU against ~20-25 µs for the same request over a pooled asyncio protocol
with httptools' parser (`bench/upstream_client.py`, side by side) — the largest single cost
of a gateway request after the kernel. The OpenAI-protocol calls Farebox makes are simple:
one POST with a JSON body, a JSON answer or an SSE stream back; no cookies, redirects,
proxies or multipart. Those go through here; aiohttp stays for what needs more (multipart
and streamed uploads of the pass-through endpoints, provider batch APIs, litellm).

What it does:
- one idle-connection stack per origin (scheme, host, port), most recently used first; a
  connection goes back only after a whole answer that allows keep-alive, so a cut stream or
  an abandoned read never leaves half an answer on a pooled socket; a pooled connection the
  server closed is dropped as soon as the loop sees its EOF;
- TLS for `https` origins (the default context: certificate and host name checked);
- response bodies decoded from chunked transfer encoding by the parser, and from gzip or
  deflate when the server compressed anyway (we ask for `identity`);
- bounds: connect (`connect_s`), the whole call (`total_s`, a non-stream answer), and for a
  stream the longest silence between reads (`read_s`); each raises `TimeoutError`;
- flow control: a stream that buffers more than `_HIGH_WATER` bytes unread pauses the socket.

Failures are `UpstreamClosed` (the connection ended before a whole answer: `before_status`
says whether any of it came) or `OSError` / `TimeoutError` from connecting.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 16
_FINISH_S = 2.0  # how long a finished stream's connection may wait for its last chunk
_IDLE_LIMIT = 256  # idle connections kept per origin; more are closed when returned


class UpstreamClosed(Exception):
    """The connection ended before the whole answer arrived."""

    def __init__(self, before_status: bool) -> None:
        super().__init__(
            "server closed the connection"
            + (" before answering" if before_status else " mid-answer")
        )
        self.before_status = before_status


class Origin:
    """Where requests go: the pool of one scheme://host:port, and its fixed head bytes."""

    __slots__ = ("host", "host_header", "idle", "port", "ssl")

    def __init__(self, scheme: str, host: str, port: int | None) -> None:
        tls = scheme == "https"
        self.host = host
        self.port = port or (443 if tls else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        default = (tls and self.port == 443) or (not tls and self.port == 80)
        name = f"[{host}]" if ":" in host else host
        self.host_header = (name if default else f"{name}:{self.port}").encode("idna")
        self.idle: deque[_Connection] = deque()


class Target:
    """One URL's origin and request target, parsed once (per provider endpoint)."""

    __slots__ = ("origin", "path")

    def __init__(self, origin: Origin, path: bytes) -> None:
        self.origin, self.path = origin, path


class Client:
    """Pools per origin; `target(url)` once per URL, then `request` per call."""

    def __init__(self) -> None:
        self._origins: dict[tuple[str, str, int | None], Origin] = {}
        self._targets: dict[str, Target] = {}
        self.closed = False

    def target(self, url: str) -> Target:
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            key = (parts.scheme, parts.hostname, parts.port)
            origin = self._origins.get(key)
            if origin is None:
                origin = self._origins[key] = Origin(parts.scheme, parts.hostname, parts.port)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            found = self._targets[url] = Target(origin, path.encode())
        return found

    async def request(
        self,
        target: Target,
        head: bytes,
        body: bytes,
        *,
        connect_s: float | None,
        total_s: float | None = None,
        read_s: float | None = None,
        stream: bool = False,
    ) -> Response:
        """POST `body` with the header lines `head` (each `name: value\\r\\n`, no Host or
        Content-Length). Returns once the status line and headers are in: a non-stream
        answer also has its whole body (`body`); a stream is read with `Response.iter`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_s if total_s is not None else None
        conn = await self._connection(target.origin, connect_s)
        response = conn.send(
            b"POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n"
            % (target.path, target.origin.host_header, head, len(body)),
            body,
            stream,
        )
        response.deadline = deadline
        try:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if stream:
                wait = left if read_s is None else read_s if left is None else min(read_s, left)
                await _within(response.head_done, wait)
            else:
                await _within(response.done, left)
        except BaseException:
            conn.abandon()
            raise
        return response

    async def _connection(self, origin: Origin, connect_s: float | None) -> _Connection:
        idle = origin.idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
        loop = asyncio.get_running_loop()
        opening = loop.create_connection(
            lambda: _Connection(origin, self),
            origin.host,
            origin.port,
            ssl=origin.ssl,
            server_hostname=origin.host if origin.ssl is not None else None,
        )
        if connect_s is None:
            _, conn = await opening
        else:
            async with asyncio.timeout(connect_s):
                _, conn = await opening
        return conn

    def release(self, conn: _Connection) -> None:
        idle = conn.origin.idle
        if self.closed or len(idle) >= _IDLE_LIMIT:
            conn.close()
        else:
            idle.append(conn)

    async def close(self) -> None:
        self.closed = True
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop().close()


async def _within(waiter: asyncio.Future[None], seconds: float | None) -> None:
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

    def __init__(self, conn: _Connection, stream: bool) -> None:
        loop = asyncio.get_running_loop()
        self._conn: _Connection | None = conn
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
        """The body as it arrives, each piece everything buffered since the last one;
        a silence longer than `read_s` (or reaching the request's deadline) raises
        TimeoutError, a cut UpstreamClosed."""
        loop = asyncio.get_running_loop()
        deadline = self.deadline
        while True:
            if self._pieces:
                pieces, self._pieces = self._pieces, []
                self._buffered = 0
                conn = self._conn
                if conn is not None and conn.paused:
                    conn.resume()
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                continue
            if self.done.done():
                if self._error is not None:
                    raise self._error
                return
            if self._error is not None:
                raise self._error
            wake = self._wake = loop.create_future()
            wait = read_s
            if deadline is not None:
                left = max(0.0, deadline - loop.time())
                wait = left if wait is None else min(wait, left)
            try:
                await _within(wake, wait)
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


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request at a time."""

    __slots__ = (
        "_header_list",
        "client",
        "closed",
        "origin",
        "parser",
        "paused",
        "response",
        "transport",
    )

    def __init__(self, origin: Origin, client: Client) -> None:
        self.origin = origin
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self._header_list: dict[str, str] = {}
        self.closed = False
        self.paused = False

    # -- asyncio ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            # Bytes nobody asked for: the connection is not in a known state any more.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamClosed(self.response.status == 0))
        except httptools.HttpParserError:
            self._fail(UpstreamClosed(self.response.status == 0))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None:
            self.response = None
            response._failed(UpstreamClosed(response.status == 0))

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self.response
        headers, self._header_list = self._header_list, {}
        if response is not None:
            response._got_head(self.parser.get_status_code(), headers)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._got_body(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None:
            return
        if response.status < 200:  # 1xx (e.g. 100 Continue): the real answer follows
            response.status = 0
            return
        self.response = None
        keep = self.parser.should_keep_alive()
        response._complete()
        if keep and not self.closed:
            self.client.release(self)
        else:
            self.close()

    # -- used by the client -------------------------------------------------------------

    def send(self, head: bytes, body: bytes, stream: bool) -> Response:
        response = self.response = Response(self, stream)
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        return response

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def abandon(self) -> None:
        """The caller stopped before the whole answer: never reuse this connection."""
        self.response = None
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: BaseException) -> None:
        response = self.response
        self.response = None
        self.close()
        if response is not None:
            response._failed(error)
