"""Relaying one upstream SSE stream to the client, metering it when it ends.

Most upstream reads carry only content deltas and are forwarded byte for byte; only the
read that holds `[DONE]`, an error event or the usage chunk is decoded.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson

from gateway.core.metering import CallContext, Meter, error_class
from gateway.ledger_rows import AttemptRow
from gateway.observability.redact import UPSTREAM_SECRETS, scrub
from gateway.providers.base import MALFORMED, STREAM_ERROR, UpstreamError, UpstreamStream
from gateway.providers.sse import SSEDecoder, event_data
from gateway.runtime.shutdown import (
    CLIENT_CANCELLED,
    SHUTDOWN,
    STATUS_CLIENT_CLOSED,
    was_cut,
)
from routing.model import Plan, PlannedAttempt

__all__ = ["CLIENT_CANCELLED", "DONE", "STATUS_CLIENT_CLOSED", "Relay"]

DONE = b"data: [DONE]\n\n"


class Relay:
    """Forwards one upstream stream to the client and meters it when it ends."""

    __slots__ = (
        "attempt",
        "ctx",
        "finished",
        "meter",
        "on_end",
        "on_metered",
        "on_outcome",
        "plan",
        "started",
        "upstream",
        "wants_usage",
    )

    def __init__(
        self,
        meter: Meter,
        ctx: CallContext,
        plan: Plan,
        attempt: PlannedAttempt,
        upstream: UpstreamStream,
        started: float,
        wants_usage: bool,
        on_outcome: Callable[[bool], None] | None = None,
        on_metered: Callable[[AttemptRow], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.meter = meter
        self.ctx = ctx
        self.plan = plan
        self.attempt = attempt
        self.upstream = upstream
        self.started = started
        self.wants_usage = wants_usage
        self.on_outcome = on_outcome
        # on_metered: the attempt's row once usage arrived; on_end: always, last.
        self.on_metered = on_metered
        self.on_end = on_end
        self.finished = False

    async def run(self, blocks: AsyncIterator[bytes], first: bytes) -> AsyncIterator[bytes]:
        """One client write per upstream read.

        Most reads carry only content deltas and are forwarded byte for byte. Only a read
        that holds `[DONE]`, an error or the usage chunk is decoded: the usage chunk (which
        we always ask for) is dropped unless the client asked for it, and otherwise carries
        `cost_usd`; an upstream error event is forwarded and ends the stream; a stream that
        breaks ends with our own error event, so no SDK mistakes a cut answer for a
        complete one.
        """
        usage: dict[str, Any] | None = None
        events_seen = 0
        outcome: str | None = CLIENT_CANCELLED
        block = first
        try:
            while True:
                special = _first_special(block)
                if special < 0:
                    events_seen += block.count(b"data:")
                    yield block
                else:
                    # Forward the plain events before the first special one as they are;
                    # decode only from there on (usually just the usage chunk and [DONE]).
                    cut = block.rfind(b"\n\n", 0, special)
                    start = cut + 2 if cut >= 0 else 0
                    out = [block[:start]] if start > 0 else []
                    events_seen += block.count(b"data:", 0, start)
                    for data in decode_events(block[start:]):
                        if data == b"[DONE]":
                            out.append(DONE)
                            outcome = None
                            # Metered before the client can see the end: a crash after
                            # the client has its whole answer must not leave it unrecorded.
                            self._finish(outcome, usage is not None, events_seen)
                            yield b"".join(out)
                            return
                        if _carries_usage(data) and (chunk := _usage_chunk(data)) is not None:
                            usage = chunk["usage"]
                            self._meter_success(usage)
                            if not self.wants_usage:
                                continue
                            data = self._with_cost(chunk)
                        elif data.find(b'"error"') >= 0 and _error_of(data) is not None:
                            # The upstream's own error event, relayed: scrub it first.
                            out.append(b"data: " + UPSTREAM_SECRETS.raw(data) + b"\n\n")
                            outcome = STREAM_ERROR
                            self._finish(outcome, usage is not None, events_seen)
                            yield b"".join(out)
                            return
                        events_seen += 1
                        out.append(b"data: " + data + b"\n\n")
                    if out:
                        yield b"".join(out)
                try:
                    block = await anext(blocks)
                except StopAsyncIteration:
                    outcome = None
                    return
        except UpstreamError as exc:
            outcome = error_class(exc)
            self._finish(outcome, usage is not None, events_seen)
            yield stream_error_event(scrub(exc.message), code="upstream_stream_interrupted")
        except asyncio.CancelledError:
            if not was_cut():
                raise  # the client hung up: nobody to tell
            # The process is stopping and the grace period is over: say so in the stream,
            # then end it as an SDK expects, rather than cutting the connection.
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            outcome = SHUTDOWN
            self._finish(outcome, usage is not None, events_seen)
            yield shutdown_event()
        finally:
            await self.upstream.close()
            self._finish(outcome, usage is not None, events_seen)

    def _meter_success(self, usage: Any) -> None:
        row = self.meter.succeeded(
            self.ctx,
            self.attempt,
            usage,
            self.upstream.request_id,
            self.started,
            ttft_ms=self.ctx.ttft_ms,
        )
        if self.on_metered is not None:
            self.on_metered(row)

    def _with_cost(self, chunk: dict[str, Any]) -> bytes:
        cost = self.ctx.attempts[-1].cost_usd if self.ctx.attempts else None
        if cost is not None:
            chunk["usage"]["cost_usd"] = float(cost)
        return orjson.dumps(chunk)

    def _finish(self, outcome: str | None, metered: bool, events_seen: int) -> None:
        """Close the call in the ledger, once (before the last bytes go out where there are
        last bytes to send, else when the relay ends)."""
        if self.finished:
            return
        self.finished = True
        if outcome == CLIENT_CANCELLED and was_cut():
            # Cut while handing a block to a client that was not reading: still the shutdown.
            outcome = SHUTDOWN
        if not metered:
            # Cut, errored or abandoned before usage arrived: providers still bill input.
            self.meter.failed(
                self.ctx,
                self.attempt,
                outcome or "no_usage",
                http_status=200,
                provider_request_id=self.upstream.request_id,
                started=self.started,
                ttft_ms=self.ctx.ttft_ms,
                output_tokens_seen=max(0, events_seen - 1),  # minus the role-only chunk
                billable=True,
            )
        elif outcome is not None and self.ctx.attempts:
            self.meter.replace_attempt(self.ctx, self.ctx.attempts[-1], error_class=outcome)
        if self.on_outcome is not None and outcome not in (CLIENT_CANCELLED, SHUTDOWN):
            # Neither a hang-up nor our own shutdown says anything about the deployment.
            self.on_outcome(outcome is None)
        status = STATUS_CLIENT_CLOSED if outcome == CLIENT_CANCELLED else 200
        self.meter.finish(self.ctx, self.plan, status, outcome, self.attempt.deployment.id)
        if self.on_end is not None:
            self.on_end()


def shutdown_event() -> bytes:
    """The end of a stream cut by shutdown: an error event (the OpenAI SDKs raise APIError
    on it; the Anthropic translation turns it into `event: error`), then `[DONE]` for
    clients that read to the end marker."""
    return (
        stream_error_event(
            "The gateway is shutting down and ended this stream before it was complete; "
            "retry the request.",
            code="gateway_shutting_down",
        )
        + DONE
    )


def stream_error_event(message: str, *, code: str) -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


_USAGE = re.compile(rb'"usage"\s*:\s*\{')


def _first_special(block: bytes) -> int:
    """Offset of the first marker that needs decoding ([DONE], an error, usage), or -1.
    Once per upstream read: plain finds first, the usage pattern only where it can be."""
    first = block.find(b"[DONE]")
    error = block.find(b'"error"')
    if error >= 0 and (first < 0 or error < first):
        first = error
    # Every chunk has `"usage"` (null until the last): searched only before `first`.
    usage = _USAGE.search(block, 0, first if first >= 0 else len(block))
    return usage.start() if usage is not None else first


def decode_events(block: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    return decoder.feed(block) + decoder.finish()


def _carries_usage(data: bytes) -> bool:
    """Cheap pre-check before parsing: since we always ask for usage, every chunk has a
    `"usage"` key, but only the last one has an object there rather than null."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return False
    colon = data.find(b":", at + 7)
    return colon > 0 and data[colon + 1 : colon + 8].lstrip()[:1] == b"{"


def _usage_chunk(data: bytes) -> dict[str, Any] | None:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if (
        isinstance(chunk, dict)
        and isinstance(chunk.get("usage"), dict)
        and not chunk.get("choices")
    ):
        return chunk
    return None


def _error_of(data: bytes) -> Any:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return chunk.get("error") if isinstance(chunk, dict) else None


def first_read_state(block: bytes, deployment: str) -> tuple[bool, UpstreamError | None]:
    """Whether the stream's opening bytes hold something worth committing to, and why
    they are unusable if they are.

    A role-only first chunk carries no answer yet, so we keep failover open until the
    first chunk with content, a tool call, a finish reason or usage — or until [DONE].
    """
    for data in _iter_events(block):
        if data == b"[DONE]":
            return True, None
        if data[:1] != b"{":
            return True, UpstreamError(
                MALFORMED, f"{deployment} sent a stream event that is not JSON"
            )
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True, UpstreamError(
                MALFORMED, f"{deployment} sent a stream event that is not JSON"
            )
        if not isinstance(event, dict):
            return True, UpstreamError(
                MALFORMED, f"{deployment} sent a stream event that is not an object"
            )
        if event.get("error") is not None:
            return True, UpstreamError(
                STREAM_ERROR, f"{deployment} reported an error", body={"error": event["error"]}
            )
        if _substantive(event):
            return True, None
    return False, None


def _iter_events(block: bytes) -> Iterator[bytes]:
    """Events' data one by one, so the caller can stop at the first that matters."""
    if block.find(b"\r") >= 0:
        block = block.replace(b"\r\n", b"\n")
    start, size = 0, len(block)
    while start < size:
        end = block.find(b"\n\n", start)
        if end < 0:
            end = size
        data = event_data(block[start:end])
        if data is not None:
            yield data
        start = end + 2


def _substantive(event: dict[str, Any]) -> bool:
    choices = event.get("choices")
    if not choices:
        return True  # usage-only or unknown shape: nothing to wait for
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            return True
        if choice.get("finish_reason") or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(v for k, v in delta.items() if k != "role"):
            return True
    return False


def replay_as_stream(body: bytes, wants_usage: bool) -> bytes:
    """A finished chat.completion as the SSE stream a client asked for (buffered routes:
    the answer had to pass the quality gate before any of it could be sent)."""
    data = orjson.loads(body)
    head = {
        "id": data.get("id", ""),
        "object": "chat.completion.chunk",
        "created": data.get("created", 0),
        "model": data.get("model", ""),
    }
    if isinstance(data.get("system_fingerprint"), str):  # the spec has no null for it
        head["system_fingerprint"] = data["system_fingerprint"]
    events: list[dict[str, Any]] = []
    for choice in data.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        events.append(_delta(head, index, {"role": "assistant", "content": ""}))
        if message.get("content"):
            events.append(_delta(head, index, {"content": message["content"]}))
        calls = [
            {**call, "index": position}
            for position, call in enumerate(message.get("tool_calls") or ())
            if isinstance(call, dict)
        ]
        if calls:
            events.append(_delta(head, index, {"tool_calls": calls}))
        events.append(_delta(head, index, {}, choice.get("finish_reason") or "stop"))
    if wants_usage and data.get("usage") is not None:
        events.append({**head, "choices": [], "usage": data["usage"]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + DONE


def _delta(
    head: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**head, "choices": [choice]}
