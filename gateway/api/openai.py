"""The OpenAI-compatible endpoints, as plain ASGI (no dependency injection on /v1/*)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.api.asgi import (
    JSON_TYPE,
    DisconnectWatch,
    Headers,
    Receive,
    Scope,
    Send,
    new_request_id,
    read_body,
    send_bytes,
)
from gateway.api.call import Call
from gateway.api.common import (
    add_result_headers,
    authenticate,
    guarded,
    method_not_allowed,
    send_stream,
)
from gateway.api.validate import check_chat, check_completion, check_embedding, parse_object
from gateway.core.metering import CallContext
from gateway.errors import model_not_found
from gateway.state import GatewayState

Checker = Callable[[dict[str, Any]], tuple[str, bool, bool]]


def _embedding(payload: dict[str, Any]) -> tuple[str, bool, bool]:
    return check_embedding(payload), False, False


# path → (upstream endpoint, body checker); bare paths serve clients whose base URL lacks /v1.
GENERATION_ROUTES: dict[str, tuple[str, Checker]] = {}
for _prefix in ("/v1", ""):
    GENERATION_ROUTES[f"{_prefix}/chat/completions"] = ("chat/completions", check_chat)
    GENERATION_ROUTES[f"{_prefix}/completions"] = ("completions", check_completion)
    GENERATION_ROUTES[f"{_prefix}/embeddings"] = ("embeddings", _embedding)
MODEL_ROUTES = frozenset({"/v1/models", "/models"})
# GET /v1/models/{id}: the id is the rest of the path, since model ids may hold `/`
# (`openai/gpt-oss-120b`; the SDKs send it as %2F, which the server has decoded).
MODEL_PREFIXES = ("/v1/models/", "/models/")


class OpenAIEndpoints:
    """Serves `GENERATION_ROUTES` and `MODEL_ROUTES` for the current GatewayState."""

    # The paths it serves exactly (gateway/app.py finds them in one lookup); `handles`
    # says yes to these and to the ones under MODEL_PREFIXES.
    paths = frozenset(GENERATION_ROUTES) | MODEL_ROUTES

    def __init__(self, state: Callable[[], GatewayState]) -> None:
        self._state = state

    def handles(self, path: str) -> bool:
        return path in GENERATION_ROUTES or path in MODEL_ROUTES or path.startswith(MODEL_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        headers: Headers = [(b"x-request-id", request_id.encode())]
        work = self._handle(scope, receive, send, request_id, headers)
        await guarded(send, headers, request_id, scope["path"], work)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, headers: Headers
    ) -> None:
        path: str = scope["path"]
        state = self._state()
        principal = await authenticate(scope, state)
        key_id = principal.key_name if principal is not None else None
        route = GENERATION_ROUTES.get(path)
        if route is None:
            if scope["method"] != "GET":
                raise method_not_allowed(scope["method"], path, "GET")
            body = state.models_body if path in MODEL_ROUTES else model_body(state, path)
            headers.append(JSON_TYPE)  # after the lookup: an error adds its own
            await send_bytes(send, 200, body, headers)
            return
        if scope["method"] != "POST":
            raise method_not_allowed(scope["method"], path)
        endpoint, check = route
        server = state.config.server
        body = await read_body(scope, receive, server.max_body_bytes, server.body_timeout_s)
        payload = parse_object(body, server)
        model, stream, include_usage = check(payload)
        ctx = CallContext(request_id, key_id, endpoint, model, stream, payload)
        call = await Call.begin(state, scope, headers, principal, ctx, len(body), endpoint)
        try:
            with DisconnectWatch(receive) as watch:
                if stream:
                    streaming = await call.stream(include_usage)
                    await send_stream(send, headers, streaming, watch, request_id)
                    return
                result = await call.complete()
                watch.stop()
                headers.append(JSON_TYPE)
                add_result_headers(
                    headers,
                    result.deployment,
                    result.attempts,
                    result.fallback_reason,
                    result.cost_usd,
                    result.gate,
                )
                await send_bytes(send, 200, result.body, headers)
                call.answered(result)  # drill checks and the payload log: after the answer
        finally:
            call.settle_leftover()


def model_body(state: GatewayState, path: str) -> bytes:
    """One entry of GET /v1/models, or the OpenAI 404 (`model_not_found`) for any other id.
    Not the hot path: the list is parsed per call rather than kept twice in the state."""
    model = path.split("/models/", 1)[1]
    models: list[dict[str, Any]] = orjson.loads(state.models_body)["data"]
    for entry in models:
        if entry["id"] == model:
            return orjson.dumps(entry)
    raise model_not_found(model, [entry["id"] for entry in models])
