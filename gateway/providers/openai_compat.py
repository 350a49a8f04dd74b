"""OpenAI-protocol upstreams: JSON calls and SSE streams over Farebox's lean HTTP/1.1
client (gateway/providers/http1.py: ~4x less CPU per call than aiohttp here), raw
pass-through bodies (multipart, streamed uploads) over one aiohttp session, made on first use.

Bodies are forwarded as the client sent them except for `model` (rewritten to the upstream
name) and `stream_options` (we always ask for usage so every stream is metered).
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
from gateway.providers.http1 import Client, Target
from gateway.providers.http1_response import Response, UpstreamClosed
from gateway.providers.passthrough import RawResponse
from routing.model import DeploymentSpec, Timeouts

_JSON = "application/json"
_NO_HEADERS: dict[str, str] = {}
# Identity: an SSE relay forwards bytes as they come, and loopback or in-VPC upstreams gain
# nothing from compression (a server that compresses anyway is decoded: http1.Response).
_FIXED_HEAD = b"Accept-Encoding: identity\r\nUser-Agent: farebox\r\n"


class ProviderEndpoint:
    """Where and how to reach one provider: base URL and ready-made headers."""

    __slots__ = ("base", "head", "headers", "name")

    def __init__(self, name: str, api_base: str, api_key: str | None, extra: Mapping[str, str]):
        self.name = name
        self.base = api_base.rstrip("/")
        headers = {"Content-Type": _JSON, "Accept": _JSON}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        headers.update({k: v for k, v in extra.items() if v})  # unset ${VAR:-} means omit
        self.headers = headers
        # The same headers as request-head lines, built once (the lean client's form).
        self.head = _FIXED_HEAD + _head_lines(headers)
        register_credentials(api_key, headers)


def _head_lines(headers: Mapping[str, str]) -> bytes:
    return b"".join(
        b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
    )


def _upstream_head(provider: ProviderEndpoint) -> bytes:
    """The provider's head lines plus this attempt's (ledger id, traceparent)."""
    extra = upstream_headers(_NO_HEADERS)
    return provider.head + _head_lines(extra) if extra else provider.head


class OpenAICompatAdapter:
    def __init__(self, providers: Mapping[str, ProviderEndpoint]):
        self._providers = dict(providers)
        self._client = Client()
        self._session_made: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Timeouts, bool], aiohttp.ClientTimeout] = {}
        self._targets: dict[tuple[str, str], Target] = {}

    @classmethod
    def create(cls, providers: Mapping[str, ProviderEndpoint]) -> OpenAICompatAdapter:
        return cls(providers)

    @property
    def _session(self) -> aiohttp.ClientSession:
        """For raw pass-through bodies only (multipart, streamed uploads)."""
        if self._session_made is None:
            connector = aiohttp.TCPConnector(
                limit=0,  # concurrency caps are a routing decision, not a socket-pool accident
                ttl_dns_cache=300,
                keepalive_timeout=60,
            )
            self._session_made = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, raise_for_status=False
            )
        return self._session_made

    async def close(self) -> None:
        await self._client.close()
        if self._session_made is not None:
            await self._session_made.close()

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
    ) -> tuple[ProviderEndpoint, Target, bytes]:
        provider = self._providers[deployment.provider]
        payload["model"] = deployment.upstream_model
        target = self._targets.get((provider.name, endpoint))
        if target is None:
            target = self._client.target(f"{provider.base}/{endpoint}")
            self._targets[(provider.name, endpoint)] = target
        return provider, target, orjson.dumps(payload)

    async def _post(
        self,
        deployment: DeploymentSpec,
        provider: ProviderEndpoint,
        target: Target,
        body: bytes,
        timeouts: Timeouts,
        stream: bool,
    ) -> Response:
        """The lean client's POST, its failures as UpstreamErrors (as aiohttp's were)."""
        try:
            return await self._client.request(
                target,
                _upstream_head(provider),
                body,
                connect_s=timeouts.connect_ms / 1000,
                total_s=timeouts.total_ms / 1000,
                read_s=max(timeouts.idle_ms, timeouts.ttft_ms) / 1000 if stream else None,
                stream=stream,
            )
        except TimeoutError:
            what = "sent no response headers in time" if stream else "timed out"
            raise UpstreamError(TIMEOUT, f"{deployment.id} {what}") from None
        except UpstreamClosed as exc:
            if exc.before_status:
                raise UpstreamError(
                    CONNECT, f"{deployment.id} unreachable: ServerDisconnectedError"
                ) from None
            raise UpstreamError(CUT, f"{deployment.id} closed the connection mid-body") from None
        except (OSError, ValueError) as exc:
            raise UpstreamError(
                CONNECT, f"{deployment.id} unreachable: {type(exc).__name__}"
            ) from None

    async def call(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamReply:
        provider, target, body = self._prepare(deployment, endpoint, payload)
        resp = await self._post(deployment, provider, target, body, timeouts, False)
        raw = resp.body
        headers = resp.headers
        request_id = headers.get("x-request-id")
        status = resp.status
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
        provider, target, body = self._prepare(deployment, endpoint, payload)
        resp = await self._post(deployment, provider, target, body, timeouts, True)
        request_id = resp.headers.get("x-request-id")
        if resp.status != 200:
            raw = b""
            try:
                async for piece in resp.iter(timeouts.total_ms / 1000):
                    raw += piece
            except (TimeoutError, UpstreamClosed):
                pass
            finally:
                resp.close()
            raise _status_error(deployment, resp.status, raw, resp.headers, request_id)
        ends = responses_stream_ends if endpoint == "responses" else _chat_stream_ends
        read_s = max(timeouts.idle_ms, timeouts.ttft_ms) / 1000
        return OpenAIStream(deployment.id, resp, request_id, _limits(resp.headers), ends, read_s)

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
    # `find`, not `in`: bytes.__contains__ first tries its operand as an integer, raising and
    # clearing a TypeError before it searches (~2.5x the cost; the hot path's byte tests).
    return block.find(b"[DONE]") >= 0


# A Responses stream has no [DONE]: it ends with its terminal event (or an `error` event).
_RESPONSES_END = re.compile(
    rb"(?:^|\n)(?:event:[ \t]*(?:response\.(?:completed|incomplete|failed)|error)[ \t]*\n"
    rb'|data:[ \t]*\{"type":[ \t]*"(?:response\.(?:completed|incomplete|failed)|error)")'
)


def responses_stream_ends(block: bytes) -> bool:
    """Whether `block` (whole SSE events) holds a Responses stream's terminal event."""
    return _RESPONSES_END.search(block) is not None


# _Blocks states: reading; the body ended without its end marker after a last partial
# block (handed out; the next read says the stream was cut); done.
_READING, _CUT_NEXT, _DONE = 0, 1, 2


class _Blocks:
    """OpenAIStream.blocks as an async iterator object rather than an async generator: the
    relay stops reading at the end marker, and an async generator left suspended there is
    finalized by a task the loop schedules for it, one per stream."""

    __slots__ = ("_pending", "_state", "_stream")

    def __init__(self, stream: OpenAIStream) -> None:
        self._stream = stream
        self._pending = b""
        self._state = _READING

    def __aiter__(self) -> _Blocks:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        if self._state != _READING:
            if self._state == _CUT_NEXT:
                self._state = _DONE
                raise UpstreamError(CUT, f"{stream._deployment} ended the stream before its end")
            raise StopAsyncIteration
        ends, resp, read_s = stream._ends, stream._resp, stream._read_s
        try:
            while (chunk := await resp.next_piece(read_s)) is not None:
                if chunk.find(b"\r") >= 0:
                    chunk = chunk.replace(b"\r\n", b"\n")
                pending = self._pending
                data = pending + chunk if pending else chunk
                cut = data.rfind(b"\n\n")
                if cut < 0:
                    self._pending = data
                    continue
                block, self._pending = data[: cut + 2], data[cut + 2 :]
                if ends(block):
                    stream._ended = True
                    self._state = _DONE
                return block
        except TimeoutError:
            self._state = _DONE
            raise UpstreamError(TIMEOUT, f"{stream._deployment} went silent mid-stream") from None
        except UpstreamClosed:
            self._state = _DONE
            raise UpstreamError(
                CUT, f"{stream._deployment} stream broke: ClientPayloadError"
            ) from None
        pending = self._pending
        if pending.strip():
            stream._ended = ends(pending)
            self._state = _DONE if stream._ended else _CUT_NEXT
            return pending + b"\n\n"
        self._state = _DONE
        raise UpstreamError(CUT, f"{stream._deployment} ended the stream before its end")

    async def aclose(self) -> None:
        self._state = _DONE


class OpenAIStream:
    __slots__ = ("_deployment", "_ended", "_ends", "_read_s", "_resp", "limits", "request_id")

    def __init__(
        self,
        deployment: str,
        resp: Response,
        request_id: str | None,
        limits: Mapping[str, str] | None = None,
        ends: Callable[[bytes], bool] = _chat_stream_ends,
        read_s: float | None = None,
    ):
        self._deployment = deployment
        self._resp = resp
        self.request_id = request_id
        self.limits = limits
        self._ends = ends
        self._read_s = read_s
        self._ended = False

    def blocks(self) -> AsyncIterator[bytes]:
        """Complete SSE events, raw, grouped by network read; ends after `[DONE]` (chat) or
        the terminal event (Responses).

        Raw blocks let the relay forward most reads without decoding a single event.
        Raises UpstreamError if the stream breaks or ends before its end marker.
        """
        return _Blocks(self)

    async def close(self) -> None:
        if self._ended:
            self._resp.release()  # whole: the connection can serve the next call
        else:
            self._resp.close()  # cut short: closing tells the upstream to stop


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
