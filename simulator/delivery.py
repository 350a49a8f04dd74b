"""Writing answers out: stream pacing and the faults that break a response mid-flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from .runtime import JSON_TYPE, Call

__all__ = ["malformed_json", "pace_non_stream", "pump", "truncated_json"]


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
    content_type: str = "text/event-stream",
) -> web.StreamResponse:
    """Send a stream: ``head``, one ``body`` item per token step, then ``tail``.

    Applies ``ttft``/``tps`` pacing and the stream faults.  ``on_delivered`` runs once the
    tail (which carries usage, if any) has been handed to the transport.  The framing is
    the caller's (SSE events, AWS event-stream messages…); ``content_type`` names it.
    """
    b = call.behaviour
    call.state.stats.served(call.base, 200, call.stream)
    response = web.StreamResponse(headers=call.headers)
    response.content_type = content_type
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
        if b.cut_before_done and tail.endswith(_DONE):
            await response.write(prefix + tail[: -len(_DONE)])
            stats.fault("cut")
            transport = call.request.transport
            if transport is not None:
                transport.abort()  # usage delivered, the end marker never comes
            return response
        await response.write(prefix + tail)
        if on_delivered is not None:
            on_delivered()
        await response.write_eof()
    except ConnectionResetError:
        pass
    return response


_DONE = b"data: [DONE]\n\n"


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
