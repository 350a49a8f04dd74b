"""The OpenAI-compatible endpoints, as plain ASGI (no dependency injection on /v1/*)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.api.asgi import (
    JSON_TYPE,
    SSE_HEADERS,
    ClientGone,
    DisconnectWatch,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    new_request_id,
    read_body,
    send_bytes,
    send_error,
)
from gateway.api.validate import check_chat, check_completion, check_embedding, parse_object
from gateway.errors import GatewayError, model_not_found, unauthorized
from gateway.metering import CallContext
from gateway.service import DONE
from gateway.state import GatewayState
from routing.model import Plan

log = logging.getLogger("farebox.api")

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


class OpenAIEndpoints:
    """Serves `GENERATION_ROUTES` and `MODEL_ROUTES` for the current GatewayState."""

    def __init__(self, state: Callable[[], GatewayState]) -> None:
        self._state = state

    def handles(self, path: str) -> bool:
        return path in GENERATION_ROUTES or path in MODEL_ROUTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        request_id = new_request_id()
        headers: Headers = [(b"x-request-id", request_id.encode())]
        try:
            state = self._state()
            key_id = self._authenticate(scope, state)
            route = GENERATION_ROUTES.get(path)
            if route is None:
                if scope["method"] != "GET":
                    raise _method_not_allowed(scope["method"], path)
                headers.append(JSON_TYPE)
                await send_bytes(send, 200, state.models_body, headers)
                return
            if scope["method"] != "POST":
                raise _method_not_allowed(scope["method"], path)
            await self._generate(scope, receive, send, state, route, headers, key_id)
        except GatewayError as exc:
            await send_error(send, exc, headers)
        except ClientGone:
            return
        except Exception:
            log.exception("unhandled error serving %s (request %s)", path, request_id)
            await send_error(
                send,
                GatewayError(
                    500,
                    f"Internal error in Farebox; quote request id {request_id} to the operator.",
                    error_type="server_error",
                    code="internal_error",
                ),
                headers,
            )

    @staticmethod
    def _authenticate(scope: Scope, state: GatewayState) -> str | None:
        if state.keys.disabled:
            return None
        principal = state.keys.authenticate(
            header(scope, b"authorization"), header(scope, b"x-api-key")
        )
        if principal is None:
            if header(scope, b"authorization") is None and header(scope, b"x-api-key") is None:
                raise unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'.")
            raise unauthorized("Incorrect API key provided.")
        return principal.key_name

    async def _generate(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: GatewayState,
        route: tuple[str, Checker],
        headers: Headers,
        key_id: str | None,
    ) -> None:
        endpoint, check = route
        body = await read_body(scope, receive, state.max_body_bytes)
        payload = parse_object(body)
        model, stream, include_usage = check(payload)
        plan = state.index.plan(model)
        if plan is None:
            raise model_not_found(model, state.index.routable_names())
        headers.append((b"x-farebox-route", plan.route.encode()))
        request_id = headers[0][1].decode()
        ctx = CallContext(request_id, key_id, endpoint, model, stream, payload)
        watch = DisconnectWatch(receive)
        try:
            if stream:
                await self._stream(send, state, ctx, plan, include_usage, headers, watch)
                return
            result = await state.service.complete(ctx, plan)
            watch.stop()
            headers.append(JSON_TYPE)
            headers.append((b"x-farebox-deployment", result.deployment.encode()))
            headers.append((b"x-farebox-attempts", str(result.attempts).encode()))
            if result.fallback_reason:
                headers.append(
                    (b"x-farebox-fallback-reason", _header_value(result.fallback_reason))
                )
            if result.cost_usd is not None:
                headers.append((b"x-farebox-cost-usd", f"{result.cost_usd.normalize():f}".encode()))
            await send_bytes(send, 200, result.body, headers)
        except asyncio.CancelledError:
            if not watch.fired:
                raise
            # The client hung up: the service has recorded it; there is no one to answer.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            watch.stop()

    @staticmethod
    async def _stream(
        send: Send,
        state: GatewayState,
        ctx: CallContext,
        plan: Plan,
        include_usage: bool,
        headers: Headers,
        watch: DisconnectWatch,
    ) -> None:
        streaming = await state.service.stream(ctx, plan, include_usage)
        headers.extend(SSE_HEADERS)
        headers.append((b"x-farebox-deployment", streaming.deployment.encode()))
        headers.append((b"x-farebox-attempts", str(streaming.attempts).encode()))
        if streaming.fallback_reason:
            headers.append((b"x-farebox-fallback-reason", _header_value(streaming.fallback_reason)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunks = streaming.chunks
        try:
            async for chunk in chunks:
                if chunk.endswith(DONE):
                    # The last chunk closes the response in the same write.
                    watch.stop()
                    await send({"type": "http.response.body", "body": chunk})
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                watch.stop()
                await send({"type": "http.response.body", "body": b""})
        except OSError as exc:
            # Headers are out: nothing left to tell a client that has gone away.
            log.info("client left mid-stream (%s): %s", ctx.request_id, exc)
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]


def _header_value(text: str) -> bytes:
    """Header-safe: latin-1, no control characters, bounded length."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean[:512].encode("latin-1")


def _method_not_allowed(method: str, path: str) -> GatewayError:
    return GatewayError(
        405, f"Method {method} is not allowed on {path}.", code="method_not_allowed"
    )
