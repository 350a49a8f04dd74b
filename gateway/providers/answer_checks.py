"""A route's answer checks on the wire: each upstream answer, whole or streamed, checked
before anything of it reaches the client or the meter (routing/answer_guard.py decides).

The checks run where the service meets the provider (gateway/core/service.py), so every
strategy's answer is checked (fallbacks, gates, fan-outs), the gate and the cache see the
checked answer, and what the checks did is on the context before the request's ledger row
is written: `requests.guard` names the answer checks that fired, and an answer a block
check withheld has the error class `guardrail_blocked` (it is not a successful request).

The wire formats' own words for a withheld answer are used, so SDKs read it as such: a chat
choice ends with `finish_reason: "content_filter"` (the Anthropic translation makes that
`stop_reason: "refusal"`), a Response is `incomplete` for `content_filter`. Streams stay
streams: text is held back only while a finding may still be written (a `Channel`), chat
content per choice and Responses output text per content part; the events that repeat a
whole text (`response.output_text.done`, `…content_part.done`, `…output_item.done`, the
terminal Response) carry what was streamed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from gateway.providers.base import UpstreamReply
from gateway.providers.sse import SSEDecoder
from routing.answer_guard import AnswerGuard

CONTENT_FILTER = "content_filter"
CHAT, COMPLETIONS, RESPONSES = "chat/completions", "completions", "responses"
ENDPOINTS = frozenset({CHAT, COMPLETIONS, RESPONSES})


def check_reply(guard: AnswerGuard, endpoint: str, reply: UpstreamReply) -> None:
    """A non-stream answer checked in place (its usage, the meter's, is kept)."""
    if endpoint not in ENDPOINTS or reply.status >= 300:
        return
    usage = reply.usage()
    data = reply.data
    if check_answer(guard, endpoint, data):
        reply.rewrite(orjson.dumps(data), usage)


def check_answer(guard: AnswerGuard, endpoint: str, data: dict[str, Any]) -> bool:
    """A decoded non-stream answer checked in place; whether it changed."""
    changed = False

    def check(text: str) -> str:
        nonlocal changed
        out = guard.text(text)
        changed = changed or out != text
        return out

    if endpoint == RESPONSES:
        for item in _dicts(data.get("output")):
            if item.get("type") == "message":
                for part in _dicts(item.get("content")):
                    _field(part, "text", check)
            elif item.get("type") == "function_call":
                _field(item, "arguments", check)
        if guard.blocked is not None:
            data["status"] = "incomplete"
            data["incomplete_details"] = {"reason": CONTENT_FILTER}
            changed = True
        return changed
    for choice in _dicts(data.get("choices")):
        if endpoint == COMPLETIONS:
            _field(choice, "text", check)
        else:
            message = choice.get("message")
            if isinstance(message, dict):
                _field(message, "content", check)
                for call in _dicts(message.get("tool_calls")):
                    function = call.get("function")
                    if isinstance(function, dict):
                        _field(function, "arguments", check)
        if guard.blocked is not None:
            choice["finish_reason"] = CONTENT_FILTER
            changed = True
    return changed


class TextChannel(Protocol):
    """One streamed text under a rewrite: what may go out now, the rest at its end, and
    everything that went out."""

    released: str

    def feed(self, piece: str) -> str: ...

    def finish(self) -> str: ...


class StreamTexts(Protocol):
    """What rewrites a stream's texts: the answer checks (`AnswerGuard`), or a request's
    placeholders put back (`routing.masking.Restorer`)."""

    @property
    def blocked(self) -> str | None: ...

    @property
    def changes(self) -> int: ...

    def channel(self) -> TextChannel: ...


def check_stream(
    guard: StreamTexts,
    endpoint: str,
    blocks: AsyncIterator[bytes],
    noted: Callable[[], None],
) -> AsyncIterator[bytes]:
    """A streamed answer's blocks rewritten as they come (chat chunks or Responses events;
    other endpoints pass). `noted` is called when the checks found something more."""
    if endpoint == RESPONSES:
        return _events(guard, blocks, _ResponsesEvents(guard).event, noted)
    if endpoint in (CHAT, COMPLETIONS):
        return _events(guard, blocks, _ChatChunks(guard, endpoint).event, noted)
    return blocks


async def _events(
    guard: StreamTexts,
    blocks: AsyncIterator[bytes],
    rewrite: Callable[[bytes], bytes],
    noted: Callable[[], None],
) -> AsyncIterator[bytes]:
    decoder = SSEDecoder()
    seen = guard.changes
    async for block in blocks:
        out = b"".join(rewrite(data) for data in decoder.feed(block))
        if guard.changes != seen:
            seen = guard.changes
            noted()
        if out:
            yield out


class _ChatChunks:
    """Chat (or completion) chunks: each choice's content through its own channel."""

    def __init__(self, guard: StreamTexts, endpoint: str) -> None:
        self.guard = guard
        self.field = "text" if endpoint == COMPLETIONS else "content"
        self.channels: dict[Any, TextChannel] = {}

    def event(self, data: bytes) -> bytes:
        if not data.startswith(b"{"):
            return self._held_out() + b"data: " + data + b"\n\n"  # [DONE]
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b"data: " + data + b"\n\n"
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list) or not choices:
            return self._held_out() + b"data: " + data + b"\n\n"  # the usage chunk
        empty = True
        for choice in choices:
            if isinstance(choice, dict):
                self._choice(choice)
            empty = empty and _empty(choice, self.field)
        if empty:
            return b""  # all of it held back: nothing to say yet
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _choice(self, choice: dict[str, Any]) -> None:
        holder = choice.get("delta") if self.field == "content" else choice
        if not isinstance(holder, dict):
            return
        channel = self.channels.get(choice.get("index"))
        if channel is None:
            channel = self.channels[choice.get("index")] = self.guard.channel()
        text = holder.get(self.field)
        out = channel.feed(text) if isinstance(text, str) else None
        if choice.get("finish_reason") is not None:
            rest = channel.finish()
            out = rest if out is None else out + rest
            if self.guard.blocked is not None:
                choice["finish_reason"] = CONTENT_FILTER
        if out is not None or isinstance(text, str):
            holder[self.field] = out or ""

    def _held_out(self) -> bytes:
        """What channels still hold when the stream ends without a finish reason."""
        out = b""
        for index, channel in self.channels.items():
            rest = channel.finish()
            if rest:
                if self.field == "content":
                    choice: dict[str, Any] = {"index": index, "delta": {"content": rest}}
                else:
                    choice = {"index": index, "text": rest}
                out += b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n"
        return out


def _empty(choice: Any, field: str) -> bool:
    """A content chunk left with no content (held back or withheld) and nothing else."""
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
        return False
    if field == "text":
        return choice.get("text") == ""
    delta = choice.get("delta")
    return isinstance(delta, dict) and delta.keys() == {"content"} and delta["content"] == ""


class _ResponsesEvents:
    """Responses events: each output text part through its own channel; the events that
    repeat the whole text get what was streamed; a withheld answer ends `incomplete`."""

    def __init__(self, guard: StreamTexts) -> None:
        self.guard = guard
        self.channels: dict[tuple[Any, Any], TextChannel] = {}
        self.sequence = 0

    def event(self, data: bytes) -> bytes:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b"data: " + data + b"\n\n"
        if not isinstance(event, dict):
            return b"data: " + data + b"\n\n"
        kind = event.get("type")
        prefix = b""
        if kind == "response.output_text.delta":
            text = event.get("delta")
            if isinstance(text, str):
                event["delta"] = self._channel(event).feed(text)
                if not event["delta"]:
                    return b""
        elif kind == "response.output_text.done":
            channel = self._channel(event)
            rest = channel.finish()
            if rest:
                delta = {k: v for k, v in event.items() if k != "text"}
                prefix = self._sse({**delta, "type": "response.output_text.delta", "delta": rest})
            event["text"] = channel.released
        elif kind == "response.content_part.done":
            self._whole_part(
                event.get("output_index"), event.get("content_index"), event.get("part")
            )
        elif kind == "response.output_item.done":
            self._whole_item(event.get("output_index"), event.get("item"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = event.get("response")
            if isinstance(response, dict):
                for index, item in enumerate(_dicts(response.get("output"))):
                    self._whole_item(index, item)
                if self.guard.blocked is not None and kind == "response.completed":
                    kind = event["type"] = "response.incomplete"
                    response["status"] = "incomplete"
                    response["incomplete_details"] = {"reason": CONTENT_FILTER}
        return prefix + self._sse(event)

    def _sse(self, event: dict[str, Any]) -> bytes:
        """The event numbered on from the last one let out (an event held back, or a held
        delta let out on its own, moves the numbers the upstream gave)."""
        if "sequence_number" in event:
            event["sequence_number"] = self.sequence
            self.sequence += 1
        return _sse(event)

    def _channel(self, event: dict[str, Any]) -> TextChannel:
        key = (event.get("output_index"), event.get("content_index"))
        channel = self.channels.get(key)
        if channel is None:
            channel = self.channels[key] = self.guard.channel()
        return channel

    def _whole_part(self, output_index: Any, content_index: Any, part: Any) -> None:
        channel = self.channels.get((output_index, content_index))
        if channel is not None and isinstance(part, dict) and isinstance(part.get("text"), str):
            part["text"] = channel.released

    def _whole_item(self, output_index: Any, item: Any) -> None:
        if isinstance(item, dict) and item.get("type") == "message":
            for content_index, part in enumerate(_dicts(item.get("content"))):
                self._whole_part(output_index, content_index, part)


def _sse(event: dict[str, Any]) -> bytes:
    return (
        b"event: " + str(event.get("type")).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    )


def _field(holder: dict[str, Any], key: str, check: Callable[[str], str]) -> None:
    value = holder.get(key)
    if isinstance(value, str) and value:
        holder[key] = check(value)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
