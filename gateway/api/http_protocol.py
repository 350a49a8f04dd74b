"""uvicorn's httptools protocol with a bounded, timed request head.

httptools (llhttp) puts no limit on the request line and headers, and uvicorn's
`HttpToolsProtocol` neither: a client can stream megabytes of header bytes (buffered until
the head completes, so the front door's 431 comes too late to save the memory), or open a
connection and trickle a head forever (uvicorn arms no timer before the first request).
`h11_max_incomplete_event_size` and `timeout_keep_alive` bound exactly this for the h11
protocol and for idle keep-alive connections; this subclass applies the same two settings
to httptools:

- head bytes: at most `h11_max_incomplete_event_size` (plus one socket read) before the
  head completes, else 431 and the connection is closed;
- head time: a new connection, or a head that spans several reads, must complete within
  `timeout_keep_alive` seconds, else 408 and close.

Cheap where it matters: an ordinary request's head arrives in one read, so per request this
adds a counter and a flag; the only timer is one per connection (or per slow head).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from http import HTTPStatus
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.asgi import new_request_id, speaks_anthropic
from gateway.errors import GatewayError, HeadersTooLarge, InvalidRequest, RequestTimeout, clip

DEFAULT_MAX_HEAD_BYTES = 64 * 1024

log = logging.getLogger("farebox.api")


def head_too_large() -> HeadersTooLarge:
    return HeadersTooLarge("The request line and headers are larger than this server accepts.")


def head_timeout() -> RequestTimeout:
    return RequestTimeout("The request headers did not arrive in time.")


def malformed(reason: str | None) -> InvalidRequest:
    detail = f" ({clip(reason, 200)})" if reason else ""
    return InvalidRequest(
        f"The request is not valid HTTP/1.1{detail}: check the request line, the header "
        "names and values, Content-Length and the chunked body encoding.",
        code="malformed_http_request",
    )


def error_response(
    error: GatewayError,
    url: bytes | None,
    request_id: str,
    default_headers: list[tuple[bytes, bytes]] = [],  # noqa: B006 - read only
) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection: JSON in the wire format the
    request's path speaks (Anthropic's on /v1/messages*, when the path got parsed)."""
    path = url.split(b"?", 1)[0].decode("latin-1") if url else ""
    anthropic = speaks_anthropic(path)
    body = error.anthropic_body() if anthropic else error.body()
    raw_id = request_id.encode()
    head = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n".encode()]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"x-request-id: " + raw_id + b"\r\n",
    ]
    if anthropic:
        head.append(b"request-id: " + raw_id + b"\r\n")
    head.append(b"connection: close\r\n\r\n")
    return b"".join(head) + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = kwargs.get("config", args[0] if args else None)
        limit = getattr(config, "h11_max_incomplete_event_size", None)
        self._max_head = limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_HEAD_BYTES
        self._head_timeout = float(getattr(config, "timeout_keep_alive", 5))
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # Still inside a head after this read: count it, and make sure it is timed.
        self._head_bytes += len(data)
        if self._head_bytes > self._max_head:
            self._reject(head_too_large())
        elif self._head_timer is None:
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes llhttp cannot parse (a bad request line, header
        characters, Content-Length or chunk framing) is a text/plain 400; ours is JSON.

        uvicorn calls this inside its `except httptools.HttpParserError`, so the exception
        in flight says what llhttp disliked.
        """
        exc = sys.exc_info()[1]
        reason = str(exc) if isinstance(exc, httptools.HttpParserError) else None
        self._reject(malformed(reason))

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_expired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes:
                self._reject(head_timeout())
            else:  # nothing sent at all: just hang up, as on an idle keep-alive connection
                self.transport.close()

    def _reject(self, error: GatewayError) -> None:
        """Answer `error` and close the connection, unless an answer is already under way."""
        self._cancel_head_timer()
        cycle = self.cycle
        # Past the head, `cycle` is this request's: llhttp begins every message (even one
        # that fails on its first byte) with on_message_begin, which resets the head state
        # and `self.url`.
        in_body = not self._in_head
        if in_body and cycle is not None and cycle.response_complete:
            # Answered already (a 401 before the body was read): nothing more to say.
            self.transport.close()
            return
        if cycle is not None and not cycle.response_complete:
            # The request's handler may still run (a bad chunk arrived while it read the
            # body): from now on it sees a disconnect, and anything it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                # Part of its answer is out: a second status line would corrupt it.
                self.transport.close()
                return
        request_id = new_request_id()
        log.info("HTTP-level %d (request %s): %s", error.status, request_id, error.message)
        url: bytes | None = getattr(self, "url", None)  # set by the first on_message_begin
        default_headers = self.server_state.default_headers
        self.transport.write(error_response(error, url, request_id, default_headers))
        self.transport.close()
