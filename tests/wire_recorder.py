"""Record every HTTP exchange an SDK makes, and validate each against OpenAI's spec.

The SDKs under test run unchanged: their `httpx` client gets a transport that tees each
response's bytes as the SDK reads them. Afterwards `WireRecorder.validate()` checks every
complete body (a JSON object, or each event of an SSE stream) against the spec component for
its path and status, so no body or stream event the gateway sent escapes the schema check —
including the ones the SDK parsed and discarded.

    recorder = WireRecorder()
    client = openai.OpenAI(base_url=..., http_client=recorder.client())
    ...
    recorder.validate()   # AssertionError naming the exchange and every problem
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from tests.openapi import CHAT, CHUNK, ERROR, RESPONSE_EVENTS, check

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})

_ONE = re.compile(r"/v1/responses/[^/]+$")
_ITEMS = re.compile(r"/v1/responses/[^/]+/input_items$")


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    content_type: str
    request_id: str | None  # Farebox's x-request-id
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False  # the SDK read the body to its end

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The data objects of an SSE body, each checked against its `event:` line."""
    out = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")
        data = fields.get("data")
        assert data is not None, f"SSE block without data: {block!r}"
        assert data != "[DONE]", "a Responses stream ends at its terminal event, not [DONE]"
        event = json.loads(data)
        if "event" in fields:
            assert fields["event"] == event.get("type"), block
        out.append(event)
    return out


def check_response_events(events: list[dict[str, Any]], context: str = "") -> None:
    """Each event against `ResponseStreamEvent` and its own component; sequence numbers
    0, 1, 2…; exactly one terminal event (or an `error`), last."""
    assert events, f"empty stream ({context})"
    for event in events:
        kind = event.get("type")
        where = f"{context} {kind}"
        check("ResponseStreamEvent", event, where)
        assert kind in RESPONSE_EVENTS, f"unexpected event type {kind!r} ({context})"
        check(RESPONSE_EVENTS[kind], event, where)
    assert [e["sequence_number"] for e in events] == list(range(len(events))), context
    ends = [e["type"] for e in events if e["type"] in TERMINAL_EVENTS or e["type"] == "error"]
    assert len(ends) == 1 and events[-1]["type"] == ends[0], f"{context}: ends {ends}"
    assert events[0]["type"] == "response.created", context


def _json(body: bytes) -> Any:
    return json.loads(body)


def validated_openai(base_url: str, api_key: str, timeout: float = 10) -> Iterator[openai.OpenAI]:
    """A fixture's body: an OpenAI SDK client (no retries) whose every body and stream
    event is validated against the spec once the test is done with it.

        @pytest.fixture
        def client(gw): yield from validated_openai(gw.base_url, KEY)
    """
    recorder = WireRecorder()
    yield openai.OpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        timeout=timeout,
        http_client=recorder.client(),
    )
    recorder.validate()


class WireRecorder:
    """The exchanges of every client built by :meth:`client` / :meth:`async_client`."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.validated = 0  # exchanges validated so far (the next validate starts there)

    def client(self, timeout: float = 20) -> httpx.Client:
        return httpx.Client(transport=_Recording(self, httpx.HTTPTransport()), timeout=timeout)

    def async_client(self, timeout: float = 20) -> httpx.AsyncClient:
        transport = _AsyncRecording(self, httpx.AsyncHTTPTransport())
        return httpx.AsyncClient(transport=transport, timeout=timeout)

    def _start(self, request: httpx.Request, response: httpx.Response) -> Exchange:
        exchange = Exchange(
            request.method,
            request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
            response.headers.get("x-request-id"),
        )
        self.exchanges.append(exchange)
        return exchange

    def validate(self) -> int:
        """Check every complete exchange recorded since the last call; how many were."""
        fresh = self.exchanges[self.validated :]
        self.validated = len(self.exchanges)
        checked = 0
        for exchange in fresh:
            if exchange.complete:
                validate_exchange(exchange)
                checked += 1
        return checked


def validate_exchange(exchange: Exchange) -> None:
    """One exchange against the spec component its path, method and status call for."""
    where, path, body = str(exchange), exchange.path, bytes(exchange.body)
    if exchange.status >= 400:
        check(ERROR, _json(body), where)
        return
    if "text/event-stream" in exchange.content_type:
        events = sse_events(body)
        if path.endswith("/chat/completions"):
            for position, chunk in enumerate(events):
                check(CHUNK, chunk, f"{where} chunk {position}")
            return
        check_response_events(events, where)
        return
    payload = _json(body)
    if path.endswith("/chat/completions"):
        check(CHAT, payload, where)
    elif path.endswith("/responses/input_tokens"):
        check("TokenCountsResource", payload, where)
    elif _ITEMS.search(path):
        check("ResponseItemList", payload, where)
    elif exchange.method == "DELETE" and _ONE.search(path):
        # The spec gives a deleted Response no schema; this is the shape OpenAI sends.
        assert payload == {"id": path.rsplit("/", 1)[1], "object": "response", "deleted": True}
    elif path.endswith("/responses") or _ONE.search(path):
        check("Response", payload, where)
    else:
        raise AssertionError(f"no schema known for {where}")


class _Tee(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, exchange: Exchange) -> None:
        self.inner, self.exchange = inner, exchange

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.exchange.body += chunk
            yield chunk
        self.exchange.complete = True

    def close(self) -> None:
        self.inner.close()


class _AsyncTee(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, exchange: Exchange) -> None:
        self.inner, self.exchange = inner, exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.exchange.body += chunk
            yield chunk
        self.exchange.complete = True

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Recording(httpx.BaseTransport):
    def __init__(self, recorder: WireRecorder, inner: httpx.BaseTransport) -> None:
        self.recorder, self.inner = recorder, inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _Tee(response.stream, self.recorder._start(request, response))
        return response

    def close(self) -> None:
        self.inner.close()


class _AsyncRecording(httpx.AsyncBaseTransport):
    def __init__(self, recorder: WireRecorder, inner: httpx.AsyncBaseTransport) -> None:
        self.recorder, self.inner = recorder, inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _AsyncTee(response.stream, self.recorder._start(request, response))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
