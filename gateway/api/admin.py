"""The admin API: operator-only endpoints behind FAREBOX_MASTER_KEY.

Served by FastAPI (not the hot path): these are rare calls where convenience beats
microseconds. Errors use the OpenAI wire format like the rest of the API.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.asgi import new_request_id
from gateway.api.explain import explain_route, parse_chat_request, unknown_route_message
from gateway.errors import (
    GatewayError,
    NotFound,
    PermissionDenied,
    Unavailable,
    bad_request,
    clip,
    too_large,
    unauthorized,
)
from gateway.keys.auth import bearer_token, digest
from gateway.state import GatewayState


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it outgrows `limit`, never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def forbidden(message: str, code: str) -> PermissionDenied:
    return PermissionDenied(message, code=code)


def _authorize(request: Request, state: GatewayState, master_key: str | None) -> None:
    """Only the master key may use the admin API; client keys get 403, anything else 401."""
    if not master_key:
        raise forbidden(
            "The admin API is disabled: set FAREBOX_MASTER_KEY to enable it.", "admin_disabled"
        )
    authorization = request.headers.get("authorization")
    if authorization is None:
        raise unauthorized(
            "Missing admin key: send it as 'Authorization: Bearer <FAREBOX_MASTER_KEY>'."
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    # Compare digests in constant time, so response time says nothing about the key.
    if scheme.lower() == "bearer" and hmac.compare_digest(digest(token), digest(master_key)):
        return
    if token and not state.keys.disabled and state.keys.authenticate(authorization.encode()):
        raise forbidden(
            "This endpoint needs the master key (FAREBOX_MASTER_KEY); client keys cannot "
            "use the admin API.",
            "admin_key_required",
        )
    raise unauthorized("Incorrect API key provided.")


async def authorize_admin(request: Request, state: GatewayState, master_key: str | None) -> None:
    """`_authorize`, and a 403 rather than a 401 for a virtual key not cached yet: it is a
    client key like any other, only unseen by this replica so far."""
    try:
        _authorize(request, state, master_key)
    except GatewayError as exc:
        token = bearer_token(request.headers.get("authorization", "").encode(), None)
        if exc.status != 401 or token is None or not state.keys.virtual:
            raise
        if await state.keys.resolve(token) is not None:
            raise forbidden(
                "This endpoint needs the master key (FAREBOX_MASTER_KEY); client keys "
                "cannot use the admin API.",
                "admin_key_required",
            ) from None
        raise


def admin_router(state: Callable[[], GatewayState | None], master_key: str | None) -> APIRouter:
    router = APIRouter()

    # `:path` so route names with a slash (vendor/model) work. An async handler runs on
    # the event loop, which is where live state changes: the snapshot is consistent.
    @router.post("/admin/routes/{route:path}/explain", include_in_schema=False)
    async def explain(route: str, request: Request) -> Response:
        # Weighted and latency routes hash the request id: let the caller pin it.
        pinned = request.query_params.get("request_id")
        request_id = new_request_id()
        headers = {"x-request-id": request_id}
        try:
            current = state()
            if current is None or current.live is None:
                raise Unavailable("The gateway is still starting.")
            _authorize(request, current, master_key)
            if pinned is not None:
                if not (0 < len(pinned) <= 200 and pinned.isascii() and pinned.isprintable()):
                    raise bad_request("request_id must be 1-200 printable ASCII characters.")
                request_id = headers["x-request-id"] = pinned
            spec = current.live.route(route)
            if spec is None:
                message = unknown_route_message(
                    clip(route), current.config.routes, current.config.deployments
                )
                raise NotFound(message, code="route_not_found")
            body = await read_limited(request, current.max_body_bytes)
            payload = parse_chat_request(body, route)
            data = explain_route(
                current.live,
                spec,
                payload,
                request_id,
                request.headers.get,
                snapshot="live",
            )
        except GatewayError as exc:
            return Response(exc.body(), exc.status, headers=headers, media_type="application/json")
        return Response(orjson.dumps(data), headers=headers, media_type="application/json")

    return router
