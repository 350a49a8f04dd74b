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
- flow control: a stream that buffers more than a megabyte unread pauses the socket
  (the answer itself, with its timers, is gateway/providers/http1_response.py).

Failures are `UpstreamClosed` (the connection ended before a whole answer: `before_status`
says whether any of it came) or `OSError` / `TimeoutError` from connecting.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools

from gateway.providers.http1_response import Response, UpstreamClosed, await_within

_IDLE_LIMIT = 256  # idle connections kept per origin; more are closed when returned


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
                await await_within(response.head_done, wait)
            else:
                await await_within(response.done, left)
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
