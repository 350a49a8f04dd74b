"""OpenAI-protocol upstreams over one shared aiohttp session.

aiohttp rather than httpx: on this machine httpx served ~20x fewer requests/s at
concurrency 64. Bodies are forwarded as the client sent them except for `model` (rewritten
to the upstream name) and `stream_options` (we always ask for usage so every stream is
metered).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from gateway.observability.redact import UPSTREAM_SECRETS, register_credentials
from gateway.observability.telemetry import upstream_headers
from gateway.providers.base import (
    CONNECT,
    CUT,
    MALFORMED,
    STATUS,
    TIMEOUT,
    UpstreamError,
    UpstreamReply,
)
from gateway.providers.passthrough import RawResponse
from routing.model import DeploymentSpec, Timeouts

_JSON = "application/json"


class ProviderEndpoint:
    """Where and how to reach one provider: base URL and ready-made headers."""

    __slots__ = ("base", "headers", "name")

    def __init__(self, name: str, api_base: str, api_key: str | None, extra: Mapping[str, str]):
        self.name = name
        self.base = api_base.rstrip("/")
        headers = {"Content-Type": _JSON, "Accept": _JSON}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        headers.update({k: v for k, v in extra.items() if v})  # unset ${VAR:-} means omit
        self.headers = headers
        register_credentials(api_key, headers)


class OpenAICompatAdapter:
    def __init__(self, providers: Mapping[str, ProviderEndpoint], session: aiohttp.ClientSession):
        self._providers = dict(providers)
        self._session = session
        self._timeouts: dict[tuple[Timeouts, bool], aiohttp.ClientTimeout] = {}

    @classmethod
    def create(cls, providers: Mapping[str, ProviderEndpoint]) -> OpenAICompatAdapter:
        connector = aiohttp.TCPConnector(
            limit=0,  # concurrency caps are a routing decision, not a socket-pool accident
            ttl_dns_cache=300,
            keepalive_timeout=60,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            json_serialize=lambda o: orjson.dumps(o).decode(),
            auto_decompress=True,
            raise_for_status=False,
        )
        return cls(providers, session)

    async def close(self) -> None:
        await self._session.close()

    def supports(self, deployment: DeploymentSpec, endpoint: str) -> bool:
        return True  # the OpenAI protocol serves every endpoint Farebox forwards

    def _timeout(self, t: Timeouts, stream: bool) -> aiohttp.ClientTimeout:
        cached = self._timeouts.get((t, stream))
        if cached is None:
            # Streams: the caller bounds the wait for the first read (TTFT); after it,
            # `idle_ms` is the longest silence allowed between reads. A non-stream body
            # only arrives once generation is done, so only the total applies.
            cached = aiohttp.ClientTimeout(
                total=t.total_ms / 1000,
                sock_connect=t.connect_ms / 1000,
                sock_read=max(t.idle_ms, t.ttft_ms) / 1000 if stream else None,
            )
            self._timeouts[(t, stream)] = cached
        return cached

    def _prepare(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any]
    ) -> tuple[ProviderEndpoint, str, bytes]:
        provider = self._providers[deployment.provider]
        payload["model"] = deployment.upstream_model
        return provider, f"{provider.base}/{endpoint}", orjson.dumps(payload)

    async def call(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamReply:
        provider, url, body = self._prepare(deployment, endpoint, payload)
        try:
            async with self._session.post(
                url,
                data=body,
                headers=upstream_headers(provider.headers),
                timeout=self._timeout(timeouts, False),
            ) as resp:
                raw = await resp.read()
                request_id = resp.headers.get("x-request-id")
                status = resp.status
                headers = resp.headers
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError(TIMEOUT, f"{deployment.id} timed out: {exc!s}") from None
        except aiohttp.ClientPayloadError:
            raise UpstreamError(CUT, f"{deployment.id} closed the connection mid-body") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                CONNECT, f"{deployment.id} unreachable: {type(exc).__name__}"
            ) from None
        if status != 200:
            raise _status_error(deployment, status, raw, headers, request_id)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(
                MALFORMED,
                f"{deployment.id} returned a body that is not a JSON object",
                status=status,
                request_id=request_id,
            )
        return UpstreamReply(status, raw, data, request_id, _limits(headers))

    async def open_stream(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> OpenAIStream:
        provider, url, body = self._prepare(deployment, endpoint, payload)
        resp, request_id = await self._opened(
            deployment,
            url,
            body,
            upstream_headers(provider.headers),
            self._timeout(timeouts, True),
            "sent no response headers in time",
        )
        ends = responses_stream_ends if endpoint == "responses" else _chat_stream_ends
        return OpenAIStream(deployment.id, resp, request_id, _limits(resp.headers), ends)

    async def open_raw(
        self,
        deployment: DeploymentSpec,
        endpoint: str,
        body: bytes | AsyncIterable[bytes],
        content_type: str,
        timeouts: Timeouts,
        *,
        stream: bool = False,
    ) -> RawResponse:
        """POST `body` as it is — bytes, or chunks sent as they come (chunked transfer
        encoding: a multipart upload is never held whole) — and return once the status
        line is in: a 200 to read or relay (gateway/providers/passthrough.py), anything
        else an UpstreamError. `stream`: the answer is relayed, so reads get the idle bound."""
        provider = self._providers[deployment.provider]
        headers = {**provider.headers, "Content-Type": content_type, "Accept": "*/*"}
        resp, request_id = await self._opened(
            deployment,
            f"{provider.base}/{endpoint}",
            body,
            upstream_headers(headers),
            self._timeout(timeouts, stream),
            "sent no answer in time",
        )
        return RawResponse(deployment.id, resp, request_id, _limits(resp.headers))

    async def _opened(
        self,
        deployment: DeploymentSpec,
        url: str,
        body: Any,
        headers: Mapping[str, str],
        bounds: aiohttp.ClientTimeout,
        no_answer: str,
    ) -> tuple[aiohttp.ClientResponse, str | None]:
        """POST and wait for the status line: a 200's open response (and the upstream's
        request id), anything else an UpstreamError; `no_answer` says what a timeout was."""
        try:
            resp = await self._session.post(url, data=body, headers=headers, timeout=bounds)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(TIMEOUT, f"{deployment.id} {no_answer}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                CONNECT, f"{deployment.id} unreachable: {type(exc).__name__}"
            ) from None
        request_id = resp.headers.get("x-request-id")
        if resp.status != 200:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                resp.release()
            raise _status_error(deployment, resp.status, raw, resp.headers, request_id)
        return resp, request_id


def _chat_stream_ends(block: bytes) -> bool:
    return b"[DONE]" in block


# A Responses stream has no [DONE]: it ends with its terminal event (or an `error` event).
_RESPONSES_END = re.compile(
    rb"(?:^|\n)(?:event:[ \t]*(?:response\.(?:completed|incomplete|failed)|error)[ \t]*\n"
    rb'|data:[ \t]*\{"type":[ \t]*"(?:response\.(?:completed|incomplete|failed)|error)")'
)


def responses_stream_ends(block: bytes) -> bool:
    """Whether `block` (whole SSE events) holds a Responses stream's terminal event."""
    return _RESPONSES_END.search(block) is not None


class OpenAIStream:
    __slots__ = ("_deployment", "_ends", "_resp", "limits", "request_id")

    def __init__(
        self,
        deployment: str,
        resp: aiohttp.ClientResponse,
        request_id: str | None,
        limits: Mapping[str, str] | None = None,
        ends: Callable[[bytes], bool] = _chat_stream_ends,
    ):
        self._deployment = deployment
        self._resp = resp
        self.request_id = request_id
        self.limits = limits
        self._ends = ends

    async def blocks(self) -> AsyncIterator[bytes]:
        """Complete SSE events, raw, grouped by network read; ends after `[DONE]` (chat) or
        the terminal event (Responses).

        Raw blocks let the relay forward most reads without decoding a single event.
        Raises UpstreamError if the stream breaks or ends before its end marker.
        """
        ends = self._ends
        pending = b""
        try:
            async for chunk in self._resp.content.iter_any():
                if b"\r" in chunk:
                    chunk = chunk.replace(b"\r\n", b"\n")
                data = pending + chunk if pending else chunk
                cut = data.rfind(b"\n\n")
                if cut < 0:
                    pending = data
                    continue
                block, pending = data[: cut + 2], data[cut + 2 :]
                yield block
                if ends(block):
                    return
            if pending.strip():
                yield pending + b"\n\n"
                if ends(pending):
                    return
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(TIMEOUT, f"{self._deployment} went silent mid-stream") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                CUT, f"{self._deployment} stream broke: {type(exc).__name__}"
            ) from None
        raise UpstreamError(CUT, f"{self._deployment} ended the stream before its end")

    async def close(self) -> None:
        self._resp.close()


_LIMIT_HEADERS = (
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


def _limits(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The rate-limit headers routing learns from; None (cheaply) when there are none."""
    if "x-ratelimit-remaining-requests" not in headers and (
        "x-ratelimit-remaining-tokens" not in headers
    ):
        return None
    return {name: headers[name] for name in _LIMIT_HEADERS if name in headers}


def _status_error(
    deployment: DeploymentSpec,
    status: int,
    raw: bytes,
    headers: Mapping[str, str],
    request_id: str | None,
) -> UpstreamError:
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    # Some upstreams quote the credential they were sent ("Incorrect API key provided:
    # sk-…"); the body's message, code and param may reach the client.
    body = UPSTREAM_SECRETS.json(body)
    keep = {
        k.lower(): v
        for k, v in headers.items()
        if k.lower() in ("retry-after", "retry-after-ms") or k.lower().startswith("x-ratelimit-")
    }
    return UpstreamError(
        STATUS,
        f"{deployment.id} answered HTTP {status}",
        status=status,
        body=body,
        headers=keep,
        request_id=request_id,
    )
