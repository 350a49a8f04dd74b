"""`send_stream` ends a stream in the write of its last block (gateway/api/common.py).

A chat stream's last block ends in `[DONE]`; a Responses stream has no marker of its own, so
its relay says when it hands over its last block (`CallContext.stream_ended`). Without that,
the end of the response costs a write (and the client a read) of its own — which it still
does for a stream that stops without saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from gateway.api.asgi import DisconnectWatch
from gateway.api.common import send_stream
from gateway.core.call_context import CallContext
from gateway.core.service import StreamingCompletion


def _ctx() -> CallContext:
    return CallContext("req_1", None, "responses", "m", True, {})


async def _relay(ctx: CallContext, blocks: list[bytes], *, mark_end: bool) -> AsyncIterator[bytes]:
    for n, block in enumerate(blocks):
        if mark_end and n == len(blocks) - 1:
            ctx.stream_ended = True
        yield block


async def _sent(chunks: AsyncIterator[bytes], ctx: CallContext | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(dict(message))

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never hangs up
        return {}

    streaming = StreamingCompletion(deployment="d", attempts=1, chunks=chunks)
    with DisconnectWatch(receive) as watch:
        ended = ctx.stream_ended_now if ctx is not None else None
        await send_stream(send, [], streaming, watch, "req_1", ended=ended)
    return messages[1:]  # after http.response.start


def _bodies(messages: list[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    return [(m["body"], bool(m.get("more_body"))) for m in messages]


def test_a_marked_last_block_carries_the_end() -> None:
    ctx = _ctx()
    blocks = [b"event: a\n\n", b"event: response.completed\n\n"]
    sent = asyncio.run(_sent(_relay(ctx, blocks, mark_end=True), ctx))
    assert _bodies(sent) == [(blocks[0], True), (blocks[1], False)]


def test_an_unmarked_stream_ends_with_a_write_of_its_own() -> None:
    ctx = _ctx()
    blocks = [b"event: a\n\n", b"event: b\n\n"]
    sent = asyncio.run(_sent(_relay(ctx, blocks, mark_end=False), ctx))
    assert _bodies(sent) == [(blocks[0], True), (blocks[1], True), (b"", False)]


def test_chat_streams_still_end_at_done() -> None:
    ctx = _ctx()
    blocks = [b"data: {}\n\n", b"data: [DONE]\n\n"]
    sent = asyncio.run(_sent(_relay(ctx, blocks, mark_end=False), None))
    assert _bodies(sent) == [(blocks[0], True), (blocks[1], False)]
