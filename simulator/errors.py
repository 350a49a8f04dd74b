"""Error bodies in each provider's wire format, with realistic type/code per status.

Google (Gemini / Vertex AI) errors are ``{"error": {"code", "message", "status"}}`` with a
gRPC status name; Bedrock errors are ``{"message": ...}`` with the exception name only in the
``x-amzn-ErrorType`` header, as the AWS REST-JSON protocol has it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "anthropic_error_body",
    "bedrock_error",
    "bedrock_exception_name",
    "google_error_body",
    "openai_error_body",
]

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


_GOOGLE_ERRORS: dict[int, tuple[str, str]] = {
    # status: (gRPC status name, message)
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: (
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential.",
    ),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    408: ("DEADLINE_EXCEEDED", "The request timed out (simulated)."),
    409: ("ABORTED", "The operation was aborted (simulated)."),
    413: ("INVALID_ARGUMENT", "Request payload size exceeds the limit (simulated)."),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details (simulated).",
    ),
    499: ("CANCELLED", "The operation was cancelled."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    501: ("UNIMPLEMENTED", "Method not implemented (simulated)."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}


def google_error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """Google API error: ``code`` is the HTTP status, ``status`` the gRPC code name."""
    name, default_message = _GOOGLE_ERRORS.get(
        status,
        ("INTERNAL", f"Simulated upstream error {status}.")
        if status >= 500
        else ("FAILED_PRECONDITION", f"Simulated upstream error {status}."),
    )
    return {"error": {"code": status, "message": message or default_message, "status": name}}


_BEDROCK_ERRORS: dict[int, tuple[str, str]] = {
    # status: (exception name, message)
    400: ("ValidationException", "Simulated validation error."),
    401: ("UnrecognizedClientException", "The security token included in the request is invalid."),
    403: (
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    404: ("ResourceNotFoundException", "The provided model identifier is invalid."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request (simulated)."),
    424: ("ModelErrorException", "The model returned an error (simulated)."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error (simulated)."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}


def bedrock_exception_name(status: int) -> str:
    """The AWS exception name Bedrock uses for an HTTP status."""
    return _bedrock(status)[0]


def _bedrock(status: int) -> tuple[str, str]:
    return _BEDROCK_ERRORS.get(
        status,
        ("ServiceUnavailableException", f"Simulated upstream error {status}.")
        if status >= 500
        else ("ValidationException", f"Simulated upstream error {status}."),
    )


def bedrock_error(status: int, message: str | None = None) -> tuple[dict[str, Any], str]:
    """``(body, exception name)``; the name goes in the ``x-amzn-ErrorType`` header."""
    name, default_message = _bedrock(status)
    return {"message": message or default_message}, name
