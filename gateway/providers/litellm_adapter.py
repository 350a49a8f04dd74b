"""Providers that don't speak the OpenAI protocol (Anthropic, Gemini, Bedrock, Azure,
Vertex AI…), translated by litellm and normalized by gateway.providers.normalize.

litellm costs seconds and hundreds of MB to import, so this module imports it only when
an adapter is built, which gateway.state does only when the config has such a provider.
Farebox owns retries, fallbacks, logging and cost, so all of litellm's are switched off.
The answer is re-encoded as OpenAI JSON / SSE bytes, which lets the service, the stream
relay and the meter treat these deployments exactly like OpenAI-protocol ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.observability.redact import register_credentials, scrub
from gateway.providers import normalize
from gateway.providers.base import (
    CONNECT,
    CUT,
    MALFORMED,
    STATUS,
    STREAM_ERROR,
    TIMEOUT,
    UpstreamError,
    UpstreamReply,
    unsupported_message,
)
from routing.model import DeploymentSpec, Timeouts

log = logging.getLogger(__name__)

# The protocols this adapter is tested against; litellm knows more, and config accepts
# any litellm provider name (see config_schema), but these are the ones we vouch for.
TESTED_PROTOCOLS = ("anthropic", "gemini", "bedrock", "azure", "vertex_ai")

# OpenAI chat parameters handed to litellm; anything else in a client's body is dropped
# rather than forwarded, because litellm passes unknown keyword arguments on to the
# provider as-is and they would come back as 400s from a provider that never heard of them.
_CHAT_PARAMS = frozenset(
    {
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "stream",
        "stream_options",
        "n",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "user",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "reasoning_effort",
        "thinking",
    }
)
_SSE_DONE = b"data: [DONE]\n\n"
_CHAT = "chat/completions"
_CONNECT_ERRORS = (
    "ConnectError",
    "ClientConnectorError",
    "ClientConnectionError",
    "ConnectionRefusedError",
    "ServerDisconnectedError",
    "ClientOSError",
    "gaierror",
)
_TIMEOUT_ERRORS = ("Timeout", "TimeoutError", "ReadTimeout", "ConnectTimeout", "APITimeoutError")


def load_litellm() -> Any:
    """Import litellm configured for use as a translation library only."""
    # Never fetch the price map from the internet at import (we run offline, and prices
    # must not change under a running gateway).
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    # litellm's own types trip a pydantic warning on first use; it says nothing about ours.
    warnings.filterwarnings("ignore", message=r".*is using the `ReadOnly` qualifier")
    import litellm

    litellm.suppress_debug_info = True
    litellm.set_verbose = False  # type: ignore[attr-defined]
    litellm.turn_off_message_logging = True
    litellm.disable_streaming_logging = True
    litellm.num_retries = 0
    litellm.callbacks = []
    litellm.success_callback = []
    litellm.failure_callback = []
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return litellm


class LitellmProvider:
    """One configured provider reached through litellm."""

    __slots__ = ("api_base", "api_key", "headers", "name", "options", "protocol")

    def __init__(
        self,
        name: str,
        protocol: str,
        api_base: str | None,
        api_key: str | None,
        headers: Mapping[str, str],
        options: Mapping[str, Any],
    ) -> None:
        self.name = name
        self.protocol = protocol
        self.api_base = api_base.rstrip("/") if api_base else None
        self.api_key = api_key or None
        self.headers = {k: v for k, v in headers.items() if v}
        self.options = dict(options)
        register_credentials(self.api_key, self.headers, self.options)


class LitellmAdapter:
    def __init__(self, providers: Mapping[str, LitellmProvider]) -> None:
        self._providers = dict(providers)
        self._litellm = load_litellm()
        import httpx  # litellm's own HTTP client; already imported by litellm

        self._httpx = httpx

    async def close(self) -> None:
        return None  # litellm owns (and caches) its HTTP clients for the process

    def supports(self, deployment: DeploymentSpec, endpoint: str) -> bool:
        return endpoint == _CHAT  # embeddings and legacy completions need the OpenAI protocol

    def _kwargs(
        self,
        deployment: DeploymentSpec,
        payload: Mapping[str, Any],
        timeouts: Timeouts,
        allowed: frozenset[str],
        stream: bool,
    ) -> dict[str, Any]:
        provider = self._providers[deployment.provider]
        kwargs = {k: v for k, v in payload.items() if k in allowed}
        kwargs.update(provider.options)
        kwargs["model"] = f"{provider.protocol}/{deployment.upstream_model}"
        if provider.api_base:
            kwargs["api_base"] = provider.api_base
        if provider.api_key:
            kwargs["api_key"] = provider.api_key
        if provider.headers:
            kwargs["extra_headers"] = dict(provider.headers)
        # Streams: after the first byte the longest silence allowed is idle_ms (the
        # caller bounds the first read by TTFT); non-stream: only the total applies.
        read_s = max(timeouts.idle_ms, timeouts.ttft_ms) if stream else timeouts.total_ms
        kwargs["timeout"] = self._httpx.Timeout(read_s / 1000, connect=timeouts.connect_ms / 1000)
        kwargs["num_retries"] = 0
        kwargs["max_retries"] = 0
        # A client's OpenAI parameter the provider lacks (seed, logprobs…) is dropped, not
        # a 400: failing over to another provider must not break a working request.
        kwargs["drop_params"] = True
        return kwargs

    async def call(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamReply:
        if endpoint != _CHAT:  # the service asks `supports` first; this is a backstop
            raise _unsupported(deployment, endpoint)
        kwargs = self._kwargs(deployment, payload, timeouts, _CHAT_PARAMS, stream=False)
        kwargs["_skip_mcp_handler"] = True  # else tools make litellm import its MCP server
        try:
            response = await self._litellm.acompletion(**kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # litellm raises its own, openai and httpx errors: all mapped
            raise upstream_error(exc, deployment.id) from None
        try:
            data = normalize.response(response.model_dump())
        except Exception:  # any surprise in litellm's object: a malformed answer
            log.exception("litellm answer from %s could not be normalized", deployment.id)
            raise UpstreamError(MALFORMED, f"{deployment.id} sent an unusable answer") from None
        return UpstreamReply(
            200, orjson.dumps(data), data, _request_id(response), _limits(response)
        )

    async def open_stream(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> LitellmStream:
        if endpoint != _CHAT:  # the service asks `supports` first; this is a backstop
            raise _unsupported(deployment, endpoint)
        kwargs = self._kwargs(deployment, payload, timeouts, _CHAT_PARAMS, stream=True)
        kwargs["_skip_mcp_handler"] = True
        kwargs["stream"] = True
        try:
            wrapper = await self._litellm.acompletion(**kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # litellm raises its own, openai and httpx errors: all mapped
            raise upstream_error(exc, deployment.id) from None
        stream = LitellmStream(deployment.id, wrapper, _request_id(wrapper), timeouts.idle_ms)
        stream.limits = _limits(wrapper)
        return stream


class LitellmStream:
    """litellm's chunk objects re-encoded as the OpenAI SSE stream the relay expects."""

    __slots__ = ("_deployment", "_idle_s", "_wrapper", "limits", "request_id")

    def __init__(self, deployment: str, wrapper: Any, request_id: str | None, idle_ms: int) -> None:
        self._deployment = deployment
        self._wrapper = wrapper
        self._idle_s = idle_ms / 1000
        self.request_id = request_id
        self.limits: Mapping[str, str] | None = None

    async def blocks(self) -> AsyncIterator[bytes]:
        """Raises UpstreamError like the OpenAI stream does: a provider's error before
        any content as the status error it is (some providers only send it once the
        stream is read), after content as a stream error, and a stream that ends with
        neither a finish reason nor usage as cut (litellm swallows unparseable streams)."""
        tool_calls_seen = finished = sent = False
        chunks = aiter(self._wrapper)
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UpstreamError(TIMEOUT, f"{self._deployment} went silent mid-stream") from None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # as above: upstream_error() maps them
                if not sent:
                    raise upstream_error(exc, self._deployment) from None
                raise _stream_failure(exc, self._deployment) from None
            out = []
            for event in normalize.chunks(chunk.model_dump()):
                tool_calls_seen = tool_calls_seen or normalize.has_tool_calls(event)
                normalize.fix_tool_finish(event, tool_calls_seen)
                finished = finished or "usage" in event or normalize.has_finish(event)
                out.append(b"data: " + orjson.dumps(event) + b"\n\n")
            if out:
                sent = True
                yield b"".join(out)
        if not finished:
            raise UpstreamError(CUT, f"{self._deployment} ended the stream without finishing")
        yield _SSE_DONE

    async def close(self) -> None:
        try:
            await self._wrapper.aclose()
        except Exception:  # closing a broken stream must not mask why it broke
            log.debug("closing litellm stream of %s failed", self._deployment, exc_info=True)


def _request_id(response: Any) -> str | None:
    hidden = getattr(response, "_hidden_params", None)
    headers = hidden.get("additional_headers") if isinstance(hidden, dict) else None
    if not isinstance(headers, dict):
        return None
    for name in (
        "llm_provider-x-request-id",
        "llm_provider-request-id",
        "llm_provider-x-amzn-requestid",
        "llm_provider-apim-request-id",
    ):
        value = headers.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _limits(response: Any) -> dict[str, str] | None:
    """Rate-limit headers in OpenAI's names, from OpenAI-style providers (Azure) or
    Anthropic's `anthropic-ratelimit-*` (reset as an RFC 3339 time), so routing learns
    limits the same way whatever the protocol."""
    hidden = getattr(response, "_hidden_params", None)
    headers = hidden.get("additional_headers") if isinstance(hidden, dict) else None
    if not isinstance(headers, dict):
        return None
    out: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"llm_provider-x-ratelimit-remaining-{kind}")
        reset = headers.get(f"llm_provider-x-ratelimit-reset-{kind}")
        if remaining is None:
            remaining = headers.get(f"llm_provider-anthropic-ratelimit-{kind}-remaining")
            reset = _seconds_until(headers.get(f"llm_provider-anthropic-ratelimit-{kind}-reset"))
        if remaining is not None:
            out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        if reset is not None:
            out[f"x-ratelimit-reset-{kind}"] = str(reset)
    return out or None


def _seconds_until(stamp: Any) -> str | None:
    if not isinstance(stamp, str):
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return f"{max(0.0, (when - datetime.now(UTC)).total_seconds()):.3f}s"


def _unsupported(deployment: DeploymentSpec, endpoint: str) -> UpstreamError:
    return UpstreamError(
        STATUS,
        f"{deployment.id} does not serve /{endpoint}",
        status=400,
        body={
            "error": {
                "message": unsupported_message(deployment, endpoint),
                "type": "invalid_request_error",
                "param": None,
                "code": "unsupported_endpoint",
            }
        },
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        # litellm wraps stream errors in MidStreamFallbackError(original_exception=...)
        wrapped = getattr(current, "original_exception", None)
        current = (
            wrapped
            if isinstance(wrapped, BaseException)
            else current.__cause__ or current.__context__
        )


def upstream_error(exc: BaseException, deployment: str) -> UpstreamError:
    """A litellm exception as an UpstreamError with the provider's real status.

    litellm flattens statuses (Anthropic's 529 arrives as 500) and reports connection
    failures as 500s, so the cause chain is read for what really happened.
    """
    chain = list(_chain(exc))
    names = [type(e).__name__ for e in chain]
    if any(name in _CONNECT_ERRORS for name in names[1:]):
        return UpstreamError(CONNECT, f"{deployment} unreachable: {names[-1]}")
    if any(name in _TIMEOUT_ERRORS for name in names):
        return UpstreamError(TIMEOUT, f"{deployment} timed out")
    status: int | None = None
    for link in chain[1:]:  # the provider-specific error keeps the real status
        code = getattr(link, "status_code", None)
        if isinstance(code, int) and 100 <= code < 600:
            status = code
            break
    if status is None:
        code = getattr(exc, "status_code", None)
        status = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
    # litellm messages quote upstream bodies and URLs (Gemini's carry `?key=`).
    message = scrub(str(getattr(exc, "message", None) or exc))
    headers = _headers(getattr(exc, "litellm_response_headers", None))
    error_type = headers.pop("x-amzn-errortype", None)
    if error_type:
        error_type = error_type.split(":", 1)[0]
    client_status, body = normalize.error(
        status,
        message,
        error_type=error_type,
        context_exceeded="ContextWindowExceeded" in "".join(names),
    )
    real = normalize.provider_status(status, error_type or _body_type(message)) or client_status
    request_id = headers.pop("request-id", None) or headers.pop("x-request-id", None)
    return UpstreamError(
        STATUS,
        f"{deployment} answered HTTP {real}",
        status=client_status,
        body=body,
        headers={k: v for k, v in headers.items() if k.startswith(("retry-after", "x-ratelimit-"))},
        request_id=request_id,
        upstream_status=real,
    )


def _body_type(message: str) -> str | None:
    body = normalize.embedded_body(message)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        kind = body["error"].get("type") or body["error"].get("status")
        return kind if isinstance(kind, str) else None
    return None


def _stream_failure(exc: BaseException, deployment: str) -> UpstreamError:
    """A failure while reading a stream: a provider's error event, a cut or a timeout."""
    error = upstream_error(exc, deployment)
    if error.kind != STATUS:
        return error if error.kind == TIMEOUT else UpstreamError(CUT, error.message)
    names = "".join(type(e).__name__ for e in _chain(exc))
    if "APIConnectionError" in names or "Payload" in str(exc) or "not completed" in str(exc):
        return UpstreamError(CUT, f"{deployment} stream broke")
    return UpstreamError(
        STREAM_ERROR,
        f"{deployment} reported an error mid-stream: {error.body['error']['message']}",
        status=error.status,
        body=error.body,
        request_id=error.request_id,
        upstream_status=error.upstream_status,
    )


def _headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    try:
        return {str(k).lower(): str(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        return {}
