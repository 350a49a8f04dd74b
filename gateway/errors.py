"""Errors in the OpenAI wire format, with the statuses the OpenAI SDKs map to exceptions."""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """An error answered to the client as `{"error": {message, type, param, code}}`."""

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
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        self.extra_headers = headers or []

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.code, self.param)


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, error_type="invalid_request_error", code="invalid_api_key")


def model_not_found(model: str, valid: list[str]) -> GatewayError:
    shown = ", ".join(valid[:50]) + (" …" if len(valid) > 50 else "")
    return GatewayError(
        404,
        f"The model {model!r} does not exist on this gateway. Valid models: {shown}",
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
