"""Relaying one Responses event stream (native or translated) to the client.

The Responses stream has no `[DONE]` and no separate usage chunk: it ends with a terminal
event — `response.completed` / `response.incomplete` (whose Response carries usage),
`response.failed` or `error`. Reads that hold only deltas are forwarded byte for byte;
a read is decoded only when it holds a lifecycle or error event. A stream that breaks
after its first content event ends with our own `response.failed`, never a clean end.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from gateway.core.metering import error_class
from gateway.core.streaming import Relay, decode_events
from gateway.observability.redact import UPSTREAM_SECRETS, scrub
from gateway.providers.base import CUT, MALFORMED, STREAM_ERROR, UpstreamError
from gateway.providers.responses_bridge import new_response_id
from gateway.providers.responses_output import response_skeleton
from gateway.providers.responses_replay import failed_event
from gateway.runtime.shutdown import CLIENT_CANCELLED, SHUTDOWN, was_cut

# Events that need decoding: the created / terminal ones and errors.
_LIFECYCLE = re.compile(rb'"type":\s*"(?:response\.(?:created|completed|incomplete|failed)|error)"')
_TERMINAL_OK = ("response.completed", "response.incomplete")
_TERMINAL_FAILED = ("response.failed", "error")
# Structure without content: failover stays open while only these have arrived.
_NOT_YET_CONTENT = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_summary_part.added",
    }
)


class ResponsesRelay(Relay):
    """Forwards a Responses stream, meters it from its terminal event, keeps the final
    Response object (`ctx.final_response`) for the conversation store."""

    __slots__ = ()

    async def run(self, blocks: AsyncIterator[bytes], first: bytes) -> AsyncIterator[bytes]:
        metered = False
        deltas = 0
        sequence = 0
        outcome: str | None = CLIENT_CANCELLED
        so_far: dict[str, Any] | None = None
        block = first
        try:
            while True:
                events = block.count(b"data:")
                if _LIFECYCLE.search(block) is None:
                    deltas += block.count(b'.delta"')
                    sequence += events
                    yield block
                else:
                    out: list[bytes] = []
                    for data in decode_events(block):
                        sequence += 1
                        event = _object(data)
                        kind = event.get("type") if event is not None else None
                        if kind == "response.created":
                            so_far = _response_of(event)
                        elif kind in _TERMINAL_OK:
                            response = _response_of(event)
                            self._meter_success(response.get("usage") if response else None)
                            metered = True
                            self.ctx.final_response = response
                            outcome = None
                        elif kind in _TERMINAL_FAILED:
                            out.append(_sse(kind, UPSTREAM_SECRETS.raw(data)))
                            outcome = STREAM_ERROR
                            yield b"".join(out)
                            return
                        elif kind is not None and kind.endswith(".delta"):
                            deltas += 1
                        out.append(_sse(kind, data))
                    yield b"".join(out)
                    if outcome is None:
                        return
                try:
                    block = await anext(blocks)
                except StopAsyncIteration:
                    if outcome == CLIENT_CANCELLED:
                        raise UpstreamError(CUT, "the stream ended before its end") from None
                    return
        except UpstreamError as exc:
            outcome = error_class(exc)
            yield failed_event(
                so_far or self._skeleton(),
                message=scrub(exc.message),
                code="upstream_stream_interrupted",
                sequence_number=sequence,
            )
        except asyncio.CancelledError:
            if not was_cut():
                raise  # the client hung up: nobody to tell
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            outcome = SHUTDOWN
            yield failed_event(
                so_far or self._skeleton(),
                message="The gateway is shutting down and ended this stream before it was "
                "complete; retry the request.",
                code="gateway_shutting_down",
                sequence_number=sequence,
            )
        finally:
            await self.upstream.close()
            self._finish(outcome, metered, deltas + 1)

    def _skeleton(self) -> dict[str, Any]:
        """The Response a failure is reported on when the upstream never sent one."""
        return response_skeleton(
            self.ctx.payload,
            response_id=new_response_id(),
            created_at=int(time.time()),
            model=self.attempt.deployment.upstream_model,
        )


def _sse(kind: str | None, data: bytes) -> bytes:
    head = b"event: " + kind.encode() + b"\n" if kind else b""
    return head + b"data: " + data + b"\n\n"


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _response_of(event: dict[str, Any] | None) -> dict[str, Any] | None:
    response = event.get("response") if event is not None else None
    return response if isinstance(response, dict) else None


def responses_first_read_state(block: bytes, deployment: str) -> tuple[bool, UpstreamError | None]:
    """Whether a Responses stream's opening bytes hold its first content event (then the
    stream is committed to), and why they are unusable if they are: an error or a failed
    response before any content still fails over."""
    for data in _events(block):
        event = _object(data)
        if event is None:
            return True, UpstreamError(
                MALFORMED, f"{deployment} sent a stream event that is not a JSON object"
            )
        kind = event.get("type")
        if kind in _TERMINAL_FAILED:
            error = event.get("error") if kind == "error" else None
            if kind == "response.failed":
                response = _response_of(event) or {}
                error = response.get("error")
            return True, UpstreamError(
                STREAM_ERROR,
                f"{deployment} reported an error",
                body={"error": error if error is not None else event},
            )
        if kind not in _NOT_YET_CONTENT:
            return True, None
    return False, None


def _events(block: bytes) -> Iterator[bytes]:
    yield from decode_events(block)
