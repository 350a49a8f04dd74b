"""Error bodies in each provider's wire format, with realistic type/code per status."""

from __future__ import annotations

from typing import Any

__all__ = ["anthropic_error_body", "openai_error_body"]

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    # status: (type, code, message)
    400: ("invalid_request_error", None, "Invalid request (simulated)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", "permission_denied", "You are not allowed to do this (simulated)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (simulated)."),
    408: ("timeout", "timeout", "Request timed out (simulated)."),
    409: ("conflict", "conflict", "Conflict (simulated)."),
    413: ("invalid_request_error", "request_too_large", "Request too large (simulated)."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity (simulated)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (simulated)."),
    500: ("server_error", "server_error", "The server had an error (simulated)."),
    502: ("server_error", "bad_gateway", "Bad gateway (simulated)."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded."),
    504: ("server_error", "timeout", "Gateway timeout (simulated)."),
    529: ("overloaded_error", "overloaded", "The server is overloaded (simulated)."),
}
_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def openai_error_body(
    status: int, message: str | None = None, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    kind, default_code, default_message = _OPENAI_ERRORS.get(
        status,
        ("server_error", "server_error", f"Simulated upstream error {status}.")
        if status >= 500
        else ("invalid_request_error", None, f"Simulated upstream error {status}."),
    )
    return {
        "error": {
            "message": message or default_message,
            "type": kind,
            "param": param,
            "code": code or default_code,
        }
    }


def anthropic_error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    text = message or {
        "rate_limit_error": "Number of requests has exceeded your rate limit (simulated).",
        "overloaded_error": "Overloaded",
        "authentication_error": "invalid x-api-key",
    }.get(kind, f"Simulated upstream error {status}.")
    return {"type": "error", "error": {"type": kind, "message": text}}
