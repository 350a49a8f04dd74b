"""The lean HTTP/1.1 request cycle for the paths Farebox answers itself (/v1/*, probes).

uvicorn's `RequestResponseCycle` was the biggest Python cost after aiohttp in profiles of the
production profile: per request it validates every response header with two regexes,
writes the status line and headers and the body in separate `transport.write` calls, and
frames each stream chunk through a list join. `LeanHttpProtocol` keeps uvicorn's connection
handling (it subclasses our head-bounded `BoundedHttpToolsProtocol`: keep-alive, pipelining,
flow control, head limits and timeouts, and `server_state.tasks/connections`, which
GatewayServer's drain relies on; the keep-alive timeout is a per-loop sweeper,
gateway/serving/keepalive.py, not a timer per response) and swaps the per-request cycle,
for requests the app says it serves itself (`LeanApp.serves_lean`): everything else (the
admin API, the status page, files, batches) still goes through uvicorn's ASGI cycle.

`LeanCycle` speaks the same ASGI messages with the same semantics — `receive()` hands out
the body as it arrives and then waits for the disconnect (so DisconnectWatch and read_body's
413/408 work unchanged), a `connection: close` answer or a drain closes the connection after
the response, HEAD answers carry no body, 100-continue is sent on the first `receive()` — but:

- a response with a content-length goes out in ONE write (status line, headers and body);
- a chunked response (a stream) is one write per chunk, the chunk framing in the same bytes
  object; the head goes with the first chunk when that is sent in the same event-loop pass
  (else on the next pass, alone), and the last chunk carries the terminator;
- the header names and values are validated with one regex search each over all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
)

from gateway.api.http_protocol import BoundedHttpToolsProtocol
from gateway.serving.keepalive import sweeper

log = logging.getLogger("uvicorn.error")

Message = dict[str, Any]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class LeanApp(Protocol):
    """An ASGI app that names the requests it wants served by the lean cycle."""

    def serves_lean(self, scope: dict[str, Any]) -> bool: ...

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


def _noop() -> None:
    return None


class LeanCycle:
    """One request and its answer on a LeanHttpProtocol connection.

    Carries the attributes uvicorn's protocol reads and writes on its cycle
    (`body`, `more_body`, `message_event`, `disconnected`, `keep_alive`, `response_started`,
    `response_complete`, `run_asgi`), so the connection code is uvicorn's, unchanged.
    """

    __slots__ = (
        "_head",
        "body",
        "chunked",
        "default_headers",
        "disconnected",
        "flow",
        "head_only",
        "keep_alive",
        "message_event",
        "more_body",
        "on_disconnect",
        "on_response",
        "remaining",
        "response_complete",
        "response_started",
        "scope",
        "transport",
        "waiting_for_100_continue",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        protocol: HttpToolsProtocol,
        keep_alive: bool,
    ) -> None:
        self.scope = scope
        self.transport = protocol.transport
        self.flow = protocol.flow
        self.default_headers: list[tuple[bytes, bytes]] = protocol.server_state.default_headers
        self.on_response = protocol.on_response_complete
        self.message_event = asyncio.Event()
        self.disconnected = False
        # Called once if the client goes away before the response is complete: the
        # endpoints' DisconnectWatch registers here instead of parking a task in receive().
        self.on_disconnect: Callable[[], None] | None = None
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = protocol.expect_100_continue
        self.head_only = scope["method"] == "HEAD"
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.remaining = 0
        self._head = b""

    async def run_asgi(self, app: LeanApp) -> None:
        """As uvicorn's: an exception before the answer is a text/plain 500, after it a
        closed connection; a handler that answers nothing is a 500."""
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            log.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self._send_500()
            else:
                self.transport.close()
        else:
            if not self.response_started and not self.disconnected:
                log.error("ASGI callable returned without starting response.")
                await self._send_500()
            elif not self.response_complete and not self.disconnected:
                log.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            self.on_response = _noop

    async def _send_500(self) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"21"),
                    (b"connection", b"close"),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    def watch_disconnect(self, callback: Callable[[], None] | None) -> None:
        """`callback` (None: stop watching) runs when the client hangs up mid-request."""
        self.on_disconnect = callback
        if callback is not None and self.disconnected and not self.response_complete:
            asyncio.get_running_loop().call_soon(callback)

    async def receive(self) -> Message:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(_CONTINUE)
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            event = self.message_event
            if not event.is_set():
                await event.wait()
            event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message = {"type": "http.request", "body": bytes(self.body), "more_body": self.more_body}
        self.body = bytearray()
        return message

    async def send(self, message: Message) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self._start(message["status"], message.get("headers", ()))
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                )
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already "
                "completed."
            )

    def _start(self, status: int, headers: Any) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        parts = [STATUS_LINE[status]]
        for name, value in self.default_headers:
            parts += (name, b": ", value, b"\r\n")
        names: list[bytes] = []
        values: list[bytes] = []
        length: int | None = None
        closing = False
        for name, value in headers:
            name = name.lower()
            names.append(name)
            values.append(value)
            if name == b"content-length":
                if length is None:
                    length = int(value)
            elif name == b"transfer-encoding":
                if value.lower() == b"chunked":
                    self.chunked = True
            elif name == b"connection" and b"close" in [
                token.lower().strip() for token in value.split(b",")
            ]:
                self.keep_alive = False
                closing = True
            parts += (name, b": ", value, b"\r\n")
        # One search over all names, one over all values: the same characters are refused
        # as uvicorn refuses per header (joining adds none).
        if HEADER_RE.search(b"".join(names)):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(b"".join(values)):
            raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive and not closing:
            parts.append(b"connection: close\r\n")
        if self.chunked:
            length = None
        elif length is not None:
            self.remaining = length
        elif not self.head_only and status not in (204, 304):
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        if self.head_only:
            self.transport.write(head)
            return
        self._head = head  # written with the body, in one write
        if self.chunked:
            # A stream's first chunk is usually sent in this same loop pass (the service
            # has read it already, to keep failover open until then): it carries the head.
            # If it is not, the head goes out on the next pass, alone.
            asyncio.get_running_loop().call_soon(self._flush_head)

    def _flush_head(self) -> None:
        head, self._head = self._head, b""
        if head and not self.disconnected:
            self.transport.write(head)

    def _body(self, body: bytes, more_body: bool) -> None:
        head, self._head = self._head, b""
        if self.head_only:
            self.remaining = 0
            out = head
        elif self.chunked:
            if body:
                end = b"" if more_body else _LAST_CHUNK
                out = b"%b%x\r\n%b\r\n%b" % (head, len(body), body, end)
            else:
                out = head if more_body else head + _LAST_CHUNK
        else:
            size = len(body)
            if size > self.remaining:
                raise RuntimeError("Response content longer than Content-Length")
            self.remaining -= size
            out = head + body if head else body
        if out:
            self.transport.write(out)
        if not more_body:
            if self.remaining != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()


class LeanHttpProtocol(BoundedHttpToolsProtocol):
    """BoundedHttpToolsProtocol that serves the app's own paths with a LeanCycle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        # Only an unwrapped app that asks for it (proxy-header or logging middleware
        # around it would be skipped by the lean cycle: then every request is uvicorn's).
        self._lean: LeanApp | None = app if callable(getattr(app, "serves_lean", None)) else None
        # When this connection went idle after a response, for the keep-alive sweeper.
        self.idle_deadline: float | None = None
        self._sweeper = sweeper(self.loop)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._sweeper.add(self, self.timeout_keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sweeper.discard(self)
        super().connection_lost(exc)
        cycle = self.cycle
        if isinstance(cycle, LeanCycle) and not cycle.response_complete:
            callback, cycle.on_disconnect = cycle.on_disconnect, None
            if callback is not None:
                callback()

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this on every read and on connection loss: no timer to cancel.
        self.idle_deadline = None

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive timeout left to the sweeper (gateway/serving/
        keepalive.py) instead of a timer armed per response."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_deadline = self.loop.time() + self.timeout_keep_alive

    def on_headers_complete(self) -> None:
        lean = self._lean
        url = self.url
        if (
            lean is None
            or self.limit_concurrency is not None
            or self.parser.should_upgrade()
            or url[:1] != b"/"
            or url.find(b"#") >= 0
        ):
            # Unusual requests (absolute URLs, upgrades): uvicorn's own handling.
            super().on_headers_complete()
            return
        raw_path, _, query = url.partition(b"?")
        if raw_path.find(b"%") >= 0:  # escaped path: uvicorn unquotes it
            super().on_headers_complete()
            return
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            super().on_headers_complete()
            return
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        parser = self.parser
        scope["method"] = parser.get_method().decode("ascii")
        scope["path"] = self.root_path + path
        scope["raw_path"] = (
            self.root_path.encode("ascii") + raw_path if self.root_path else raw_path
        )
        scope["query_string"] = query
        if not lean.serves_lean(scope):
            super().on_headers_complete()
            return
        self._in_head = False
        self._cancel_head_timer()
        http_version = parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        existing = self.cycle
        cycle = LeanCycle(scope, self, keep_alive)
        self.cycle = cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, lean)  # type: ignore[arg-type]
        else:
            # Pipelined behind an unfinished answer: queued, as uvicorn does.
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, lean))  # type: ignore[arg-type]
