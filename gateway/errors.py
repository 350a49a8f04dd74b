"""Errors in the OpenAI and Anthropic wire formats, with the statuses the SDKs map to exceptions."""

from __future__ import annotations

import orjson

# A client-supplied string echoed in an error (a model name, a field name, a path) is cut
# to this many characters: a 1 MB model name must not come back as a 1 MB error.
ECHO_LIMIT = 256
# And no error message at all outgrows this, whatever it quotes (upstream text included).
MESSAGE_LIMIT = 4096

# Status → Anthropic's `error.type`. The Anthropic SDKs pick the exception class from the
# status alone, so the type only has to be truthful.
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
    `{"type": "error", "error": {type, message}}` (Anthropic clients)."""

    __slots__ = ("code", "error_type", "extra_headers", "message", "param", "status")

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
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
        return anthropic_error_body(self.message, self.status)


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


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, error_type="invalid_request_error", code="invalid_api_key")


def model_not_found(model: str, valid: list[str]) -> GatewayError:
    shown = ", ".join(valid[:50]) + (" …" if len(valid) > 50 else "")
    return GatewayError(
        404,
        f"The model {clip(model)!r} does not exist on this gateway. Valid models: {shown}",
        code="model_not_found",
        param="model",
    )


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"Request body is larger than this gateway's limit of {limit} bytes.",
        code="request_too_large",
    )


def upstream_failed(message: str, *, code: str = "upstream_error") -> GatewayError:
    return GatewayError(502, message, error_type="server_error", code=code)


def upstream_timeout(message: str) -> GatewayError:
    return GatewayError(504, message, error_type="server_error", code="upstream_timeout")
