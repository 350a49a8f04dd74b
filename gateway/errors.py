"""The error tree: every error a client can see, one class per kind, in both wire formats.

    GatewayError                      any status (Starlette's own HTTP errors, tests)
    ├── InvalidRequest           400  invalid_request_error
    │   └── UnsupportedEndpoint  400  invalid_request_error / unsupported_endpoint
    ├── AuthenticationFailed     401  invalid_request_error / invalid_api_key
    ├── PermissionDenied         403  permission_error
    ├── NotFound                 404  invalid_request_error / not_found
    ├── MethodNotAllowed         405  invalid_request_error / method_not_allowed
    ├── RequestTimeout           408  invalid_request_error / request_timeout
    ├── Conflict                 409  invalid_request_error
    ├── PayloadTooLarge          413  invalid_request_error / request_too_large
    ├── HeadersTooLarge          431  invalid_request_error / request_header_fields_too_large
    ├── RateLimited              429  requests (or tokens) / rate_limit_exceeded
    ├── QuotaExceeded            429  insufficient_quota / insufficient_quota
    ├── InternalError            500  server_error / internal_error
    ├── Unavailable              503  server_error (starting, a store unreachable, …)
    │   └── ShuttingDown         503  server_error / gateway_shutting_down
    ├── UpstreamRejected    400/413/422  the upstream refused the request itself (status kept)
    ├── UpstreamFailed           502  server_error / upstream_error
    │   ├── UpstreamUnreachable  502  server_error / upstream_unreachable
    │   ├── UpstreamMalformed    502  server_error / upstream_malformed
    │   └── StreamCut            502  server_error / upstream_error
    └── UpstreamTimeout          504  server_error / upstream_timeout

Each class carries, as class attributes, its HTTP status, OpenAI `type`, default `code` and
Anthropic `error.type`; `body()` renders `{"error": {message, type, param, code}}` for OpenAI
clients and `anthropic_body()` renders `{"type": "error", "error": {type, message}}` for Anthropic
clients. The OpenAI SDKs pick their exception class from the status, the Anthropic SDKs too, so
the status is what must be right; the types only have to be truthful.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

# A client-supplied string echoed in an error (a model name, a field name, a path) is cut
# to this many characters: a 1 MB model name must not come back as a 1 MB error.
ECHO_LIMIT = 256
# And no error message at all outgrows this, whatever it quotes (upstream text included).
MESSAGE_LIMIT = 4096

Headers = list[tuple[bytes, bytes]]

# Status → Anthropic's `error.type`, for errors whose status is only known at run time (an
# upstream's own 4xx passed through, a Starlette HTTP error). The classes below name theirs.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text`, or its first `limit` characters and an ellipsis."""
    return text if len(text) <= limit else text[:limit] + "…"


class GatewayError(Exception):
    """An error answered as `{"error": {message, type, param, code}}` (OpenAI clients) or
    `{"type": "error", "error": {type, message}}` (Anthropic clients).

    Raise a subclass; the base takes an explicit status only for HTTP errors that have no kind
    of their own (Starlette's, with whatever status its caller chose).
    """

    __slots__ = ("code", "error_type", "extra_headers", "message", "param", "status")

    # None: derived from the status (see `anthropic_error_type`).
    anthropic_type: ClassVar[str | None] = None

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        message = clip(message, MESSAGE_LIMIT)
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        # A field path can hold a client's own key names.
        self.param = clip(param) if param is not None else None
        self.extra_headers = headers or []

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.code, self.param)

    def anthropic_body(self) -> bytes:
        kind = self.anthropic_type or anthropic_error_type(self.status)
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": self.message}})


class _Kind(GatewayError):
    """A kind with a fixed status, OpenAI type and default code (the class attributes)."""

    __slots__ = ()

    http_status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "invalid_request_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(
            self.http_status,
            message,
            error_type=self.openai_type,
            code=code if code is not None else self.default_code,
            param=param,
            headers=headers,
        )


class InvalidRequest(_Kind):
    __slots__ = ()
    http_status = 400
    anthropic_type = "invalid_request_error"


class UnsupportedEndpoint(InvalidRequest):
    __slots__ = ()
    default_code = "unsupported_endpoint"


class AuthenticationFailed(_Kind):
    __slots__ = ()
    http_status = 401
    default_code = "invalid_api_key"
    anthropic_type = "authentication_error"


class PermissionDenied(_Kind):
    __slots__ = ()
    http_status = 403
    openai_type = "permission_error"
    anthropic_type = "permission_error"


class NotFound(_Kind):
    __slots__ = ()
    http_status = 404
    default_code = "not_found"
    anthropic_type = "not_found_error"


class MethodNotAllowed(_Kind):
    __slots__ = ()
    http_status = 405
    default_code = "method_not_allowed"
    anthropic_type = "invalid_request_error"


class RequestTimeout(_Kind):
    __slots__ = ()
    http_status = 408
    default_code = "request_timeout"
    anthropic_type = "invalid_request_error"


class Conflict(_Kind):
    __slots__ = ()
    http_status = 409
    anthropic_type = "conflict_error"


class PayloadTooLarge(_Kind):
    __slots__ = ()
    http_status = 413
    default_code = "request_too_large"
    anthropic_type = "request_too_large"


class HeadersTooLarge(_Kind):
    __slots__ = ()
    http_status = 431
    default_code = "request_header_fields_too_large"
    anthropic_type = "invalid_request_error"


class RateLimited(_Kind):
    """429 that clears with time. OpenAI's `type` names the exhausted limit ("requests",
    "tokens"), hence `error_type` may be given."""

    __slots__ = ()
    http_status = 429
    openai_type = "requests"
    default_code = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message, code=code, headers=headers)
        if error_type is not None:
            self.error_type = error_type


class QuotaExceeded(_Kind):
    """429 that waiting does not clear (a spent budget): OpenAI's insufficient_quota."""

    __slots__ = ()
    http_status = 429
    openai_type = "insufficient_quota"
    default_code = "insufficient_quota"
    anthropic_type = "rate_limit_error"


class InternalError(_Kind):
    __slots__ = ()
    http_status = 500
    openai_type = "server_error"
    default_code = "internal_error"
    anthropic_type = "api_error"


class Unavailable(_Kind):
    """503: this gateway cannot serve right now (starting, a store unreachable); retry."""

    __slots__ = ()
    http_status = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"


class ShuttingDown(Unavailable):
    __slots__ = ()
    default_code = "gateway_shutting_down"


class UpstreamRejected(GatewayError):
    """The upstream refused the request itself (400/413/422): the client sees that status,
    since another provider would refuse it too."""

    __slots__ = ()

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(status, message, code=code, param=param)


class UpstreamFailed(_Kind):
    __slots__ = ()
    http_status = 502
    openai_type = "server_error"
    default_code = "upstream_error"
    anthropic_type = "api_error"


class UpstreamUnreachable(UpstreamFailed):
    __slots__ = ()
    default_code = "upstream_unreachable"


class UpstreamMalformed(UpstreamFailed):
    __slots__ = ()
    default_code = "upstream_malformed"


class StreamCut(UpstreamFailed):
    """The upstream connection or stream ended before the answer was complete."""

    __slots__ = ()


class UpstreamTimeout(_Kind):
    __slots__ = ()
    http_status = 504
    openai_type = "server_error"
    default_code = "upstream_timeout"
    anthropic_type = "timeout_error"


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def anthropic_error_type(status: int) -> str:
    known = _ANTHROPIC_TYPES.get(status)
    if known is not None:
        return known
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(message: str, status: int) -> bytes:
    """`{"type":"error","error":{"type","message"}}`, typed by `status`."""
    return orjson.dumps(
        {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
    )


# Shorthands kept for the many validation sites that build these.
def bad_request(
    message: str, *, param: str | None = None, code: str | None = None
) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def unauthorized(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message)


def model_not_found(model: str, valid: list[str]) -> NotFound:
    shown = ", ".join(valid[:50]) + (" …" if len(valid) > 50 else "")
    return NotFound(
        f"The model {clip(model)!r} does not exist on this gateway. Valid models: {shown}",
        code="model_not_found",
        param="model",
    )


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than this gateway's limit of {limit} bytes.")


def upstream_failed(message: str, *, code: str = "upstream_error") -> UpstreamFailed:
    return UpstreamFailed(message, code=code)


def upstream_timeout(message: str) -> UpstreamTimeout:
    return UpstreamTimeout(message)
