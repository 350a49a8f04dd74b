"""Chat completion chunks (SSE) → the Responses API's typed stream events, and replays.

Pure, no I/O, on the hot path (one `feed` per upstream read): orjson, no pydantic, event
bytes built directly. Every event is `event: <type>\\ndata: <json>\\n\\n`, its data carries
the same `type` and a `sequence_number` counting from 0; there is no `[DONE]`.

Items are opened in the order their first delta arrives (reasoning, message, function calls
in a chat stream) and a reasoning or message item is closed when the next item starts.
Function call items stay open until the answer ends: a server that interleaves the argument
pieces of parallel calls (OpenAI does not, a few others may) still gets every piece into its
own item, and the end follows the last call at once anyway. The closing `response.completed`
(or `.incomplete`) must carry usage, which comes in a chunk after the finish reason, so it is
sent when the usage chunk or `[DONE]` arrives.

This module owns `StreamTranslator` and its fast path: reads of whole events whose chunks
are recognised in their bytes (`responses_chunks`) and answered from byte templates
(`responses_frames`); everything else takes the long way of its base, `ItemStream`
(`responses_items`), which holds the state, the items and the terminal events.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.responses_chunks import (
    SKIP,
    chunk_heads,
    decoded,
    finish_reason_after,
    role_model,
    text_run,
    text_span,
    usage_after,
)
from gateway.providers.responses_frames import (
    MESSAGE_OPENED,
    STARTED,
    STARTED_AT_0,
    TERMINAL,
    TEXT_DELTA_HEAD,
    TEXT_DELTA_TAIL,
    Item,
    message_end,
    message_json,
    terminal_event,
    text_part,
)
from gateway.providers.responses_items import (
    FAST_APPEND,
    FAST_OPEN,
    LATER,
    NO_FRAME,
    ItemStream,
)
from gateway.providers.responses_opening import joined_opening, joined_terminal, plain_values
from gateway.providers.responses_output import new_id, responses_usage, status_for
from gateway.providers.responses_replay import event_bytes, failed_event, replay_events
from gateway.providers.sse import event_data

# The replay and event helpers live beside, in responses_replay; importable from here too.
__all__ = ["StreamTranslator", "event_bytes", "failed_event", "replay_events"]


class StreamTranslator(ItemStream):
    """Chat `chat.completion.chunk` SSE bytes in, Responses SSE event bytes out."""

    __slots__ = ()

    # -- public -------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once a terminal event (completed, incomplete or failed) was emitted."""
        return self._final is not None

    @property
    def sequence_number(self) -> int:
        """The next sequence number to use (for an event the caller adds, e.g. failed)."""
        return self._seq

    def feed(self, block: bytes) -> bytes:
        if self._final is not None:
            return b""
        if self._tail:
            # The start of an event the last read ended in: completed by this one, and
            # then read the usual way (a busy upstream's reads end mid-event more often
            # than not; decoding and parsing every chunk after such a read cost a
            # translated stream ~10 % of its CPU under load).
            block = self._tail + block
            self._tail = b""
        if self._fast == FAST_APPEND and not self._partial:
            # The most common read of all: one chunk of more text, most often the same
            # bytes as the last plain chunk around other text (`_frame`): compared, not
            # searched, and no call (each costs about what the whole check does); `find`, not
            # `in` (see gateway/providers/responses_chunks.py).
            prefix, suffix, start, stop = self._frame
            text = block[start:stop]
            if (
                block == prefix + text + suffix
                and text
                and text.find(b'"') < 0
                and text.find(b"\n") < 0
                and text[-1:] != b"\\"
            ):
                item = self._current
                item.raw.append(text)  # type: ignore[union-attr]
                seq = self._seq
                self._seq = seq + 1
                self._deltas += 1
                head, tail = item.delta  # type: ignore[union-attr]
                return b'%s"%s"%s%d}\n\n' % (head, text, tail, seq)
            if block.find(b"\n\n") == len(block) - 2:
                span = text_span(block, 0, len(block) - 2)
                if span is not None:
                    start, stop = span
                    self._frame = (block[:start], block[stop:], start, stop - len(block))
                    return self._delta_bytes(block[start:stop])
        out: list[bytes] = []
        if self._partial or block.find(b"\r") >= 0:
            decoder = self._sse()
            self._handle(decoder.feed(block), out)  # split events, CRLF: the long way
            self._partial = decoder.pending
            return b"".join(out)
        # The usual read: whole `data: {chunk}` events. Runs of chunks that only add text
        # are cut out of the bytes and go out as one delta, never parsed (`text_span`).
        pieces: list[bytes] = []
        at, size = 0, len(block)
        runs = True
        if self._fast == FAST_APPEND and self._frame is not NO_FRAME:
            # Plain chunks like the last one read: the run from the start (`text_run`).
            at = text_run(block, 0, self._frame[0], self._frame[1], pieces)
            if at < 0:
                runs, at = False, 0
        while at < size:
            end = block.find(b"\n\n", at)
            if end < 0:  # the start of an event the next read completes: kept as it is
                if pieces:
                    self._text_delta(pieces, out)
                    pieces = []
                self._tail = block[at:]
                if not self._started:
                    self._start([], out)  # the response starts at the first read
                break
            span = text_span(block, at, end) if self._fast else None
            if span is not None:
                start, stop = span
                if self._fast == FAST_OPEN:
                    self._open_text(out)
                pieces.append(block[start:stop])
                after = end + 2
                self._frame = (block[at:start], block[stop:after], start - at, stop - after)
                if runs:
                    # The chunks after it, as long as they are the same bytes around other
                    # text, are one split (`text_run`).
                    after = text_run(block, after, block[at:start], block[stop:after], pieces)
                    if after < 0:
                        runs, after = False, end + 2
                at = after
                continue
            if pieces:
                self._text_delta(pieces, out)
                pieces = []
            if not self._started and self._start_fast(block, at, end, out):
                at = end + 2
                continue
            if self._fast and self._finish_fast(block, at, end, out):
                if self._final is not None:
                    return b"".join(out)
                at = end + 2
                continue
            if self._finished and self._usage_fast(block, at, end, out):
                return b"".join(out)
            payload = event_data(block[at:end])
            if payload is not None:
                self._handle([payload], out)
                if self._final is not None:
                    return b"".join(out)
            at = end + 2
        if pieces:
            delta = self._delta_bytes(b"".join(pieces))
            if not out:
                return delta  # a read of text alone
            out.append(delta)
        return b"".join(out)

    def finish(self) -> bytes:
        """The upstream ended: close normally if it completed (`[DONE]`, or at least a
        finish reason), else b"" and the caller reports the cut (`failed_event`)."""
        if self._final is not None or not self._started:
            return b""
        out: list[bytes] = []
        # A last event without its blank line still counts; half an event is the cut itself.
        self._partial = False
        if self._tail:
            self._handle(self._sse().feed(self._tail), out)
            self._tail = b""
        self._handle(self._sse().finish(), out, cut=True)
        if self._final is None and (self._saw_done or self._finished):
            self._close(out)
        return b"".join(out)

    # -- chunks -------------------------------------------------------------------------

    def _handle(self, payloads: list[bytes], out: list[bytes], *, cut: bool = False) -> None:
        rest = payloads
        if not self._started:
            # Decoded up to the first chunk that names the model (created names it).
            chunks: list[Any] = []
            count = 0
            for count, payload in enumerate(payloads, 1):  # noqa: B007 (used after)
                chunk = decoded(payload, cut)
                if chunk is not SKIP:
                    chunks.append(chunk)
                if isinstance(chunk, dict) and isinstance(chunk.get("model"), str):
                    break
            rest = payloads[count:] if payloads else []
            self._start(chunks, out)
            for chunk in chunks:
                if self._on(chunk, out):
                    return
        # Text pieces that arrived in one read go out as one delta: the client gets them in
        # one write anyway, and each event costs a frame, bytes and a sequence number.
        pieces: list[bytes] = []
        for payload in rest:
            piece = self._plain_text(payload)
            if piece is not None:
                pieces.append(piece)
                continue
            if pieces:
                self._text_delta(pieces, out)
                pieces = []
            chunk = decoded(payload, cut)
            if chunk is not SKIP and self._on(chunk, out):
                return
        if pieces:
            self._text_delta(pieces, out)

    def _start_fast(self, block: bytes, at: int, end: int, out: list[bytes]) -> bool:
        """The first chunk when it only says who answers (a role, empty content): the
        response starts under the model it names, nothing else happens. Not parsed."""
        model = role_model(block, at, end)
        if model is None:
            return False
        self._name_model(model)
        self._start([], out)
        self._set_fast()
        return True

    def _finish_fast(self, block: bytes, at: int, end: int, out: list[bytes]) -> bool:
        """A chunk with an empty delta and a finish reason (`_on_chunk` for it). Told
        by its head when it starts as the stream's text chunks do (`chunk_heads`)."""
        prefix = self._frame[0]
        heads = self._heads
        if heads[0] is not prefix:
            heads = self._heads = chunk_heads(prefix)
        reason = finish_reason_after(block, at, end, heads[1])
        if reason is None:
            return False
        self._finished = True
        self._finish = reason
        if self._usage is None and self._end_at_once(block, end + 2, heads[2], out):
            return True
        self._close_items(out)
        if self._usage is not None:
            self._close(out)
        self._set_fast()
        return True

    def _end_at_once(self, block: bytes, at: int, usage_head: bytes, out: list[bytes]) -> bool:
        """`_close_items` then `_close` when the finish chunk's read also holds the usage
        chunk (`block[at:]`: upstreams send them back to back) and the answer is the usual
        one — a single message of text that came by the fast path, for a request whose
        Response is the template's: its done events and the terminal one joined in one go,
        the same bytes (tests/unit/test_responses_fast_paths_stream.py). Else False,
        nothing changed."""
        item = self._current
        values = self._opening_values
        if (
            values is None
            or item is None
            or len(self._items) != 1
            or len(item.parts) != 1
            or item.parts[0][1]
            or not item.raw
            or self._current_model() != self._opening[1]
        ):
            return False
        end = block.find(b"\n\n", at)
        usage = usage_after(block, at, end, usage_head) if end > 0 else None
        if usage is None:
            return False
        self._usage = usage
        status, details = status_for(self._finish)
        final_usage = self._final_usage = responses_usage(usage)
        # `_close_message`: the text is JSON already (escaped as the upstream sent it).
        text = b'"' + b"".join(item.raw) + b'"'
        ident = item.id.encode()
        part = text_part(text)
        state = status.encode()
        item.json = message_json(ident, state, part)
        item.done_parts.append(part)
        item.status = status
        seq = self._seq
        done = b"null" if details is None else orjson.dumps(details)
        tail = b',"usage":%s}' % orjson.dumps(final_usage)
        response = joined_terminal(values, state, done, item.json, tail)
        out.append(message_end(ident, b"%d" % item.index, text, part, item.json, seq))
        out.append(terminal_event(TERMINAL[status], seq + 3, response))
        self._seq = seq + 4
        self._current = None
        self._final = LATER
        return True

    def _usage_fast(self, block: bytes, at: int, end: int, out: list[bytes]) -> bool:
        """The usage chunk after the finish reason (no choices): the response completes.
        Only the usage object is parsed."""
        usage = usage_after(block, at, end, self._heads[2])
        if usage is None:
            return False
        self._usage = usage
        self._close(out)
        return True

    def _open_text(self, out: list[bytes]) -> None:
        """`_text` opening a message for a plain chunk's text: the same events, from
        templates."""
        item = self._current = Item("message", new_id("msg_"), len(self._items))
        self._items.append(item)
        item.parts.append(("output_text", []))
        seq = self._seq
        self._seq = seq + 2
        ident = item.id.encode()
        index = item.index
        out.append(MESSAGE_OPENED % (index, ident, seq, ident, index, seq + 1))
        item.delta = (TEXT_DELTA_HEAD % (ident, index), TEXT_DELTA_TAIL)
        self._fast = FAST_APPEND

    def _delta_bytes(self, piece: bytes) -> bytes:
        """The delta event for `piece`, escaped text as it came; decoded later, all of a
        part's pieces at once (`_fold`)."""
        item = self._current
        assert item is not None
        item.raw.append(piece)
        seq = self._seq
        self._seq = seq + 1
        self._deltas += 1
        head, tail = item.delta
        return b'%s"%s"%s%d}\n\n' % (head, piece, tail, seq)

    def _plain_text(self, payload: bytes) -> bytes | None:
        """`text_span`'s text for one event's data, when it can be appended as it is."""
        if self._fast != FAST_APPEND:
            return None
        event = b"data: " + payload
        span = text_span(event, 0, len(event))
        return None if span is None else event[span[0] : span[1]]

    def _text_delta(self, pieces: list[bytes], out: list[bytes]) -> None:
        """One delta event for escaped text pieces: each is a whole JSON string's inside,
        so joined they are one valid JSON string, decoded once for the text."""
        out.append(self._delta_bytes(b"".join(pieces)))

    def _start(self, chunks: list[Any], out: list[bytes]) -> None:
        self._started = True
        for chunk in chunks:
            if isinstance(chunk, dict) and isinstance(chunk.get("model"), str):
                self._name_model(chunk["model"])
                break
        # Once for both events (and the end's); the usual request's from a template.
        if self._skeleton is None:
            values = self._opening_values = plain_values(
                self._request, self._response_id, self._created_at, self._model
            )
            skeleton = joined_opening(values)
        else:
            skeleton = orjson.dumps(self._skeleton)
        self._opening = (skeleton, self._current_model())
        seq = self._seq
        self._seq = seq + 2
        if seq == 0:
            head, middle, tail = STARTED_AT_0
            out.append(b"".join((head, skeleton, middle, skeleton, tail)))
        else:
            out.append(STARTED % (seq, skeleton, seq + 1, skeleton))
