"""AWS event-stream framing (``application/vnd.amazon.eventstream``), encoder only.

One message is::

    prelude:  total length (u32 BE) | headers length (u32 BE) | CRC32 of those 8 bytes
    headers:  per header: name length (u8) | name | type (u8, 7 = string) |
              value length (u16 BE) | value
    payload:  bytes (JSON for Bedrock)
    trailer:  CRC32 of everything above (u32 BE)

Bedrock's ``ConverseStream`` sends ``:message-type: event`` messages whose
``:event-type`` names the union member (``messageStart``, ``contentBlockDelta``…) and whose
payload is that member's JSON; errors are ``:message-type: exception`` messages with
``:exception-type`` (``throttlingException``…) and a ``{"message": …}`` payload.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import orjson

__all__ = ["CONTENT_TYPE", "encode_message", "event", "exception"]

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")


def _headers(headers: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode()
        raw_value = value.encode()
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", _STRING, len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One framed event-stream message with string-valued ``headers``."""
    encoded = _headers(headers)
    total = _PRELUDE.size + _CRC.size + len(encoded) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(encoded))
    head = prelude + _CRC.pack(zlib.crc32(prelude))
    message = head + encoded + payload
    return message + _CRC.pack(zlib.crc32(message))


def event(event_type: str, payload: dict[str, Any] | bytes) -> bytes:
    """A ``:message-type: event`` message with a JSON payload."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return encode_message(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        body,
    )


def exception(exception_type: str, message: str) -> bytes:
    """A ``:message-type: exception`` message, how Bedrock fails a stream after its 200."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        orjson.dumps({"message": message}),
    )
