"""Request plumbing shared by the wire modules (OpenAI, Azure, Anthropic, Gemini, Bedrock).

A handler builds a :class:`Call` with :func:`begin` (auth, JSON, directives), lets
:func:`gate` apply the pre-answer faults (hang, latency, injected statuses, context
length), then answers.  Early answers travel as a :class:`Reply` exception so the happy
path stays a straight line; :func:`handler` turns them back into responses.

The *flavor* of a call picks its auth header, error body and context-length wording:

* ``openai``: ``Authorization: Bearer KEY``; ``azure``: ``api-key: KEY`` (or a bearer);
* ``anthropic``: ``x-api-key: KEY``;
* ``gemini`` (Google AI Studio): ``x-goog-api-key: KEY`` or ``?key=KEY``;
* ``vertex``: ``Authorization: Bearer TOKEN`` where ``TOKEN`` was issued by the
  simulator's OAuth endpoint (``POST /token``) or is ``KEY`` itself;
* ``bedrock``: a SigV4 ``Authorization`` header whose access key id is ``KEY`` (the
  signature itself is not checked).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from aiohttp import web

from .behaviour import Behaviour, DirectiveError, resolve, split_model
from .errors import anthropic_error_body, bedrock_error, google_error_body, openai_error_body
from .gpu import Gpus, holding
from .prompt_cache import Prefix, PromptCaches
from .ratelimit import Admission, RateLimits
from .stats import UNKNOWN_MODEL, Stats

__all__ = [
    "JSON_TYPE",
    "STATE",
    "Call",
    "Flavor",
    "Reply",
    "SimState",
    "begin",
    "gate",
    "handler",
    "new_id",
    "now",
]

Flavor = Literal["openai", "azure", "anthropic", "gemini", "vertex", "bedrock"]
JSON_TYPE = "application/json"
_HANG_POLL_S = 0.25
_HANG_LIMIT_S = 3600.0


class SimState:
    """Per-application mutable state: counters, fail-first bookkeeping, seeded RNG,
    prompt caches and rate-limit windows."""

    def __init__(self, require_key: str | None, seed: int) -> None:
        self.require_key = require_key
        self.bearer = f"Bearer {require_key}" if require_key else None
        self.seed = seed
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.fail_counts: dict[tuple[str, str], int] = {}
        #: OAuth access tokens handed out by ``POST /token`` (accepted by Vertex routes).
        self.issued_tokens: set[str] = set()
        self.prompt_caches = PromptCaches()
        self.rate_limits = RateLimits()
        self.gpus = Gpus()

    def reset(self) -> None:
        self.stats.reset()
        self.fail_counts.clear()
        self.issued_tokens.clear()
        self.prompt_caches.clear()
        self.rate_limits.clear()
        self.gpus.reset()
        self.rng.seed(self.seed)


STATE: web.AppKey[SimState] = web.AppKey("mock_upstream_state", SimState)


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def now() -> int:
    return int(time.time())


class Reply(Exception):
    """Carries an early response out of nested helpers."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__()
        self.response = response


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
        elif flavor == "bedrock":
            self.headers["x-amzn-RequestId"] = rid
        elif flavor == "azure":
            self.headers["apim-request-id"] = rid

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
        headers = self.headers
        body: dict[str, Any]
        if self.flavor in ("openai", "azure"):
            body = openai_error_body(status, message, code=code, param=param)
        elif self.flavor == "anthropic":
            body = anthropic_error_body(status, message)
        elif self.flavor == "bedrock":
            body, kind = bedrock_error(status, message)
            if code is not None and code.endswith("Exception"):
                kind = code  # an AWS exception name chosen by the caller
            headers = {**headers, "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/"}
        else:
            body = google_error_body(status, message)
        response = web.Response(
            status=status, body=orjson.dumps(body), content_type=JSON_TYPE, headers=headers
        )
        return Reply(response)

    def credential(self) -> str:
        """The credential this request carried, as it arrived (for ``echo_key``)."""
        headers = self.request.headers
        for name in ("Authorization", "x-api-key", "api-key", "x-goog-api-key"):
            value = headers.get(name)
            if value:
                return f"{name}: {value}"
        key = self.request.query.get("key")
        return f"{self.request.url}" if key else "no credential"

    def error_message(self, default: str | None) -> str | None:
        """``default``, or with ``echo_key`` a message quoting the request's credential."""
        if not self.behaviour.echo_key:
            return default
        return f"{default or 'Request failed (simulated).'} You sent {self.credential()}."

    def prompt_cache(
        self, prompt_tokens: int, prefix: Prefix | None, *, bills_writes: bool
    ) -> tuple[int, int]:
        """``(cached, cache_write)`` from the directives and this model's prompt cache."""
        return self.state.prompt_caches.split(
            self.model, self.behaviour, prompt_tokens, prefix, bills_writes=bills_writes
        )

    def rate_limited(self, admission: Admission) -> Reply:
        """The 429 for a request the ``rpm``/``tpm`` limiter turned away (raise it)."""
        self.headers["retry-after"] = str(max(1, math.ceil(admission.wait)))
        self.headers["retry-after-ms"] = str(max(1, math.ceil(admission.wait * 1000)))
        # OpenAI's message names the limit; the other wires keep their stock wording.
        message = admission.message if self.flavor in ("openai", "azure") else None
        return self.error(429, message, code="rate_limit_exceeded")

    def json(self, payload: Any) -> web.Response:
        """Record and build a 200 JSON answer."""
        self.state.stats.served(self.base, 200, self.stream)
        return web.Response(
            body=orjson.dumps(payload), content_type=JSON_TYPE, headers=self.headers
        )


def _authorised(call: Call) -> bool:
    state = call.state
    key = state.require_key
    if key is None:
        return True
    headers = call.request.headers
    flavor = call.flavor
    if flavor == "anthropic":
        return headers.get("x-api-key") == key
    if flavor == "azure":
        return headers.get("api-key") == key or headers.get("Authorization") == state.bearer
    if flavor == "gemini":
        return key in (headers.get("x-goog-api-key"), call.request.query.get("key"))
    authorization = headers.get("Authorization", "")
    if flavor == "vertex":
        token = authorization.removeprefix("Bearer ")
        return token != authorization and (token == key or token in state.issued_tokens)
    if flavor == "bedrock":
        return f"Credential={key}/" in authorization
    return authorization == state.bearer


#: ``(status, message, code)`` of each flavor's answer to a bad credential.
_AUTH_FAILURE: dict[Flavor, tuple[int, str | None, str]] = {
    "openai": (401, None, "invalid_api_key"),
    "azure": (
        401,
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource.",
        "invalid_api_key",
    ),
    "anthropic": (401, "invalid x-api-key", "invalid_api_key"),
    # AI Studio really answers a bad key with 400 INVALID_ARGUMENT.
    "gemini": (400, "API key not valid. Please pass a valid API key.", "invalid_api_key"),
    "vertex": (401, None, "invalid_api_key"),
    "bedrock": (
        403,
        "The security token included in the request is invalid.",
        "UnrecognizedClientException",
    ),
}


async def begin(
    request: web.Request,
    endpoint: str,
    flavor: Flavor,
    *,
    model: str | None = None,
    stream: bool | None = None,
) -> Call:
    """Parse and authenticate a request; raise :class:`Reply` on 400/401.

    ``model`` and ``stream`` override the body's fields for wires that carry them in the
    URL (Gemini, Vertex AI, Bedrock, Azure deployments).
    """
    state = request.app[STATE]
    state.stats.endpoint(endpoint, request.headers.get("x-client-request-id"))
    call = Call(request, state, endpoint, flavor)
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    directive_error: DirectiveError | None = None
    if stream is not None:
        call.stream = stream
    if isinstance(body, dict):
        call.body = body
        if stream is None:
            call.stream = body.get("stream") is True
        if model is None:
            named = body.get("model")
            model = named if isinstance(named, str) else None
    if model:
        call.model = model
        base, suffix = split_model(model)
        call.base = base
        try:
            call.behaviour = resolve(suffix, request.headers.get("x-mock-behavior", ""))
        except DirectiveError as exc:
            directive_error = exc
        call._apply_retry_after()
    if not _authorised(call):
        status, message, code = _AUTH_FAILURE[flavor]
        raise call.error(status, call.error_message(message), code=code)
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
    """Pre-answer behaviour: hang, rate limits, latency + jitter, injected failures,
    context length."""
    b = call.behaviour
    if b.hang:
        raise await _hang(call)
    admission: Admission | None = None
    if b.rpm is not None or b.tpm is not None:
        # Admission is decided on arrival, as a provider's front door does; the 429 still
        # waits out the latency like every other answer.
        admission = call.state.rate_limits.admit(
            call.model, call.flavor, b.rpm, b.tpm, prompt_tokens
        )
        call.headers.update(admission.headers)
    if b.slots is not None and (admission is None or admission.admitted):
        # Held until the handler returns (see `handler`): the whole service time.
        await call.state.gpus.acquire(call.base, b.slots)
    delay = b.latency
    if b.jitter:
        delay += call.state.rng.uniform(0.0, b.jitter)
    if b.tail_rate is not None and call.state.rng.random() < b.tail_rate:
        delay += b.tail_ms
    if delay > 0:
        await asyncio.sleep(delay / 1000.0)
    if admission is not None and not admission.admitted:
        raise call.rate_limited(admission)
    status = _injected_status(call)
    if status is not None:
        raise call.error(status, call.error_message(None))
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
    if call.flavor in ("gemini", "vertex"):
        raise call.error(
            400,
            f"The input token count ({prompt_tokens}) exceeds the maximum number of tokens "
            f"allowed ({window}).",
        )
    if call.flavor == "bedrock":
        raise call.error(400, "Input is too long for requested model.")
    if call.endpoint.endswith("responses"):
        raise call.error(
            400,
            "Your input exceeds the context window of this model. "
            "Please adjust your input and try again.",
            code="context_length_exceeded",
            param="input",
        )
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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handler(func: Handler) -> Handler:
    """Turn :class:`Reply` escapes into responses; release the GPU slot (``slots=``) the
    request held, however it ended."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        with holding():
            try:
                return await func(request)
            except Reply as reply:
                return reply.response

    wrapped.__name__ = func.__name__
    wrapped.__doc__ = func.__doc__
    return wrapped
