"""What every hot-path handler shares, whatever wire format it speaks to its client.

Authentication, plan lookup, the `x-farebox-*` result headers, the catch-all that turns
any exception into an error response, and the streaming loop. Handlers differ only in
how they parse the request and render answers and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from gateway.api.asgi import (
    SSE_HEADERS,
    ClientGone,
    DisconnectWatch,
    Headers,
    Scope,
    Send,
    header,
    send_error,
)
from gateway.core.metering import CallContext
from gateway.core.service import DONE, StreamingCompletion
from gateway.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    PermissionDenied,
    bad_request,
    clip,
    model_not_found,
    unauthorized,
)
from gateway.keys.auth import MISS, Principal, bearer_token
from gateway.limits.limiter import Admission, ask_for, rate_headers
from gateway.observability import telemetry
from gateway.runtime.shutdown import shutting_down, was_cut
from gateway.state import GatewayState
from routing.fanout import widen
from routing.model import DYNAMIC_STRATEGIES, Plan
from routing.shape import RequestShape

log = logging.getLogger("farebox.api")

ErrorRenderer = Callable[[GatewayError], bytes]


def _openai_body(error: GatewayError) -> bytes:
    return error.body()


async def guarded(
    send: Send,
    headers: Headers,
    request_id: str,
    path: str,
    work: Awaitable[None],
    render: ErrorRenderer = _openai_body,
) -> None:
    """Await a handler; answer its GatewayError, or any other exception as a 500.

    `render` writes the error body in the client's wire format; the status and any
    extra headers (retry-after) come from the GatewayError either way.
    """
    try:
        await work
    except GatewayError as exc:
        await send_error(send, exc, headers, render(exc))
    except ClientGone:
        return
    except asyncio.CancelledError:
        if not was_cut():
            raise  # the client hung up
        # The process is stopping and the grace period is over (gateway/runtime/shutdown.py): the
        # call is metered as `shutdown`; its client gets a JSON 503 it can retry elsewhere.
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        error: GatewayError = shutting_down(cut_off=True)
        # A stream's 200 is already out (its relay sent the error event): nothing to add.
        with contextlib.suppress(RuntimeError, OSError):
            await send_error(send, error, headers, render(error))
    except Exception:  # the ASGI guard: any bug is a logged 500, not a dropped socket
        log.exception("unhandled error serving %s (request %s)", path, request_id)
        error = internal_error(request_id)
        await send_error(send, error, headers, render(error))


def internal_error(request_id: str) -> InternalError:
    return InternalError(
        f"Internal error in Farebox; quote request id {request_id} to the operator."
    )


async def authenticate(scope: Scope, state: GatewayState) -> Principal | None:
    """The caller (None when auth is off); raises 401 otherwise.

    Both `Authorization: Bearer` (OpenAI SDKs) and `x-api-key` (Anthropic SDKs) work. Known
    keys answer from memory; only an unseen one awaits the key database.
    """
    keys = state.keys
    if keys.disabled:
        return None
    authorization = header(scope, b"authorization")
    api_key = header(scope, b"x-api-key")
    token = bearer_token(authorization, api_key)
    principal = None
    if token is not None:
        found = keys.cached(token)
        principal = await keys.resolve(token) if found is MISS else found
    if principal is None:
        if authorization is None and api_key is None:
            raise unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
            )
        raise unauthorized("Incorrect API key provided.")
    return principal  # type: ignore[return-value]


WORKFLOW_HEADER = b"x-farebox-workflow"
WORKFLOW_FIELD = "metadata.workflow_id"
WORKFLOW_MAX = 128


def workflow_tag(scope: Scope, payload: dict[str, Any]) -> str | None:
    """The client's workflow tag: header `x-farebox-workflow`, else body
    `metadata.workflow_id` (the header wins, and the body is then not read). None without
    one; a 400 naming where it came from unless it is 1..128 printable ASCII characters.

    The payload is left as it is: `metadata` is forwarded upstream with the rest of the body.
    """
    raw = header(scope, WORKFLOW_HEADER)
    if raw is not None:
        return _checked_tag(raw.decode("latin-1"), "x-farebox-workflow header")
    metadata = payload.get("metadata")
    if type(metadata) is not dict or "workflow_id" not in metadata:
        return None
    return _checked_tag(metadata["workflow_id"], WORKFLOW_FIELD)


def _checked_tag(value: object, where: str) -> str:
    if (
        isinstance(value, str)
        and 0 < len(value) <= WORKFLOW_MAX
        and value.isascii()
        and value.isprintable()
    ):
        return value
    raise bad_request(
        f"{where}: expected a workflow id of 1 to {WORKFLOW_MAX} printable ASCII characters.",
        param=WORKFLOW_FIELD if where == WORKFLOW_FIELD else "x-farebox-workflow",
        code="invalid_value",
    )


def plan_for(
    state: GatewayState,
    model: str,
    headers: Headers,
    payload: dict[str, Any],
    scope: Scope,
) -> tuple[Plan, RequestShape | None]:
    """The plan for `model` (404 if nothing routes it); names the route in a header.

    Fixed strategies (direct, failover) have their plan built once per config; balancing
    ones (cost, weighted, latency) are planned here from live state, and say why.
    """
    plan = state.index.plan(model)
    if plan is None:
        raise model_not_found(model, state.index.routable_names())
    headers.append((b"x-farebox-route", plan.route.encode()))
    if plan.strategy not in DYNAMIC_STRATEGIES or state.live is None:
        return plan, None
    route = state.live.route(plan.route)
    if route is None:
        return plan, None
    request_id = headers[0][1].decode()

    def lookup(name: str) -> str | None:
        value = header(scope, name.encode())
        return value.decode("latin-1") if value is not None else None

    plan, reason, shape = state.live.plan(route, payload, request_id, lookup)
    if reason:
        headers.append((b"x-farebox-route-reason", header_value(reason)))
    return plan, shape


async def admit(
    state: GatewayState,
    principal: Principal | None,
    plan: Plan,
    payload: dict[str, Any],
    body_bytes: int,
    headers: Headers,
) -> Admission | None:
    """Check the key may use this route, then take its share of the key's limits.

    Raises 403 for a route the key may not call, 429 when a limit is reached, 503 when
    limits cannot be checked and fail closed. Keys without limits skip all of it.
    """
    if principal is None:
        return None
    check_route_allowed(principal, plan.route)
    limiter = state.limiter
    if limiter is None or not principal.limited:
        return None
    ask = ask_for(
        plan,
        payload,
        body_bytes,
        state.prices,
        state.config.limits.reserve_output_tokens,
        datetime.now(UTC),
    )
    if plan.fanout is not None:  # consensus / speculative: N calls at once, N reservations
        ask = widen(ask, plan)
    admission = await limiter.admit(principal, ask)
    headers.extend(rate_headers(admission.limits, admission.verdict))
    return admission


def check_route_allowed(principal: Principal | None, route: str) -> None:
    """403 `route_not_allowed` when the key is limited to routes and `route` is not one."""
    if principal is not None and principal.routes is not None and route not in principal.routes:
        raise PermissionDenied(
            f"This API key may not use {route!r}; its routes are: "
            + (", ".join(sorted(principal.routes)) or "none"),
            code="route_not_allowed",
            param="model",
        )


def apply_drill(state: GatewayState, plan: Plan, ctx: CallContext, headers: Headers) -> Plan:
    """The plan a running drill gives this request (the same plan for most requests);
    a request in a drill's cohort says so in `x-farebox-drill`."""
    board = state.drills
    if board is None or not board.active:
        return plan
    plan, ctx.drill_id = board.apply(plan, ctx.request_id)
    if ctx.drill_id is not None:
        headers.append((b"x-farebox-drill", ctx.drill_id.encode()))
    return plan


def start_trace(ctx: CallContext, scope: Scope) -> None:
    """Trace ids for the request when tracing is on, continuing the client's traceparent."""
    if telemetry.ENABLED:
        ctx.trace = telemetry.begin_request(header(scope, b"traceparent"))


def observe_answer(
    state: GatewayState, plan: Plan, ctx: CallContext, deployment: str, body: bytes
) -> None:
    board = state.drills
    if board is not None and board.active:
        board.observe_answer(plan.route, ctx.drill_id, deployment, body)


def add_result_headers(
    headers: Headers,
    deployment: str,
    attempts: int,
    fallback_reason: str | None,
    cost_usd: Decimal | None = None,
    gate: str | None = None,
) -> None:
    headers.append((b"x-farebox-deployment", deployment.encode()))
    if gate is not None:
        headers.append((b"x-farebox-gate", header_value(gate)))
    headers.append((b"x-farebox-attempts", str(attempts).encode()))
    if fallback_reason:
        headers.append((b"x-farebox-fallback-reason", header_value(fallback_reason)))
    if cost_usd is not None:
        headers.append((b"x-farebox-cost-usd", f"{cost_usd.normalize():f}".encode()))


def header_value(text: str) -> bytes:
    """Header-safe: latin-1, no control characters, bounded length."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean[:512].encode("latin-1")


def method_not_allowed(method: str, path: str, allowed: str = "POST") -> MethodNotAllowed:
    """405 naming the method the path takes (also in `allow`, as RFC 9110 asks)."""
    return MethodNotAllowed(
        f"Method {clip(method, 32)} is not allowed on {clip(path)}; use {allowed}.",
        headers=[(b"allow", allowed.encode())],
    )


class StreamTranslator(Protocol):
    """Rewrites the service's OpenAI SSE blocks into another wire format."""

    @property
    def ended(self) -> bool:
        """True once the output is complete (after the last block fed)."""
        ...

    def feed(self, block: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


async def send_stream(
    send: Send,
    headers: Headers,
    streaming: StreamingCompletion,
    watch: DisconnectWatch,
    request_id: str,
    translator: StreamTranslator | None = None,
    ended: Callable[[], bool] | None = None,
) -> None:
    """Send the 200 and relay the stream, one client write per service block.

    Without a translator the OpenAI bytes go out untouched (the common, fast case). The
    last block carries the end of the response in the same write: a chat stream's ends in
    `[DONE]`, a translated one's when its translator says so, and a stream without a marker
    of its own (Responses) says it through `ended`, true once its relay handed over its last
    block (otherwise the end would cost a write of its own, and the client a read).
    """
    headers.extend(SSE_HEADERS)
    add_result_headers(
        headers,
        streaming.deployment,
        streaming.attempts,
        streaming.fallback_reason,
        gate=streaming.gate,
    )
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    chunks = streaming.chunks
    try:
        async for chunk in chunks:
            if translator is None:
                out, last = chunk, chunk.endswith(DONE) if ended is None else ended()
            else:
                out, last = translator.feed(chunk), translator.ended
            if last:
                # The last chunk closes the response in the same write; the watch must
                # stop first, as uvicorn reports a disconnect once a response is done.
                watch.stop()
                await send({"type": "http.response.body", "body": out})
                break
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
        else:
            watch.stop()
            tail = translator.finish() if translator is not None else b""
            await send({"type": "http.response.body", "body": tail})
    except OSError as exc:
        # Headers are out: nothing left to tell a client that has gone away.
        log.info("client left mid-stream (%s): %s", request_id, exc)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
