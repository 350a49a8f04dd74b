"""The edge the REST-style `/v1/*` routers share (files, batches): served by FastAPI, off the
hot path, with the hot path's rules — a draining replica's 503, the same keys, errors in
OpenAI's shape and an `x-request-id` on every answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response

from gateway.api.app_errors import error_response
from gateway.api.asgi import new_request_id
from gateway.api.common import authenticate
from gateway.errors import GatewayError, Unavailable
from gateway.keys.auth import Principal
from gateway.runtime import shutdown
from gateway.runtime.shutdown import shutting_down
from gateway.state import GatewayState

Served = Callable[[GatewayState, Principal | None], Awaitable[Response]]


async def serve_rest(
    request: Request,
    state: Callable[[], GatewayState | None],
    drain: shutdown.Drain | None,
    handler: Served,
) -> Response:
    """`handler`'s answer for the authenticated caller, or the error it (or the edge) raised.
    From SIGTERM on, new requests get the hot path's 503 (another replica can take them);
    one already running finishes."""
    request_id = new_request_id()
    try:
        current = state()
        if drain is not None and drain.active:
            raise shutting_down()
        if current is None:
            raise Unavailable("The gateway is still starting.")
        principal = await authenticate(request.scope, current)
        response = await handler(current, principal)
    except GatewayError as exc:
        return error_response(request, exc, request_id=request_id)
    response.headers["x-request-id"] = request_id
    return response


def needs_database(what: str, code: str) -> Unavailable:
    return Unavailable(f"The {what} needs the ledger database (FAREBOX_DATABASE_URL).", code=code)
