"""How an upstream attempt ended: the one vocabulary shared by the adapters and the failover rules.

`gateway.providers` raises `UpstreamError(kind, …)` with one of these kinds and
`routing.failover.classify` decides what to do about it. Both import this module (routing may not
import gateway), so the two sides can no longer drift apart. The values are the strings written
to ledger rows and journals; a `StrEnum` compares equal to them, so rows written before this
module existed read the same.
"""

from __future__ import annotations

from enum import StrEnum


class OutcomeKind(StrEnum):
    OK = "ok"
    # No connection (DNS, refused, TLS): nothing reached the provider.
    CONNECT = "connect"
    # A connect, first-token or total deadline passed.
    TIMEOUT = "timeout"
    # The provider answered with an HTTP error status.
    STATUS = "status"
    # A 2xx whose body or SSE event could not be read as the protocol says.
    MALFORMED = "malformed"
    # The connection or stream ended before the answer was complete.
    CUT = "cut"
    # The stream carried an error event from the provider.
    STREAM_ERROR = "stream_error"


OK = OutcomeKind.OK
CONNECT = OutcomeKind.CONNECT
TIMEOUT = OutcomeKind.TIMEOUT
STATUS = OutcomeKind.STATUS
MALFORMED = OutcomeKind.MALFORMED
CUT = OutcomeKind.CUT
STREAM_ERROR = OutcomeKind.STREAM_ERROR
