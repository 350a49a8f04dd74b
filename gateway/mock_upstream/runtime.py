"""Request plumbing shared by the OpenAI and Anthropic wire modules.

A handler builds a :class:`Call` with :func:`begin` (auth, JSON, directives), lets
:func:`gate` apply the pre-answer faults (hang, latency, injected statuses, context
length), then answers.  Early answers travel as a :class:`Reply` exception so the happy
path stays a straight line; :func:`handler` turns them back into responses.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from aiohttp import web

from .behaviour import Behaviour, DirectiveError, resolve, split_model
from .stats import UNKNOWN_MODEL, Stats

__all__ = [
    "STATE",
    "Call",
    "Reply",
    "SimState",
    "begin",
    "gate",
    "handler",
    "new_id",
    "now",
    "pump",
]

Flavor = Literal["openai", "anthropic"]
JSON_TYPE = "application/json"
_HANG_POLL_S = 0.25
_HANG_LIMIT_S = 3600.0

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


class SimState:
    """Per-application mutable state: counters, fail-first bookkeeping, seeded RNG."""

    def __init__(self, require_key: str | None, seed: int) -> None:
        self.require_key = require_key
        self.bearer = f"Bearer {require_key}" if require_key else None
        self.seed = seed
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.fail_counts: dict[tuple[str, str], int] = {}

    def reset(self) -> None:
        self.stats.reset()
        self.fail_counts.clear()
        self.rng.seed(self.seed)


STATE: web.AppKey[SimState] = web.AppKey("mock_upstream_state", SimState)


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def now() -> int:
    return int(time.time())


class Reply(Exception):  # noqa: N818 - control flow, not an error condition
    """Carries an early response out of nested helpers."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__()
        self.response = response


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


class Call:
    """One request being answered."""

    __slots__ = (
        "base",
        "behaviour",
        "body",
        "endpoint",
        "flavor",
        "headers",
        "model",
        "request",
        "state",
        "stream",
    )

    def __init__(self, request: web.Request, state: SimState, endpoint: str, flavor: Flavor):
        self.request = request
        self.state = state
        self.endpoint = endpoint
        self.flavor = flavor
        self.model = ""
        self.base = UNKNOWN_MODEL
        self.stream = False
        self.body: dict[str, Any] = {}
        self.behaviour: Behaviour = resolve("", "")
        rid = new_id("req_")
        self.headers: dict[str, str] = {"x-request-id": rid}
        if flavor == "anthropic":
            self.headers["request-id"] = rid

    def _apply_retry_after(self) -> None:
        seconds = self.behaviour.retry_after
        if seconds is not None:
            whole = int(seconds)
            self.headers["retry-after"] = str(whole) if whole == seconds else str(seconds)
            self.headers["retry-after-ms"] = str(round(seconds * 1000))

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> Reply:
        """Record and build an error reply in this endpoint's wire format (raise it)."""
        self.state.stats.served(self.base, status, self.stream)
        if self.flavor == "openai":
            body = openai_error_body(status, message, code=code, param=param)
        else:
            body = anthropic_error_body(status, message)
        response = web.Response(
            status=status, body=orjson.dumps(body), content_type=JSON_TYPE, headers=self.headers
        )
        return Reply(response)

    def json(self, payload: Any) -> web.Response:
        """Record and build a 200 JSON answer."""
        self.state.stats.served(self.base, 200, self.stream)
        return web.Response(body=orjson.dumps(payload), content_type=JSON_TYPE, headers=self.headers)


def _authorised(call: Call) -> bool:
    state = call.state
    if state.require_key is None:
        return True
    if call.flavor == "anthropic":
        return call.request.headers.get("x-api-key") == state.require_key
    return call.request.headers.get("Authorization") == state.bearer


async def begin(request: web.Request, endpoint: str, flavor: Flavor) -> Call:
    """Parse and authenticate a request; raise :class:`Reply` on 400/401."""
    state = request.app[STATE]
    state.stats.endpoint(endpoint)
    call = Call(request, state, endpoint, flavor)
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    directive_error: DirectiveError | None = None
    if isinstance(body, dict):
        call.body = body
        call.stream = body.get("stream") is True
        model = body.get("model")
        if isinstance(model, str) and model:
            call.model = model
            base, suffix = split_model(model)
            call.base = base
            try:
                call.behaviour = resolve(suffix, request.headers.get("x-mock-behavior", ""))
            except DirectiveError as exc:
                directive_error = exc
            call._apply_retry_after()
    if not _authorised(call):
        if flavor == "anthropic":
            raise call.error(401, "invalid x-api-key")
        raise call.error(401, code="invalid_api_key")
    if not isinstance(body, dict):
        raise call.error(400, "We could not parse the JSON body of your request.")
    if directive_error is not None:
        raise call.error(400, str(directive_error), code="invalid_mock_directive", param="model")
    if not call.model:
        message = "model: field required" if flavor == "anthropic" else "you must provide a model"
        raise call.error(400, message, param="model")
    return call


async def _hang(call: Call) -> Reply:
    call.state.stats.served(call.base, "hang", call.stream)
    call.state.stats.fault("hang")
    request = call.request
    deadline = time.monotonic() + _HANG_LIMIT_S
    # Polling, rather than relying on handler cancellation, keeps a hung request from
    # outliving its client even when the runner was built without handler_cancellation.
    while time.monotonic() < deadline:
        await asyncio.sleep(_HANG_POLL_S)
        transport = request.transport
        if transport is None or transport.is_closing():
            break
    return Reply(web.Response(status=504, headers=call.headers))


async def gate(call: Call, prompt_tokens: int) -> None:
    """Pre-answer behaviour: hang, latency + jitter, injected failures, context length."""
    b = call.behaviour
    if b.hang:
        raise await _hang(call)
    delay = b.latency
    if b.jitter:
        delay += call.state.rng.uniform(0.0, b.jitter)
    if delay > 0:
        await asyncio.sleep(delay / 1000.0)
    status = _injected_status(call)
    if status is not None:
        raise call.error(status)
    if b.context_window is not None:
        if prompt_tokens <= b.context_window:
            return
        window = b.context_window
    elif b.context_length:
        window = max(0, prompt_tokens - 1)
    else:
        return
    if call.flavor == "anthropic":
        raise call.error(400, f"prompt is too long: {prompt_tokens} tokens > {window} maximum")
    raise call.error(
        400,
        f"This model's maximum context length is {window} tokens. "
        f"However, your messages resulted in {prompt_tokens} tokens.",
        code="context_length_exceeded",
        param="messages",
    )


def _injected_status(call: Call) -> int | None:
    b = call.behaviour
    failing = b.failure_status
    if failing == 200:
        return None
    if b.fail_first is not None:
        key = (call.base, b.canonical)
        seen = call.state.fail_counts.get(key, 0)
        if seen < b.fail_first:
            call.state.fail_counts[key] = seen + 1
            return failing
        return None
    if b.fail_rate is not None:
        return failing if call.state.rng.random() < b.fail_rate else None
    return b.status


async def pace_non_stream(call: Call, completion_tokens: int) -> None:
    """Non-stream answers wait ``ttft`` plus generation time at ``tps``."""
    b = call.behaviour
    delay = b.ttft / 1000.0
    if b.tps:
        delay += completion_tokens / b.tps
    if delay > 0:
        await asyncio.sleep(delay)


async def pump(
    call: Call,
    head: bytes,
    body: list[bytes],
    tail: bytes,
    *,
    error_event: bytes,
    malformed_event: bytes,
    on_delivered: Callable[[], None] | None,
    pre_content_tokens: int = 0,
) -> web.StreamResponse:
    """Send an SSE stream: ``head``, one ``body`` item per token step, then ``tail``.

    Applies ``ttft``/``tps`` pacing and the stream faults.  ``on_delivered`` runs once the
    tail (which carries usage, if any) has been handed to the transport.
    """
    b = call.behaviour
    call.state.stats.served(call.base, 200, call.stream)
    response = web.StreamResponse(headers=call.headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(call.request)
    stats = call.state.stats
    try:
        first_delay = b.ttft / 1000.0
        if b.tps:
            first_delay += pre_content_tokens / b.tps
        if first_delay > 0:
            await asyncio.sleep(first_delay)
        if b.malformed:
            stats.fault("malformed")
            await response.write(head + malformed_event)
            await response.write_eof()
            return response
        limit = len(body)
        cut = b.cut_after is not None and b.cut_after <= limit
        failing = not cut and b.midstream_error is not None and b.midstream_error <= limit
        if cut:
            limit = b.cut_after or 0
        elif failing:
            limit = b.midstream_error or 0
        if b.tps:
            if head:
                await response.write(head)
            start = time.monotonic()
            interval = 1.0 / b.tps
            for i in range(limit):
                wait = start + i * interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await response.write(body[i])
            prefix = b""
        else:
            prefix = head + b"".join(body[:limit])
        if cut:
            if prefix:
                await response.write(prefix)
            stats.fault("cut")
            transport = call.request.transport
            if transport is not None:
                # abort() drops the connection without the terminating zero-length chunk,
                # which is what a provider crash looks like to an HTTP client.
                transport.abort()
            return response
        if failing:
            stats.fault("midstream_error")
            await response.write(prefix + error_event)
            await response.write_eof()
            return response
        await response.write(prefix + tail)
        if on_delivered is not None:
            on_delivered()
        await response.write_eof()
    except ConnectionResetError:
        pass
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handler(func: Handler) -> Handler:
    """Turn :class:`Reply` escapes into responses."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await func(request)
        except Reply as reply:
            return reply.response

    wrapped.__name__ = func.__name__
    wrapped.__doc__ = func.__doc__
    return wrapped


async def truncated_json(call: Call, payload: bytes) -> web.StreamResponse:
    """``cut_after`` on a non-stream answer: headers promise the full body, half arrives."""
    call.state.stats.served(call.base, 200, call.stream)
    call.state.stats.fault("cut")
    response = web.StreamResponse(headers=call.headers)
    response.content_type = JSON_TYPE
    response.content_length = len(payload)
    await response.prepare(call.request)
    try:
        await response.write(payload[: len(payload) // 2])
    except ConnectionResetError:
        return response
    transport = call.request.transport
    if transport is not None:
        transport.abort()
    return response


def malformed_json(call: Call, payload: bytes) -> web.Response:
    """``malformed`` on a non-stream answer: a 200 whose JSON body is cut short."""
    call.state.stats.served(call.base, 200, call.stream)
    call.state.stats.fault("malformed")
    return web.Response(
        body=payload[: max(1, len(payload) // 2)], content_type=JSON_TYPE, headers=call.headers
    )
