"""Anthropic Messages ingress (`POST /v1/messages`, `/v1/messages/count_tokens`), as plain ASGI.

An Anthropic SDK pointed at Farebox is served like any OpenAI chat client: the body is
translated to a chat payload, routed, failed over, metered and written to the ledger as
an ordinary `chat/completions` call; only the answer is translated back. Errors use
Anthropic's body shape with the same statuses, so the SDK raises the same exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.api.anthropic_reply import to_anthropic
from gateway.api.anthropic_stream import StreamTranslator
from gateway.api.anthropic_translate import error_body, to_openai
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
    check_route_allowed,
    guarded,
    method_not_allowed,
    send_stream,
    workflow_tag,
)
from gateway.api.validate import parse_object
from gateway.core.metering import CallContext
from gateway.errors import UpstreamMalformed, model_not_found
from gateway.keys.auth import Principal
from gateway.ledger.tokens import estimate_input_tokens
from gateway.state import GatewayState

# Bare path for clients whose base URL already ends in /v1.
MESSAGE_PATHS = frozenset({"/v1/messages", "/messages"})
COUNT_PATHS = frozenset({"/v1/messages/count_tokens", "/messages/count_tokens"})


class AnthropicEndpoints:
    paths = MESSAGE_PATHS | COUNT_PATHS  # every path it serves (`handles`)

    def __init__(self, state: Callable[[], GatewayState]) -> None:
        self._state = state

    def handles(self, path: str) -> bool:
        return path in MESSAGE_PATHS or path in COUNT_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        raw_id = request_id.encode()
        # `request-id` is what the Anthropic SDKs expose as `.request_id`.
        headers: Headers = [(b"x-request-id", raw_id), (b"request-id", raw_id)]
        work = self._handle(scope, receive, send, request_id, headers)
        await guarded(send, headers, request_id, scope["path"], work, error_body)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, headers: Headers
    ) -> None:
        state = self._state()
        principal = await authenticate(scope, state)
        key_id = principal.key_name if principal is not None else None
        if scope["method"] != "POST":
            raise method_not_allowed(scope["method"], scope["path"])
        server = state.config.server
        body = await read_body(scope, receive, server.max_body_bytes, server.body_timeout_s)
        request = parse_object(body, server)
        if scope["path"] in COUNT_PATHS:
            counted = count_tokens(state, principal, request, headers)
            headers.append(JSON_TYPE)  # after the count: an error adds its own
            await send_bytes(send, 200, counted, headers)
            return
        payload = to_openai(request)
        model: str = payload["model"]
        stream = payload.get("stream") is True
        ctx = CallContext(request_id, key_id, "chat/completions", model, stream, payload)
        # The translated payload keeps only metadata.user_id: read the tag from the request.
        ctx.workflow_id = workflow_tag(scope, request)
        call = await Call.begin(state, scope, headers, principal, ctx, len(body), "messages")
        try:
            with DisconnectWatch(receive) as watch:
                if stream:
                    streaming = await call.stream(True)
                    translator = StreamTranslator(model, request_id)
                    await send_stream(send, headers, streaming, watch, request_id, translator)
                    return
                result = await call.complete()
                watch.stop()
                call.answered(result)
                try:
                    completion = orjson.loads(result.body)
                except orjson.JSONDecodeError:
                    raise UpstreamMalformed(
                        f"Upstream {result.deployment} sent an answer that is not JSON."
                    ) from None
                message = to_anthropic(completion, model, request_id)
                headers.append(JSON_TYPE)
                add_result_headers(
                    headers,
                    result.deployment,
                    result.attempts,
                    result.fallback_reason,
                    result.cost_usd,
                    result.gate,
                )
                await send_bytes(send, 200, orjson.dumps(message), headers)
        finally:
            call.settle_leftover()


def count_tokens(
    state: GatewayState, principal: Principal | None, request: dict[str, Any], headers: Headers
) -> bytes:
    """`POST /v1/messages/count_tokens`: `{"input_tokens": N}` for a Messages body (no
    max_tokens needed), by the ledger's estimator over the translated chat payload and the
    upstream model of the route's first target. No upstream call, so no ledger row and no
    share of the key's limits; a model the key may not use is still refused (403)."""
    payload = to_openai(request, need_max_tokens=False)
    model: str = payload["model"]
    plan = state.index.plan(model)
    if plan is None:
        raise model_not_found(model, state.index.routable_names())
    check_route_allowed(principal, plan.route)
    headers.append((b"x-farebox-route", plan.route.encode()))
    upstream = plan.attempts[0].deployment.upstream_model if plan.attempts else model
    return orjson.dumps({"input_tokens": estimate_input_tokens("messages", payload, upstream)})
