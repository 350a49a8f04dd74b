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
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

import orjson

from gateway.core.metering import error_class
from gateway.core.streaming import Relay, decode_events
from gateway.observability.redact import UPSTREAM_SECRETS, scrub
from gateway.providers.base import CUT, MALFORMED, STREAM_ERROR, UpstreamError
from gateway.providers.responses_bridge import new_response_id
from gateway.providers.responses_output import response_skeleton
from gateway.providers.responses_replay import failed_event
from gateway.runtime.shutdown import CLIENT_CANCELLED, SHUTDOWN, was_cut

_CREATED = b'"response.created"'
_TERMINAL = re.compile(rb'"type":\s*"(response\.(?:completed|incomplete|failed)|error)"')
_TERMINAL_OK_BYTES = (b"response.completed", b"response.incomplete")
# An event's type (event types all start `response.`, or are `error`; nested objects'
# types — message, output_text, function… — never do).
_EVENT_TYPE = re.compile(rb'"type":\s*"(response\.[a-z_.]+|error)"')
_TERMINAL_FAILED = ("response.failed", "error")
# A stream of Farebox's own events that ended: answered (True) or failed (False).
_OWN_KINDS = {True: b"response.completed", False: b"response.failed"}


class _OwnEvents(Protocol):
    """A Responses stream whose events Farebox wrote (gateway/providers/responses_bridge.py
    TranslatedStream): it knows its state, so the relay need not read its bytes."""

    request_id: str | None

    def ended(self) -> bool | None: ...
    def final_usage(self) -> dict[str, Any] | None: ...
    def response_so_far(self) -> dict[str, Any]: ...
    @property
    def sequence_number(self) -> int: ...
    @property
    def delta_events(self) -> int: ...


_FAILED_BYTES = (b"response.failed", b"error")
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
        """One client write per upstream read, forwarded as it came. Only the terminal
        event's data is parsed (usage, the final Response); `response.created`'s is kept
        unparsed in case a failure has to be reported on it. Event-level keys are found
        by byte search: inside a JSON string a quote is escaped and a newline is `\\n`,
        so neither `"type":"…"` nor a line starting `data:` can occur there."""
        metered = False
        deltas = 0
        sequence = 0
        outcome: str | None = CLIENT_CANCELLED
        created: bytes | None = None
        # A stream of Farebox's own events (Responses translated from chat) says where it
        # stands and what it used: its bytes are not searched or parsed again.
        own = cast(_OwnEvents, self.upstream) if hasattr(self.upstream, "ended") else None
        block = first
        try:
            while True:
                kind: bytes | None
                if own is not None:
                    # Its delta events are counted as they are written (`_seen`).
                    ended = own.ended()
                    kind = None if ended is None else _OWN_KINDS[ended]
                else:
                    deltas += block.count(b'.delta"')
                    sequence += block.count(b"\ndata:") + block.startswith(b"data:")
                    if created is None and (at := block.find(_CREATED)) >= 0:
                        created = _event_data(block, at)
                    end = _TERMINAL.search(block)
                    kind = None if end is None else end.group(1)
                if kind is None:
                    yield block
                elif kind in _TERMINAL_OK_BYTES:
                    self._meter_end(own, block)
                    metered = True
                    outcome = None
                    # In the ledger before the client can see the end (see Relay.run).
                    self._finish(outcome, metered, _seen(own, deltas))
                    self.ctx.stream_ended = True
                    yield block
                    return
                else:  # the upstream's own error or failed response, relayed scrubbed
                    outcome = STREAM_ERROR
                    self._finish(outcome, metered, _seen(own, deltas))
                    self.ctx.stream_ended = True
                    yield UPSTREAM_SECRETS.raw(block)
                    return
                try:
                    block = await anext(blocks)
                except StopAsyncIteration:
                    raise UpstreamError(CUT, "the stream ended before its end") from None
        except UpstreamError as exc:
            outcome = error_class(exc)
            self._finish(outcome, metered, _seen(own, deltas))
            self.ctx.stream_ended = True
            yield failed_event(
                own.response_so_far() if own is not None else self._so_far(created),
                message=scrub(exc.message),
                code="upstream_stream_interrupted",
                sequence_number=own.sequence_number if own is not None else sequence,
            )
        except asyncio.CancelledError:
            if not was_cut():
                raise  # the client hung up: nobody to tell
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            outcome = SHUTDOWN
            self._finish(outcome, metered, _seen(own, deltas))
            self.ctx.stream_ended = True
            yield failed_event(
                own.response_so_far() if own is not None else self._so_far(created),
                message="The gateway is shutting down and ended this stream before it was "
                "complete; retry the request.",
                code="gateway_shutting_down",
                sequence_number=own.sequence_number if own is not None else sequence,
            )
        finally:
            await self.upstream.close()
            self._finish(outcome, metered, _seen(own, deltas))

    def _meter_end(self, own: _OwnEvents | None, block: bytes) -> None:
        """Meter the answered stream from its terminal event in `block`, and keep the final
        Response for the conversation store. A translated stream that is not stored is
        metered from the translator's own figures, nothing parsed."""
        stored = self.ctx.payload.get("store") is True
        if own is not None and not stored:
            self._meter_success(own.final_usage())
            return
        end = _TERMINAL.search(block)
        data = _event_data(block, end.start()) if end else None
        if data is not None and not stored:
            # Only the usage is needed (no conversation store): parsed alone when it ends
            # the Response, as OpenAI and the simulator send it.
            usage = usage_at_end(data)
            if usage is not None:
                self._meter_success(usage)
                return
        response = _response_of(_object(data))
        self._meter_success(response.get("usage") if response else None)
        self.ctx.final_response = response

    def _so_far(self, created: bytes | None) -> dict[str, Any]:
        response = _response_of(_object(created)) if created is not None else None
        return response if response is not None else self._skeleton()

    def _skeleton(self) -> dict[str, Any]:
        """The Response a failure is reported on when the upstream never sent one."""
        return response_skeleton(
            self.ctx.payload,
            response_id=new_response_id(),
            created_at=int(time.time()),
            model=self.attempt.deployment.upstream_model,
        )


def _seen(own: _OwnEvents | None, deltas: int) -> int:
    """The events a cut stream is billed an output estimate for (Relay._finish: the
    delta events, plus the role-only chunk it discounts)."""
    return (deltas if own is None else own.delta_events) + 1


def _event_data(block: bytes, at: int) -> bytes:
    """The data of the event whose JSON holds offset `at` (one `data:` line: compact JSON)."""
    start = block.rfind(b"data:", 0, at)
    end = block.find(b"\n", at)
    return block[start + 5 : end if end >= 0 else len(block)].strip()


_SEQUENCE = b',"sequence_number":'
_USAGE = b'"usage":{'


def usage_at_end(data: bytes) -> dict[str, Any] | None:
    """The usage of a terminal event's Response when it is the Response's last member
    (`…,"usage":{…}}` then the event's end, or its `"sequence_number":N` and end); else
    None (the caller parses the event). The last `"usage":{` is a key (in a JSON string its
    quote would be escaped), and an object that parses from there to the Response's closing
    brace, with only the event's end after it, is the Response's own member."""
    at = data.rfind(_USAGE)
    if at < 0 or not data.endswith(b"}"):
        return None
    stop = len(data) - 1  # the event's closing brace
    sequence = data.rfind(_SEQUENCE, at)
    if sequence >= 0:
        if not data[sequence + len(_SEQUENCE) : stop].isdigit():
            return None
        stop = sequence
    if data[stop - 1 : stop] != b"}":
        return None
    try:
        usage = orjson.loads(data[at + len(_USAGE) - 1 : stop - 1])
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None


def _object(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
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
    for match in _EVENT_TYPE.finditer(block):
        kind = match.group(1)
        if kind in _FAILED_BYTES:
            break  # decode it below, to say what went wrong
        if kind.decode() not in _NOT_YET_CONTENT:
            return True, None
    for data in decode_events(block):
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
