"""The Responses API (`/v1/responses…`), as plain ASGI.

`POST /v1/responses` is routed, limited, cached, drilled, failed over and metered like a
chat call (gateway/api/call.py); which deployments can serve it and how (native or
translated) is the provider bridge's business. Farebox owns the conversation: with
`store` (the API's default) each answer and its whole input go to the conversation store
before the client sees the answer, so `previous_response_id` works on the next turn
whichever deployment or replica serves it. Also served: retrieve, delete, input items
and input-token counts of a stored or proposed request.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

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
    workflow_tag,
)
from gateway.api.responses_input import (
    as_items,
    bad,
    check_responses,
)
from gateway.api.validate import parse_object
from gateway.conversations.items import conversation
from gateway.conversations.policy import store_wanted
from gateway.conversations.store import ResponseStore, StoredResponse, page_input_items
from gateway.core.metering import CallContext
from gateway.errors import NotFound
from gateway.keys.auth import Principal
from gateway.ledger.tokens import estimate_input_tokens
from gateway.state import GatewayState
from routing.model import Plan
from routing.responses_tools import built_in_tools, runs_tools

ENDPOINT = "responses"
_CREATE = frozenset({"/v1/responses", "/responses"})
_COUNT = frozenset({"/v1/responses/input_tokens", "/responses/input_tokens"})
_ONE = re.compile(r"^(?:/v1)?/responses/([^/]+)(/input_items|/cancel)?$")


class ResponsesEndpoints:
    # The paths it serves exactly; `handles` says yes to these and to `_ONE`'s.
    paths = _CREATE | _COUNT

    def __init__(self, state: Callable[[], GatewayState]) -> None:
        self._state = state

    def handles(self, path: str) -> bool:
        return path in _CREATE or path in _COUNT or _ONE.match(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        headers: Headers = [(b"x-request-id", request_id.encode())]
        path: str = scope["path"]
        if scope["method"] == "POST" and path in _CREATE:
            # The hot path, one coroutine like chat's (`_handle` serves everything else).
            work = self._create(scope, receive, send, request_id, headers)
        else:
            work = self._handle(scope, receive, send, request_id, headers)
        await guarded(send, headers, request_id, path, work)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, headers: Headers
    ) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        state = self._state()
        principal = await authenticate(scope, state)
        if path in _CREATE or path in _COUNT:
            if method != "POST":
                raise method_not_allowed(method, path)
            server = state.config.server
            body = await read_body(scope, receive, server.max_body_bytes, server.body_timeout_s)
            payload = parse_object(body, server)
            if path in _COUNT:
                await self._count(send, headers, state, principal, payload)
                return
            raise AssertionError("__call__ hands POST /v1/responses to _create")
        match = _ONE.match(path)
        assert match is not None
        response_id, tail = match.group(1), match.group(2)
        key_id = principal.key_name if principal is not None else None
        if tail == "/cancel":
            raise bad(
                "Only background responses can be cancelled, and this gateway does not run "
                "responses in the background.",
                None,
            )
        store = _store(state, response_id)
        if tail == "/input_items":
            if method != "GET":
                raise method_not_allowed(method, path, "GET")
            stored = await _found(store, response_id, key_id)
            listing = _input_items_page(stored, scope)
            headers.append(JSON_TYPE)
            await send_bytes(send, 200, orjson.dumps(listing), headers)
            return
        if method == "GET":
            stored = await _found(store, response_id, key_id)
            headers.append(JSON_TYPE)
            await send_bytes(send, 200, orjson.dumps(stored.response), headers)
            return
        if method == "DELETE":
            if not await store.delete(response_id, key_id):
                raise _not_found(response_id)
            headers.append(JSON_TYPE)
            deleted = {"id": response_id, "object": "response", "deleted": True}
            await send_bytes(send, 200, orjson.dumps(deleted), headers)
            return
        raise method_not_allowed(method, path, "GET, DELETE")

    async def _create(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        headers: Headers,
    ) -> None:
        """One `POST /v1/responses`."""
        state = self._state()
        principal = await authenticate(scope, state)
        server = state.config.server
        body = await read_body(scope, receive, server.max_body_bytes, server.body_timeout_s)
        payload = parse_object(body, server)
        model, stream = check_responses(payload)
        key_id = principal.key_name if principal is not None else None
        previous: StoredResponse | None = None
        previous_id = payload.get("previous_response_id")
        given = payload.get("input")
        if isinstance(previous_id, str):
            previous = await _found(
                _store(state, previous_id, "previous_response_id"),
                previous_id,
                key_id,
                "previous_response_id",
            )
            items: list[dict[str, Any]] | None = [
                *conversation(previous.input_items, previous.response),
                *as_items(given),
            ]
        elif given.__class__ is list:
            items = given  # objects only (check_responses): the conversation as it is
        elif given.__class__ is str:
            # One user message, as every upstream reads a string input: left as sent, and
            # made an item only for the conversation store (`_Record`).
            items = None
        else:
            items = as_items(given)
        # The whole conversation is the input; previous_response_id stays only to be echoed
        # (no upstream is sent it: gateway/providers/responses_bridge.py). The body is ours
        # (parsed here) and read no more as the client sent it: changed in place, not copied.
        if items is not None and items is not given:
            payload["input"] = items
        ctx = CallContext(request_id, key_id, ENDPOINT, model, stream, payload)
        ctx.workflow_id = (
            workflow_tag(scope, payload)
            or (previous.workflow_id if previous is not None else None)
            or request_id
        )
        call = await Call.begin(state, scope, headers, principal, ctx, len(body), ENDPOINT)
        try:
            # Not stored when the client says so and continues nothing: whatever the gateway
            # and the route allow, `store: false` has the last word (`store_wanted`).
            keep = (
                False
                if previous is None and payload.get("store") is False
                else _keeps(state, payload, call.plan, previous is not None)
            )
            payload["store"] = keep  # what the answer says about itself
            if "tools" in payload:
                call.plan = _with_built_in_tools(state, ctx, call.plan, payload)
            record = (
                _Record(state, ctx, previous_id, items if items is not None else as_items(given))
                if keep
                else None
            )
            with DisconnectWatch(receive) as watch:
                if stream:
                    streaming = await call.stream(True)
                    if record is not None:
                        streaming.chunks = record.after_stream(streaming.chunks)
                    await send_stream(
                        send, headers, streaming, watch, request_id, ended=ctx.stream_ended_now
                    )
                    return
                result = await call.complete()
                watch.stop()
                call.answered(result)
                body = result.body
                if record is not None and not await record.save(orjson.loads(body)):
                    headers.append((b"x-farebox-stored", b"false"))
                headers.append(JSON_TYPE)
                add_result_headers(
                    headers,
                    result.deployment,
                    result.attempts,
                    result.fallback_reason,
                    result.cost_usd,
                    result.gate,
                )
                await send_bytes(send, 200, body, headers)
        finally:
            call.settle_leftover()

    async def _count(
        self,
        send: Send,
        headers: Headers,
        state: GatewayState,
        principal: Principal | None,
        payload: dict[str, Any],
    ) -> None:
        """`POST /v1/responses/input_tokens`: the request's input tokens, estimated the way
        the ledger estimates them (tiktoken for OpenAI-family models); no upstream call."""
        model, _ = check_responses(payload)
        items = as_items(payload.get("input"))
        previous_id = payload.get("previous_response_id")
        if isinstance(previous_id, str):
            key_id = principal.key_name if principal is not None else None
            previous = await _found(
                _store(state, previous_id, "previous_response_id"),
                previous_id,
                key_id,
                "previous_response_id",
            )
            items = [
                *conversation(previous.input_items, previous.response),
                *as_items(payload.get("input")),
            ]
        plan = state.index.plan(model)
        upstream = plan.attempts[0].deployment.upstream_model if plan and plan.attempts else model
        counted = {**payload, "input": items}
        tokens = estimate_input_tokens(ENDPOINT, counted, upstream)
        headers.append(JSON_TYPE)
        body = {"object": "response.input_tokens", "input_tokens": tokens}
        await send_bytes(send, 200, orjson.dumps(body), headers)


def _keeps(state: GatewayState, payload: dict[str, Any], plan: Plan, continues: bool) -> bool:
    """Whether this answer goes to the conversation store: the request's `store`
    (default true), unless the gateway or the route keeps no responses."""
    config = state.config
    route = config.routes.get(plan.route)
    route_policy = route.responses if route is not None else None
    if route_policy is not None and route_policy.store is False and continues:
        raise bad(
            f"Route {plan.route!r} keeps no responses (responses: {{store: false}}), so "
            "previous_response_id cannot be used on it; send the whole conversation "
            "as input instead.",
            "previous_response_id",
        )
    requested = payload.get("store")
    return store_wanted(
        requested if isinstance(requested, bool) else None,
        route_policy,
        config.responses,
        available=state.responses is not None,
    )


def _with_built_in_tools(
    state: GatewayState, ctx: CallContext, plan: Plan, payload: dict[str, Any]
) -> Plan:
    """Only native deployments that run every built-in tool the request names can serve
    it; when none is left the client gets a 400 naming the tools (and the ledger one
    request row, no attempt) — never an answer that silently ignored them."""
    needed = built_in_tools(payload)
    if not needed:
        return plan
    kept = tuple(a for a in plan.attempts if runs_tools(a.deployment, needed))
    if len(kept) == len(plan.attempts):
        return plan
    if not kept:
        names = ", ".join(sorted(needed))
        state.service.meter.finish(ctx, plan, 400, "unsupported_tool", None)
        raise bad(
            f"No deployment of route {plan.route!r} runs the built-in tool(s) {names}; "
            "they are served only by providers with responses_api: true that list them "
            "in builtin_tools.",
            "tools",
            "unsupported_tool",
        )
    return dataclasses.replace(plan, attempts=kept)


class _Record:
    """Puts one answer in the conversation store."""

    __slots__ = ("ctx", "items", "previous_id", "state")

    def __init__(
        self,
        state: GatewayState,
        ctx: CallContext,
        previous_id: Any,
        items: list[dict[str, Any]],
    ) -> None:
        self.state, self.ctx, self.items = state, ctx, items
        self.previous_id = previous_id if isinstance(previous_id, str) else None

    async def save(self, response: dict[str, Any]) -> bool:
        store = self.state.responses
        response_id = response.get("id")
        if store is None or not isinstance(response_id, str):
            return False
        now = datetime.now(UTC)
        return await store.save(
            StoredResponse(
                id=response_id,
                request_id=self.ctx.request_id,
                key_id=self.ctx.key_id,
                workflow_id=self.ctx.workflow_id,
                previous_response_id=self.previous_id,
                model=str(response.get("model") or self.ctx.requested_model),
                status=str(response.get("status") or "completed"),
                created_at=now,
                expires_at=store.expiry(now),
                input_items=self.items,
                response=response,
            )
        )

    async def after_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay `chunks`, storing the final Response before the read that carries its
        terminal event reaches the client: once a client has seen `response.completed`,
        its id can be continued."""
        saved = False
        try:
            async for chunk in chunks:
                final = self.ctx.final_response
                if final is not None and not saved:
                    saved = True
                    await self.save(final)
                yield chunk
        finally:
            # The client write of the last block ends the relay early (send_stream stops
            # reading): close the relay now, which returns its upstream connection, rather
            # than whenever the abandoned generator is collected.
            await chunks.aclose()  # type: ignore[attr-defined]


def _store(state: GatewayState, response_id: str, param: str | None = None) -> ResponseStore:
    """The conversation store. A gateway without a database keeps no responses — a setting,
    not an outage, so not a 503 the SDKs would retry: a continuation is a 400, a lookup a 404."""
    if state.responses is None:
        if param is not None:
            raise bad(
                f"This gateway keeps no responses (it runs without a database), so "
                f"previous_response_id {response_id!r} cannot be continued; send the whole "
                "conversation as input.",
                param,
                "previous_response_not_found",
            )
        raise _not_found(response_id)
    return state.responses


async def _found(
    store: ResponseStore, response_id: str, key_id: str | None, param: str | None = None
) -> StoredResponse:
    stored = await store.get(response_id, key_id)
    if stored is None:
        if param is not None:
            raise bad(
                f"Previous response with id {response_id!r} not found: it was stored with "
                "store: false, by another key, or has expired.",
                param,
                "previous_response_not_found",
            )
        raise _not_found(response_id)
    return stored


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"No response found with id {response_id!r}.", code="not_found")


def _input_items_page(stored: StoredResponse, scope: Scope) -> dict[str, Any]:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    after = query.get("after", [None])[0]
    order = query.get("order", ["desc"])[0]
    if order not in ("asc", "desc"):
        raise bad("order must be 'asc' or 'desc'.", "order")
    try:
        limit = int(query.get("limit", ["20"])[0])
    except ValueError:
        raise bad("limit must be an integer from 1 to 100.", "limit") from None
    if not 1 <= limit <= 100:
        raise bad("limit must be an integer from 1 to 100.", "limit")
    data, has_more = page_input_items(stored.input_items, after=after, limit=limit, order=order)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id", "") if data else "",
        "last_id": data[-1].get("id", "") if data else "",
        "has_more": has_more,
    }
