"""Where routing meets I/O: runs a plan's attempts against upstream adapters.

Handlers in gateway.api call this module and never a provider directly; it turns upstream
failures into the client-facing errors of gateway.errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError, upstream_failed, upstream_timeout
from gateway.providers.base import (
    CONNECT,
    STATUS,
    STREAM_ERROR,
    TIMEOUT,
    UpstreamError,
    UpstreamStream,
)
from gateway.providers.openai_compat import OpenAICompatAdapter, ProviderEndpoint
from routing.model import Plan

DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Completion:
    body: bytes
    deployment: str
    attempts: int
    upstream_request_id: str | None
    usage: Mapping[str, Any] | None


@dataclass(slots=True)
class StreamingCompletion:
    deployment: str
    attempts: int
    upstream_request_id: str | None
    chunks: AsyncIterator[bytes]


class Service:
    def __init__(self, adapter: OpenAICompatAdapter) -> None:
        self._adapter = adapter

    @classmethod
    def from_providers(cls, providers: Mapping[str, ProviderEndpoint]) -> Service:
        return cls(OpenAICompatAdapter.create(providers))

    async def close(self) -> None:
        await self._adapter.close()

    async def complete(self, plan: Plan, endpoint: str, payload: dict[str, Any]) -> Completion:
        attempt = plan.attempts[0]
        deployment = attempt.deployment
        try:
            reply = await self._adapter.call(deployment, endpoint, payload, plan.timeouts)
        except UpstreamError as exc:
            raise client_error(exc, deployment.id) from None
        usage = reply.data.get("usage")
        return Completion(
            body=reply.raw,
            deployment=deployment.id,
            attempts=1,
            upstream_request_id=reply.request_id,
            usage=usage if isinstance(usage, dict) else None,
        )

    async def stream(
        self, plan: Plan, endpoint: str, payload: dict[str, Any], client_wants_usage: bool
    ) -> StreamingCompletion:
        """Open the upstream stream and read its first event before answering.

        Until the first byte reaches the client we can still return a proper HTTP error
        (or, later, fail over); after it, failures become an in-stream error event.
        """
        deployment = plan.attempts[0].deployment
        options = payload.get("stream_options")
        payload["stream_options"] = {**(options or {}), "include_usage": True}
        try:
            upstream = await self._adapter.open_stream(deployment, endpoint, payload, plan.timeouts)
        except UpstreamError as exc:
            raise client_error(exc, deployment.id) from None
        batches = upstream.batches()
        try:
            first = await anext(batches)
            _raise_if_error_event(first[0], deployment.id)
        except StopAsyncIteration:
            await upstream.close()
            raise upstream_failed(f"{deployment.id} ended the stream before any data") from None
        except UpstreamError as exc:
            await upstream.close()
            raise client_error(exc, deployment.id) from None
        return StreamingCompletion(
            deployment=deployment.id,
            attempts=1,
            upstream_request_id=upstream.request_id,
            chunks=_relay(upstream, batches, first, client_wants_usage),
        )


async def _relay(
    upstream: UpstreamStream,
    batches: AsyncIterator[list[bytes]],
    first: list[bytes],
    client_wants_usage: bool,
) -> AsyncIterator[bytes]:
    """Forward upstream events, one client write per upstream read.

    The usage chunk (which we always ask for) is dropped unless the client asked for it;
    an upstream error event is forwarded and ends the stream; a stream that breaks ends
    with our own error event, so no SDK mistakes a cut answer for a complete one.
    """
    batch = first
    try:
        while True:
            out = []
            for data in batch:
                if data == b"[DONE]":
                    out.append(DONE)
                    yield b"".join(out)
                    return
                if b'"usage"' in data and _is_usage_chunk(data):
                    if not client_wants_usage:
                        continue
                elif b'"error"' in data and _error_of(data) is not None:
                    out.append(b"data: " + data + b"\n\n")
                    yield b"".join(out)
                    return
                out.append(b"data: " + data + b"\n\n")
            if out:
                yield b"".join(out)
            try:
                batch = await anext(batches)
            except StopAsyncIteration:
                return
    except UpstreamError as exc:
        yield stream_error_event(exc.message, code="upstream_stream_interrupted")
    finally:
        await upstream.close()


def stream_error_event(message: str, *, code: str) -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _is_usage_chunk(data: bytes) -> bool:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(chunk, dict)
        and isinstance(chunk.get("usage"), dict)
        and not chunk.get("choices")
    )


def _error_of(data: bytes) -> Any:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return chunk.get("error") if isinstance(chunk, dict) else None


def _raise_if_error_event(data: bytes, deployment: str) -> None:
    if data == b"[DONE]":
        return
    if data[:1] != b"{":
        raise UpstreamError("malformed", f"{deployment} sent a stream event that is not JSON")
    error = _error_of(data) if b'"error"' in data else None
    if error is not None:
        raise UpstreamError(STREAM_ERROR, f"{deployment} reported an error", body={"error": error})


def client_error(exc: UpstreamError, deployment: str) -> GatewayError:
    """Translate an upstream failure into what the client should see."""
    if exc.kind == TIMEOUT:
        return upstream_timeout(f"Upstream {deployment} timed out.")
    if exc.kind == CONNECT:
        return upstream_failed(
            f"Upstream {deployment} is unreachable.", code="upstream_unreachable"
        )
    detail = _upstream_message(exc.body)
    if exc.kind == STATUS and exc.status is not None:
        status = exc.status
        if status == 429:
            retry = [
                (k.encode(), v.encode())
                for k, v in exc.headers.items()
                if k.startswith("retry-after")
            ]
            return GatewayError(
                429,
                detail or f"Upstream {deployment} is rate limiting requests.",
                error_type="rate_limit_error",
                code=_upstream_code(exc.body) or "rate_limit_exceeded",
                headers=retry,
            )
        if status in (400, 413, 422):
            return GatewayError(
                status,
                detail or f"Upstream {deployment} rejected the request (HTTP {status}).",
                code=_upstream_code(exc.body),
                param=_upstream_param(exc.body),
            )
        if status in (401, 403, 404):
            return upstream_failed(
                f"Upstream {deployment} refused Farebox's request (HTTP {status}); "
                "the deployment's provider key or model name is misconfigured.",
                code="upstream_misconfigured",
            )
        return upstream_failed(f"Upstream {deployment} failed (HTTP {status}).")
    if exc.kind == STREAM_ERROR:
        return upstream_failed(f"Upstream {deployment} reported an error: {detail or 'unknown'}")
    return upstream_failed(f"Upstream {deployment} sent an unusable response ({exc.kind}).")


def _error_field(body: Any, name: str) -> str | None:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            value = err.get(name)
            return value if isinstance(value, str) and value else None
    return None


def _upstream_message(body: Any) -> str | None:
    return _error_field(body, "message")


def _upstream_code(body: Any) -> str | None:
    return _error_field(body, "code")


def _upstream_param(body: Any) -> str | None:
    return _error_field(body, "param")
