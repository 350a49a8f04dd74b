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
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import GatewayError

DEFAULT_MAX_HEAD_BYTES = 64 * 1024


def _response(error: GatewayError, reason: str) -> bytes:
    body = error.body()
    return (
        f"HTTP/1.1 {error.status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


HEAD_TOO_LARGE = _response(
    GatewayError(
        431,
        "The request line and headers are larger than this server accepts.",
        code="request_header_fields_too_large",
    ),
    "Request Header Fields Too Large",
)
HEAD_TIMEOUT = _response(
    GatewayError(408, "The request headers did not arrive in time.", code="request_timeout"),
    "Request Timeout",
)


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
            self._reject(HEAD_TOO_LARGE)
        elif self._head_timer is None:
            self._arm_head_timer()

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
                self._reject(HEAD_TIMEOUT)
            else:  # nothing sent at all: just hang up, as on an idle keep-alive connection
                self.transport.close()

    def _reject(self, response: bytes) -> None:
        self._cancel_head_timer()
        self.transport.write(response)
        self.transport.close()
