"""Error answers for whatever FastAPI serves (ops, admin, unknown paths, wrong methods).

The same contract as the hot path: an OpenAI-shaped body, or Anthropic's on /v1/messages*
(an Anthropic SDK calling an endpoint Farebox lacks, such as /v1/messages/count_tokens,
gets a `not_found_error` it can read), and always an `x-request-id`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api.asgi import id_headers, new_request_id, speaks_anthropic
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    clip,
)

log = logging.getLogger("farebox.api")

# How many validation errors one message lists; the rest are counted.
SHOWN_ERRORS = 3


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    # Starlette sends this one's answer for any exception a handler let escape, then
    # re-raises it (uvicorn logs the traceback).
    app.add_exception_handler(Exception, internal_error)


def error_response(
    request: Request,
    error: GatewayError,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> Response:
    """`error` in the wire format of the request's path, with a request id."""
    anthropic = speaks_anthropic(request.scope["path"])
    request_id = request_id or new_request_id()
    sent = {k.decode(): v.decode() for k, v in id_headers(request_id, anthropic)}
    sent.update(headers or {})
    sent.update((k.decode("latin-1"), v.decode("latin-1")) for k, v in error.extra_headers)
    body = error.anthropic_body() if anthropic else error.body()
    return Response(body, status_code=error.status, headers=sent, media_type="application/json")


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    status = exc.status_code
    where = f"{clip(request.method, 32)} {clip(request.scope['path'])}"
    if status == 404:
        error: GatewayError = NotFound(f"Unknown path: {where}.")
    elif status == 405:
        allowed = (exc.headers or {}).get("allow") or (exc.headers or {}).get("Allow")
        use = f"; use {allowed}" if allowed else ""
        error = MethodNotAllowed(f"Method not allowed: {where}{use}.")
    else:
        # Starlette's own HTTP errors can carry any status: the one place the bare class is used.
        error = GatewayError(
            status,
            clip(str(exc.detail)),
            error_type="server_error" if status >= 500 else "invalid_request_error",
        )
    return error_response(request, error, exc.headers)


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """A readable 400 naming the field: "query.limit: Input should be a valid integer"."""
    errors = exc.errors()
    message, param, code = describe(errors)
    return error_response(request, InvalidRequest(message, param=param, code=code))


async def internal_error(request: Request, exc: Exception) -> Response:
    request_id = new_request_id()
    log.error(
        "unhandled %s serving %s (request %s)",
        type(exc).__name__,
        clip(request.scope["path"]),
        request_id,
    )
    error = InternalError(
        f"Internal error in Farebox; quote request id {request_id} to the operator."
    )
    return error_response(request, error, request_id=request_id)


def describe(errors: Sequence[Any]) -> tuple[str, str | None, str]:
    """(message, param, code) for pydantic/FastAPI validation errors."""
    if not errors:
        return "The request is not valid.", None, "invalid_value"
    parts = [_one(error) for error in errors[:SHOWN_ERRORS]]
    message = "; ".join(text for text, _ in parts)
    if len(errors) > SHOWN_ERRORS:
        message += f" (and {len(errors) - SHOWN_ERRORS} more)"
    first = errors[0] if isinstance(errors[0], Mapping) else {}
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return message, parts[0][1], code


def _one(error: Any) -> tuple[str, str | None]:
    if not isinstance(error, Mapping):
        return clip(str(error)), None
    loc: Sequence[Any] = error.get("loc") or ()
    kind = error.get("type")
    text = str(error.get("msg") or "is not valid")
    if kind == "json_invalid":
        # loc is ("body", <character offset>): the offset is not a field.
        ctx = error.get("ctx")
        detail = ctx.get("error") if isinstance(ctx, Mapping) else None
        at = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
        text = "Invalid JSON" + (f" at character {at}" if at is not None else "")
        text += f" ({clip(str(detail), 100)})" if detail else ""
        loc = loc[:1]
    where = field_path(loc)
    return (f"{where}: {clip(text)}" if where else clip(text)), where


def field_path(loc: Sequence[Any]) -> str | None:
    """("body", "limits", "rpm") → "body.limits.rpm"; ("body", "routes", 0) → "body.routes[0]"."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + clip(str(part), 64)
    return clip(out) if out else None
