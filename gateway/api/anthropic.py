"""Anthropic Messages ingress (`POST /v1/messages`), as plain ASGI.

An Anthropic SDK pointed at Farebox is served like any OpenAI chat client: the body is
translated to a chat payload, routed, failed over, metered and written to the ledger as
an ordinary `chat/completions` call; only the answer is translated back. Errors use
Anthropic's body shape with the same statuses, so the SDK raises the same exceptions.
"""

from __future__ import annotations

from collections.abc import Callable

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
    guarded,
    method_not_allowed,
    send_stream,
)
from gateway.api.validate import parse_object
from gateway.core.metering import CallContext
from gateway.errors import UpstreamMalformed
from gateway.state import GatewayState

# Bare path for clients whose base URL already ends in /v1.
MESSAGE_PATHS = frozenset({"/v1/messages", "/messages"})


class AnthropicEndpoints:
    def __init__(self, state: Callable[[], GatewayState]) -> None:
        self._state = state

    def handles(self, path: str) -> bool:
        return path in MESSAGE_PATHS

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
        payload = to_openai(parse_object(body, server))
        model: str = payload["model"]
        stream = payload.get("stream") is True
        ctx = CallContext(request_id, key_id, "chat/completions", model, stream, payload)
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
