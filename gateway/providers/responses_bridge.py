"""Every deployment serves `/v1/responses`: natively where the upstream speaks it, by
translation to Chat Completions everywhere else.

The service hands the adapter a Responses request whose `input` is already the whole
conversation (Farebox owns conversation state, gateway/conversations), so any deployment
can answer any turn. This wrapper sits in front of the protocol adapters and decides per
deployment, per attempt — a failover from a native upstream to a translated one (or back)
changes nothing for the client:

- native (`responses_api: true` on an OpenAI-protocol provider): the body goes to the
  upstream's `/responses` with `store: false` (the upstream never holds our state) and
  without item ids another provider minted;
- translated: `chat_request` turns it into a chat body, the protocol adapter (aiohttp or
  litellm) serves it as any chat call, and the answer or stream comes back as a Response
  object or the Responses event sequence.

Other endpoints pass straight through.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.providers.base import (
    CUT,
    STREAM_ERROR,
    Adapter,
    UpstreamError,
    UpstreamReply,
    UpstreamStream,
)
from gateway.providers.responses_answer import text_answer_json
from gateway.providers.responses_output import new_id
from gateway.providers.responses_plain import plain_chat_request
from gateway.providers.responses_stream import StreamTranslator
from gateway.providers.responses_translate import chat_request, response_from_chat
from routing.model import DeploymentSpec, Timeouts

RESPONSES = "responses"
_CHAT = "chat/completions"


def new_response_id() -> str:
    return new_id("resp_")


def native_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The request as a native upstream gets it: never stored there, no chain reference
    (the input already holds the whole conversation), and no item ids another provider
    (or an earlier attempt) minted — an upstream rejects ids it does not know. Reasoning
    items travel only with their encrypted content; a bare summary means nothing to
    another upstream."""
    body = {k: v for k, v in payload.items() if k not in ("previous_response_id", "store")}
    body["store"] = False
    items = payload.get("input")
    if isinstance(items, list):
        kept: list[Any] = []
        for item in items:
            if not isinstance(item, dict):
                kept.append(item)
                continue
            if item.get("type") == "reasoning" and not item.get("encrypted_content"):
                continue
            kept.append(
                {k: v for k, v in item.items() if k != "id" or item.get("type") == "reasoning"}
            )
        body["input"] = kept
    return body


# Items a built-in tool left in the conversation (a search, a code run…): only the upstream
# that ran it can read them; what they found is in the assistant's message that follows.
_BUILT_IN_CALLS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "code_interpreter_call",
        "image_generation_call",
        "local_shell_call",
        "local_shell_call_output",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
    }
)


def translatable(payload: dict[str, Any]) -> dict[str, Any]:
    """The request without built-in tool call items, which chat has no place for."""
    items = payload.get("input")
    if not isinstance(items, list):
        return payload
    for item in items:  # a loop, not any(generator): no frame per request
        if isinstance(item, dict) and item.get("type") in _BUILT_IN_CALLS:
            break
    else:
        return payload
    kept = [i for i in items if not (isinstance(i, dict) and i.get("type") in _BUILT_IN_CALLS)]
    return {**payload, "input": kept}


def translated_request(payload: dict[str, Any]) -> dict[str, Any]:
    """`chat_request(translatable(payload))`. The usual request (`plain_chat_request`: text
    messages alone, so no built-in tool call item to drop) is translated without the scan
    for those items first: the same chat body."""
    chat = plain_chat_request(payload)
    return chat if chat is not None else chat_request(translatable(payload))


class ResponsesBridge:
    """An Adapter that adds the Responses endpoint to the one it wraps."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Adapter) -> None:
        self._inner = inner

    def supports(self, deployment: DeploymentSpec, endpoint: str) -> bool:
        if endpoint == RESPONSES:
            return deployment.responses_native or self._inner.supports(deployment, _CHAT)
        return self._inner.supports(deployment, endpoint)

    async def call(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamReply:
        if endpoint != RESPONSES:
            return await self._inner.call(deployment, endpoint, payload, timeouts)
        if deployment.responses_native:
            reply = await self._inner.call(deployment, RESPONSES, native_payload(payload), timeouts)
            echo = _echo(payload)
            if echo:
                reply.data.update(echo)
                reply.raw = orjson.dumps(reply.data)
            return reply
        reply = await self._inner.call(deployment, _CHAT, translated_request(payload), timeouts)
        chat = reply.data
        response_id, created_at = new_response_id(), int(time.time())
        # The chat reply becomes the Response's (status, request id and limits kept); the
        # meter reads the chat usage, the same counts under the chat names.
        raw = text_answer_json(chat, payload, response_id, created_at)
        if raw is not None:
            reply.rewrite(raw, chat.get("usage"))
            return reply
        response = response_from_chat(chat, payload, response_id=response_id, created_at=created_at)
        reply.rewrite(orjson.dumps(response), chat.get("usage"))
        reply.data = response
        return reply

    async def open_stream(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamStream:
        if endpoint != RESPONSES:
            return await self._inner.open_stream(deployment, endpoint, payload, timeouts)
        if deployment.responses_native:
            stream = await self._inner.open_stream(
                deployment, RESPONSES, native_payload(payload), timeouts
            )
            echo = _echo(payload)
            return EchoedStream(stream, echo) if echo else stream
        chat = translated_request(payload)
        upstream = await self._inner.open_stream(deployment, _CHAT, chat, timeouts)
        translator = StreamTranslator(
            payload, response_id=new_response_id(), created_at=int(time.time())
        )
        return TranslatedStream(deployment.id, upstream, translator)

    async def close(self) -> None:
        await self._inner.close()


def _echo(payload: dict[str, Any]) -> dict[str, Any]:
    """What a native upstream's Response must say about the client's request that the
    upstream never saw: the chain it continues and whether Farebox stores it (the upstream
    was sent neither, and answers null / false)."""
    echo: dict[str, Any] = {}
    previous = payload.get("previous_response_id")
    if isinstance(previous, str):
        echo["previous_response_id"] = previous
    if payload.get("store") is True:
        echo["store"] = True
    return echo


_PREVIOUS_NULL = re.compile(rb'"previous_response_id":\s*null')
_STORE_FALSE = re.compile(rb'"store":\s*false')


class EchoedStream:
    """A native event stream whose Response objects echo `_echo`'s fields. Only the
    Response object has these keys, and a JSON string cannot hold them unescaped, so a
    byte substitution on each read is exact."""

    __slots__ = ("_previous", "_store", "_upstream", "limits", "request_id")

    def __init__(self, upstream: UpstreamStream, echo: dict[str, Any]) -> None:
        self._upstream = upstream
        previous = echo.get("previous_response_id")
        self._previous = (
            b'"previous_response_id":' + orjson.dumps(previous) if previous is not None else None
        )
        self._store = echo.get("store") is True
        self.request_id: str | None = upstream.request_id
        self.limits: Mapping[str, str] | None = upstream.limits

    async def blocks(self) -> AsyncIterator[bytes]:
        async for block in self._upstream.blocks():
            if self._previous is not None and b'"previous_response_id"' in block:
                block = _PREVIOUS_NULL.sub(self._previous, block)
            if self._store and b'"store"' in block:
                block = _STORE_FALSE.sub(b'"store":true', block)
            yield block

    async def close(self) -> None:
        await self._upstream.close()


class TranslatedStream:
    """A chat stream read as a Responses event stream."""

    __slots__ = ("_deployment", "_translator", "_upstream", "limits", "request_id")

    def __init__(
        self, deployment: str, upstream: UpstreamStream, translator: StreamTranslator
    ) -> None:
        self._deployment = deployment
        self._upstream = upstream
        self._translator = translator
        self.request_id: str | None = upstream.request_id
        self.limits: Mapping[str, str] | None = upstream.limits

    def ended(self) -> bool | None:
        """None while the stream runs, True once it answered, False once it failed: the
        relay asks this instead of searching Farebox's own events for the terminal one."""
        return self._translator.ended()

    @property
    def sequence_number(self) -> int:
        return self._translator.sequence_number

    @property
    def delta_events(self) -> int:
        return self._translator.delta_events

    def response_so_far(self) -> dict[str, Any]:
        """The Response as written so far (for a `response.failed` the relay adds)."""
        return self._translator.response

    def final_usage(self) -> dict[str, Any] | None:
        """The usage of the completed response, from the translator (nothing parsed)."""
        return self._translator.final_usage()

    def first_read_state(self, block: bytes, deployment: str) -> tuple[bool, UpstreamError | None]:
        """The first-read check (gateway.core.responses_relay.responses_first_read_state)
        from the translator's own state: these events are Farebox's, so they are not
        scanned again."""
        ready, error = self._translator.opening()
        if error is None:
            return ready, None
        return True, UpstreamError(
            STREAM_ERROR, f"{deployment} reported an error", body={"error": error}
        )

    def blocks(self) -> AsyncIterator[bytes]:
        return _TranslatedReads(self._upstream.blocks(), self._translator, self._deployment)

    async def close(self) -> None:
        await self._upstream.close()


class _TranslatedReads:
    """`TranslatedStream.blocks`: each upstream read translated, until the terminal event;
    then the end, or, when the upstream ended first, its cut (UpstreamError).

    An async iterator object rather than an async generator: the relay stops reading at the
    terminal event, and an async generator left suspended there is closed by its finalizer,
    which schedules a task on the event loop (and wakes it) per stream; this object is just
    dropped."""

    __slots__ = ("_deployment", "_reads", "_translator")

    def __init__(
        self, reads: AsyncIterator[bytes], translator: StreamTranslator, deployment: str
    ) -> None:
        self._reads: AsyncIterator[bytes] | None = reads
        self._translator = translator
        self._deployment = deployment

    def __aiter__(self) -> _TranslatedReads:
        return self

    async def __anext__(self) -> bytes:
        translator = self._translator
        reads = self._reads
        while reads is not None and not translator.done:
            try:
                block = await anext(reads)
            except StopAsyncIteration:
                self._reads = reads = None
                tail = translator.finish()
                if tail:
                    return tail
                break
            except BaseException:
                self._reads = None  # the upstream failed: nothing more to read
                raise
            out = translator.feed(block)
            if out:
                return out
        if translator.done:
            raise StopAsyncIteration
        self._reads = None
        raise UpstreamError(CUT, f"{self._deployment} ended the stream before its end")
