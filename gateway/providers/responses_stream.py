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
"""

from __future__ import annotations

from itertools import repeat
from operator import is_
from typing import Any

import orjson

from gateway.providers.responses_output import (
    content_part,
    error_code,
    function_call_item,
    message_item,
    new_id,
    reasoning_item,
    response_skeleton,
    responses_usage,
    status_for,
)
from gateway.providers.responses_replay import event_bytes, failed_event, replay_events
from gateway.providers.sse import SSEDecoder, event_data

# The replay and event helpers live beside, in responses_replay; importable from here too.
__all__ = ["StreamTranslator", "event_bytes", "failed_event", "replay_events"]

_TERMINAL = {"completed": b"response.completed", "incomplete": b"response.incomplete"}
_STARTED = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":%d,'
    b'"response":%s}\n\n'
    b'event: response.in_progress\ndata: {"type":"response.in_progress","sequence_number":%d,'
    b'"response":%s}\n\n'
)
_TERMINAL_EVENT = b'event: %s\ndata: {"type":"%s","sequence_number":%d,"response":%s}\n\n'
_LATER: dict[str, Any] = {}  # `_final` of a completed response until `response` is asked


class _Item:
    """An output item being streamed: its text so far as pieces, joined when rendered."""

    __slots__ = (
        "call_id",
        "delta",
        "done_parts",
        "id",
        "index",
        "json",
        "kind",
        "name",
        "parts",
        "pieces",
        "raw",
        "status",
    )

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.status = "in_progress"
        self.pieces: list[str] = []  # reasoning text or function arguments
        self.parts: list[tuple[str, list[str]]] = []  # message parts: (kind, pieces)
        self.raw: list[bytes] = []  # escaped text not decoded yet (the fast path's pieces)
        self.call_id = ""
        self.name = ""
        self.delta = (b"", b"")  # the bytes around a delta event's text (see `_delta_frame`)
        self.done_parts: list[bytes] = []  # a message's closed parts as JSON
        self.json = b""  # the item as JSON once done

    def fold(self) -> None:
        """Decode the escaped text pieces (the fast path's) into the last part's text: each
        is a whole JSON string's inside, so joined they are one."""
        if self.raw:
            self.parts[-1][1].append(orjson.loads(b'"' + b"".join(self.raw) + b'"'))
            self.raw.clear()

    def render(self) -> dict[str, Any]:
        self.fold()
        if self.kind == "reasoning":
            return reasoning_item(self.id, "".join(self.pieces))
        if self.kind == "message":
            parts = [(kind, "".join(pieces)) for kind, pieces in self.parts]
            return message_item(self.id, parts, self.status)
        return function_call_item(
            self.id, self.call_id, self.name, "".join(self.pieces), self.status
        )


class StreamTranslator:
    """Chat `chat.completion.chunk` SSE bytes in, Responses SSE event bytes out."""

    __slots__ = (
        "_calls",
        "_current",
        "_decoder",
        "_fast",
        "_final",
        "_finish",
        "_finished",
        "_frame",
        "_items",
        "_last_call",
        "_model_seen",
        "_partial",
        "_saw_done",
        "_seq",
        "_skeleton",
        "_started",
        "_usage",
    )

    def __init__(self, request: dict[str, Any], *, response_id: str, created_at: int) -> None:
        self._skeleton = response_skeleton(
            request, response_id=response_id, created_at=created_at, model=None
        )
        self._seq = 0
        self._decoder = SSEDecoder()
        self._partial = False  # the decoder holds part of an event (its `pending`)
        self._started = False
        self._model_seen = False  # the response names the chat's model once a chunk has one
        self._final: dict[str, Any] | None = None  # the terminal Response, once sent
        self._finish: Any = None
        self._finished = False  # a finish_reason was seen
        self._saw_done = False
        # What a plain chunk of text does now, if it can take the fast path (`_set_fast`).
        self._fast = _NO
        # The bytes around the text of the last plain chunk read, and where the text is.
        self._frame = _NO_FRAME
        self._usage: Any = None
        self._items: list[_Item] = []
        self._current: _Item | None = None  # the open reasoning or message item
        self._calls: dict[Any, _Item] = {}  # chat tool call index → its item
        self._last_call: Any = None

    # -- public -------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once a terminal event (completed, incomplete or failed) was emitted."""
        return self._final is not None

    @property
    def sequence_number(self) -> int:
        """The next sequence number to use (for an event the caller adds, e.g. failed)."""
        return self._seq

    @property
    def response(self) -> dict[str, Any]:
        """The Response so far (status in_progress until a terminal event was sent)."""
        final = self._final
        if final is _LATER:
            # Completed: the event was built from the items' JSON, the dict only now.
            final = self._final = self._whole()
        if final is not None:
            return final
        self._fold()
        response = dict(self._skeleton)
        response["output"] = [item.render() for item in self._items]
        if self._usage is not None:
            response["usage"] = responses_usage(self._usage)
        return response

    def _whole(self) -> dict[str, Any]:
        """The completed (or incomplete) Response."""
        status, details = status_for(self._finish)
        response = dict(self._skeleton)
        response["status"] = status
        response["incomplete_details"] = details
        response["output"] = [item.render() for item in self._items]
        if self._usage is not None:
            response["usage"] = responses_usage(self._usage)
        return response

    def feed(self, block: bytes) -> bytes:
        if self._final is not None:
            return b""
        if self._fast == _APPEND and not self._partial:
            # The most common read of all: one chunk of more text, most often the same
            # bytes as the last plain chunk around other text (`_frame`): compared, not
            # searched, and no call (each costs about what the whole check does).
            prefix, suffix, start, stop = self._frame
            text = block[start:stop]
            if (
                block == prefix + text + suffix
                and text
                and b'"' not in text
                and b"\n" not in text
                and text[-1:] != b"\\"
            ):
                item = self._current
                item.raw.append(text)  # type: ignore[union-attr]
                seq = self._seq
                self._seq = seq + 1
                head, tail = item.delta  # type: ignore[union-attr]
                return b'%s"%s"%s%d}\n\n' % (head, text, tail, seq)
            if block.find(b"\n\n") == len(block) - 2:
                span = _text_span(block, 0, len(block) - 2)
                if span is not None:
                    start, stop = span
                    self._frame = (block[:start], block[stop:], start, stop - len(block))
                    return self._delta_bytes(block[start:stop])
        out: list[bytes] = []
        if self._partial or b"\r" in block:
            self._handle(self._decoder.feed(block), out)  # split events, CRLF: the long way
            self._partial = self._decoder.pending
            return b"".join(out)
        # The usual read: whole `data: {chunk}` events. Runs of chunks that only add text
        # are cut out of the bytes and go out as one delta, never parsed (`_text_span`).
        pieces: list[bytes] = []
        at, size = 0, len(block)
        runs = True
        if self._fast == _APPEND and self._frame is not _NO_FRAME:
            # Plain chunks like the last one read: the run from the start (`_run`).
            at = _run(block, 0, self._frame[0], self._frame[1], pieces)
            if at < 0:
                runs, at = False, 0
        while at < size:
            end = block.find(b"\n\n", at)
            if end < 0:  # the start of an event the next read completes
                if pieces:
                    self._text_delta(pieces, out)
                    pieces = []
                self._handle(self._decoder.feed(block[at:]), out)
                self._partial = self._decoder.pending
                break
            span = _text_span(block, at, end) if self._fast else None
            if span is not None:
                start, stop = span
                if self._fast == _OPEN:
                    self._open_text(out)
                pieces.append(block[start:stop])
                after = end + 2
                self._frame = (block[at:start], block[stop:after], start - at, stop - after)
                if runs:
                    # The chunks after it, as long as they are the same bytes around other
                    # text, are one split (`_run`).
                    after = _run(block, after, block[at:start], block[stop:after], pieces)
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
        self._handle(self._decoder.finish(), out, cut=True)
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
                chunk = _decoded(payload, cut)
                if chunk is not _SKIP:
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
            chunk = _decoded(payload, cut)
            if chunk is not _SKIP and self._on(chunk, out):
                return
        if pieces:
            self._text_delta(pieces, out)

    def _set_fast(self) -> None:
        """Recompute `_fast` after a chunk took the long way (state may have changed)."""
        if not self._model_seen or self._finished or self._final is not None:
            self._fast = _NO
            return
        item = self._current
        if item is None:
            self._fast = _OPEN
        elif item.kind == "message" and item.parts and item.parts[-1][0] == "output_text":
            self._fast = _APPEND
        else:
            self._fast = _NO

    def _start_fast(self, block: bytes, at: int, end: int, out: list[bytes]) -> bool:
        """The first chunk when it only says who answers (a role, empty content): the
        response starts under the model it names, nothing else happens. Not parsed."""
        model = _role_model(block, at, end)
        if model is None:
            return False
        self._skeleton["model"] = model
        self._model_seen = True
        self._start([], out)
        self._set_fast()
        return True

    def _finish_fast(self, block: bytes, at: int, end: int, out: list[bytes]) -> bool:
        """A chunk with an empty delta and a finish reason (`_on_chunk` for it)."""
        reason = _finish_reason(block, at, end)
        if reason is None:
            return False
        self._finished = True
        self._finish = reason
        self._close_items(out)
        if self._usage is not None:
            self._close(out)
        self._set_fast()
        return True

    def _usage_fast(self, block: bytes, at: int, end: int, out: list[bytes]) -> bool:
        """The usage chunk after the finish reason (no choices): the response completes.
        Only the usage object is parsed."""
        usage = _usage_of(block, at, end)
        if usage is None:
            return False
        self._usage = usage
        self._close(out)
        return True

    def _open_text(self, out: list[bytes]) -> None:
        """`_text` opening a message for a plain chunk's text: the same events, from
        templates."""
        item = self._current = _Item("message", new_id("msg_"), len(self._items))
        self._items.append(item)
        item.parts.append(("output_text", []))
        seq = self._seq
        self._seq = seq + 2
        ident = item.id.encode()
        index = item.index
        out.append(_MESSAGE_OPENED % (index, ident, seq, ident, index, seq + 1))
        item.delta = (_TEXT_DELTA_HEAD % (ident, index), _TEXT_DELTA_TAIL)
        self._fast = _APPEND

    def _delta_bytes(self, piece: bytes) -> bytes:
        """The delta event for `piece`, escaped text as it came; decoded later, all of a
        part's pieces at once (`_fold`)."""
        item = self._current
        assert item is not None
        item.raw.append(piece)
        seq = self._seq
        self._seq = seq + 1
        head, tail = item.delta
        return b'%s"%s"%s%d}\n\n' % (head, piece, tail, seq)

    def _fold(self) -> None:
        """Decode the escaped text pieces of the open item into its text (one JSON string:
        each piece is a whole string's inside)."""
        item = self._current
        if item is not None and item.raw:
            item.fold()

    def _plain_text(self, payload: bytes) -> bytes | None:
        """`_text_span`'s text for one event's data, when it can be appended as it is."""
        if self._fast != _APPEND:
            return None
        event = b"data: " + payload
        span = _text_span(event, 0, len(event))
        return None if span is None else event[span[0] : span[1]]

    def _text_delta(self, pieces: list[bytes], out: list[bytes]) -> None:
        """One delta event for escaped text pieces: each is a whole JSON string's inside,
        so joined they are one valid JSON string, decoded once for the text."""
        out.append(self._delta_bytes(b"".join(pieces)))

    def _on(self, chunk: Any, out: list[bytes]) -> bool:
        """Handle one decoded chunk; whether the stream has ended."""
        self._fold()
        if chunk is None:
            self._saw_done = True
            self._close(out)
        elif not isinstance(chunk, dict):
            self._fail(out, "The upstream sent a stream event that is not a JSON object.")
        else:
            self._on_chunk(chunk, out)
        self._set_fast()
        return self._final is not None

    def _start(self, chunks: list[Any], out: list[bytes]) -> None:
        self._started = True
        for chunk in chunks:
            if isinstance(chunk, dict) and isinstance(chunk.get("model"), str):
                self._skeleton["model"] = chunk["model"]
                self._model_seen = True
                break
        skeleton = orjson.dumps(self._skeleton)  # once for both events
        seq = self._seq
        self._seq = seq + 2
        out.append(_STARTED % (seq, skeleton, seq + 1, skeleton))

    def _on_chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        error = chunk.get("error")
        if error is not None:
            error = error if isinstance(error, dict) else {"message": str(error)}
            message = error.get("message")
            self._fail(
                out,
                message if isinstance(message, str) and message else "The upstream failed.",
                error_code(error.get("code")),
            )
            return
        if not self._model_seen and isinstance(chunk.get("model"), str):
            # The first read held no whole chunk: created named the requested model.
            self._skeleton["model"] = chunk["model"]
            self._model_seen = True
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and not self._finished:  # nothing after the finish
                self._on_delta(delta, out)
            if choice.get("finish_reason") and not self._finished:
                self._finished = True
                self._finish = choice["finish_reason"]
                self._close_items(out)
        if self._finished and self._usage is not None:
            self._close(out)

    def _on_delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        # The hot path: most chunks carry one piece of content and nothing else.
        thought = delta.get("reasoning_content") or delta.get("reasoning")
        if thought and isinstance(thought, str):
            item = self._open("reasoning", out)
            if not item.pieces:
                part = {"type": "summary_text", "text": ""}
                self._emit(out, "response.reasoning_summary_part.added", _summary(item, part))
                item.delta = _delta_frame("response.reasoning_summary_text.delta", _summary(item))
            item.pieces.append(thought)
            self._delta(item, thought, out)
        content = delta.get("content")
        if content and isinstance(content, str):
            self._text("output_text", content, out)
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            self._text("refusal", refusal, out)
        calls = delta.get("tool_calls")
        if calls and isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._call(call, out)

    def _text(self, kind: str, text: str, out: list[bytes]) -> None:
        item = self._current
        if item is None or item.kind != "message" or item.parts[-1][0] != kind:
            item = self._open("message", out)
            if item.parts:
                self._close_part(item, out)
            item.parts.append((kind, []))
            index = len(item.parts) - 1
            self._emit(out, "response.content_part.added", _part(item, index))
            event = (
                "response.output_text.delta" if kind == "output_text" else "response.refusal.delta"
            )
            fields = {"item_id": item.id, "output_index": item.index, "content_index": index}
            item.delta = _delta_frame(event, fields, logprobs=kind == "output_text")
        item.parts[-1][1].append(text)
        self._delta(item, text, out)

    def _call(self, call: dict[str, Any], out: list[bytes]) -> None:
        key = call.get("index")
        if not isinstance(key, int):
            # Servers that omit the index: a new id starts a new call, else the last one.
            call_id = call.get("id")
            key = call_id if isinstance(call_id, str) and call_id else self._last_call
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        item = self._calls.get(key)
        if item is None:
            self._close_current(out)
            item = self._new("function_call", "fc_")
            call_id = call.get("id")
            item.call_id = call_id if isinstance(call_id, str) and call_id else new_id("call_")
            name = function.get("name")
            item.name = name if isinstance(name, str) else ""
            self._calls[key] = item
            self._emit(out, "response.output_item.added", _added(item))
            fields = {"item_id": item.id, "output_index": item.index}
            item.delta = _delta_frame("response.function_call_arguments.delta", fields)
        elif not item.name and isinstance(function.get("name"), str):
            item.name = function["name"]
        self._last_call = key
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.pieces.append(arguments)
            self._delta(item, arguments, out)

    # -- items --------------------------------------------------------------------------

    def _new(self, kind: str, prefix: str) -> _Item:
        item = _Item(kind, new_id(prefix), len(self._items))
        self._items.append(item)
        return item

    def _open(self, kind: str, out: list[bytes]) -> _Item:
        """The open item of this kind, or a new one (closing the other kind first)."""
        current = self._current
        if current is not None and current.kind == kind:
            return current
        self._close_current(out)
        item = self._current = self._new(kind, "rs_" if kind == "reasoning" else "msg_")
        self._emit(out, "response.output_item.added", _added(item))
        return item

    def _close_current(self, out: list[bytes]) -> None:
        if self._current is not None:
            self._close_item(self._current, out)
            self._current = None

    def _close_items(self, out: list[bytes]) -> None:
        """Close every open item; the last one was cut if the answer is incomplete."""
        if not self._items:
            # An answer with no output at all is still one (empty) message, as unstreamed.
            self._text_open_empty(out)
        status, _ = status_for(self._finish)
        last = self._items[-1]
        for item in self._items:
            if item.status == "in_progress":
                cut = status == "incomplete" and item is last and item.kind != "reasoning"
                self._close_item(item, out, "incomplete" if cut else "completed")
        self._current = None

    def _text_open_empty(self, out: list[bytes]) -> None:
        item = self._open("message", out)
        item.parts.append(("output_text", []))
        self._emit(out, "response.content_part.added", _part(item, 0))

    def _close_item(self, item: _Item, out: list[bytes], status: str = "completed") -> None:
        if item.status != "in_progress":
            return
        if item.kind == "reasoning":
            text = "".join(item.pieces)
            if text:
                self._emit(out, "response.reasoning_summary_text.done", _summary(item, text=text))
                part = {"type": "summary_text", "text": text}
                self._emit(out, "response.reasoning_summary_part.done", _summary(item, part))
        elif item.kind == "message":
            self._close_message(item, out, status)
            return
        else:
            fields = {"item_id": item.id, "output_index": item.index, "name": item.name}
            fields["arguments"] = "".join(item.pieces)
            self._emit(out, "response.function_call_arguments.done", fields)
        item.status = status
        item.json = orjson.dumps(item.render())
        fields = {"output_index": item.index, "item": orjson.Fragment(item.json)}
        self._emit(out, "response.output_item.done", fields)

    def _close_message(self, item: _Item, out: list[bytes], status: str) -> None:
        """The done events of a message: of its last part, then of the item (templates)."""
        index = len(item.parts) - 1
        kind, pieces = item.parts[index]
        if kind != "output_text":
            self._close_part(item, out)
            seq = self._seq
        else:
            # `_close_part` inline: the usual end of a streamed answer. Text that came
            # only by the fast path is already JSON (escaped as the upstream sent it).
            if pieces or not item.raw:
                item.fold()
                text = orjson.dumps("".join(pieces))
            else:
                text = b'"' + b"".join(item.raw) + b'"'
            ident = item.id.encode()
            seq = self._seq
            part = _TEXT_PART % text
            item.done_parts.append(part)
            out.append(_TEXT_DONE % (ident, item.index, index, text, seq))
            out.append(_PART_DONE % (ident, item.index, index, part, seq + 1))
            seq += 2
        item.status = status
        item.json = _MESSAGE % (item.id.encode(), status.encode(), b",".join(item.done_parts))
        out.append(_MESSAGE_DONE % (item.index, item.json, seq))
        self._seq = seq + 1

    def _close_part(self, item: _Item, out: list[bytes]) -> None:
        """The done events of a message's last part, from templates: its text dumped once."""
        index = len(item.parts) - 1
        kind, pieces = item.parts[index]
        text = orjson.dumps("".join(pieces))
        ident = item.id.encode()
        seq = self._seq
        self._seq = seq + 2
        if kind == "output_text":
            part = _TEXT_PART % text
            out.append(_TEXT_DONE % (ident, item.index, index, text, seq))
        else:
            part = _REFUSAL_PART % text
            out.append(_REFUSAL_DONE % (ident, item.index, index, text, seq))
        out.append(_PART_DONE % (ident, item.index, index, part, seq + 1))
        item.done_parts.append(part)

    # -- ends ---------------------------------------------------------------------------

    def _close(self, out: list[bytes]) -> None:
        """The answer is complete: close what is open and send completed / incomplete."""
        if self._final is not None:
            return
        if not self._finished:
            self._finished = True  # [DONE] without a finish reason: a normal stop
            self._close_items(out)
        status, details = status_for(self._finish)
        # The event from the items' JSON (`_close_item`); `response` makes the dict if asked.
        response = dict(self._skeleton)
        response["status"] = status
        response["incomplete_details"] = details
        response["output"] = [orjson.Fragment(item.json) for item in self._items]
        if self._usage is not None:
            response["usage"] = responses_usage(self._usage)
        kind = _TERMINAL[status]
        out.append(_TERMINAL_EVENT % (kind, kind, self._seq, orjson.dumps(response)))
        self._seq += 1
        self._final = _LATER

    def _fail(self, out: list[bytes], message: str, code: str = "server_error") -> None:
        response = self.response
        out.append(failed_event(response, message=message, code=code, sequence_number=self._seq))
        self._seq += 1
        self._final = {**response, "status": "failed", "error": {"code": code, "message": message}}

    def _delta(self, item: _Item, text: str, out: list[bytes]) -> None:
        head, tail = item.delta
        out.append(head + orjson.dumps(text) + tail + b"%d}\n\n" % self._seq)
        self._seq += 1

    def _emit(self, out: list[bytes], event_type: str, fields: dict[str, Any]) -> None:
        fields["type"] = event_type
        fields["sequence_number"] = self._seq
        self._seq += 1
        out.append(event_bytes(event_type, fields))


_NOT_JSON = object()
_SKIP = object()  # half an event at the end of a cut stream: the cut itself, not an event
_CONTENT = b'{"content":"'
_CHOICE = b'"choices":[{"index":0,"delta":'
_TEXT_TAILS = (b'"},"logprobs":null,"finish_reason":null}]', b'"},"finish_reason":null}]')
_BACKSLASH = 92
_USAGE = b'"choices":[],"usage":{'
# `_fast`: a plain chunk of text cannot take the fast path, appends to the open part, or
# opens a message (no item open).
_NO, _APPEND, _OPEN = 0, 1, 2
_NO_FRAME = (b"-", b"-", 0, 0)  # matches no block
_ROLE = b'"choices":[{"index":0,"delta":{"role":"assistant","content":""'
_CHOICE_ENDS = (
    b',"logprobs":null,"finish_reason":%s}]',
    b',"finish_reason":%s}]',
    b',"finish_reason":%s,"logprobs":null}]',
)
_CHUNK_ENDS = (b"}", b',"usage":null}')
_ROLE_TAILS = frozenset(
    delta + choice % b"null" + chunk
    for delta in (b"}", b',"refusal":null}')
    for choice in _CHOICE_ENDS
    for chunk in _CHUNK_ENDS
)
_FINISH_TAILS = {
    b"{}" + choice % b'"%s"' % reason.encode() + chunk: reason
    for reason in ("stop", "length", "tool_calls", "content_filter")
    for choice in _CHOICE_ENDS
    for chunk in _CHUNK_ENDS
}
# Event templates for the message's structural events (the same JSON `_emit` would make).
_MESSAGE_OPENED = (
    b"event: response.output_item.added\n"
    b'data: {"type":"response.output_item.added","output_index":%d,"item":{"id":"%s",'
    b'"type":"message","role":"assistant","status":"in_progress","content":[]},'
    b'"sequence_number":%d}\n\n'
    b"event: response.content_part.added\n"
    b'data: {"type":"response.content_part.added","item_id":"%s","output_index":%d,'
    b'"content_index":0,"part":{"type":"output_text","text":"","annotations":[],'
    b'"logprobs":[]},"sequence_number":%d}\n\n'
)
_TEXT_DELTA_HEAD = (
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","item_id":"%s","output_index":%d,'
    b'"content_index":0,"delta":'
)
_TEXT_DELTA_TAIL = b',"logprobs":[],"sequence_number":'
_TEXT_PART = b'{"type":"output_text","text":%s,"annotations":[],"logprobs":[]}'
_REFUSAL_PART = b'{"type":"refusal","refusal":%s}'
_TEXT_DONE = (
    b"event: response.output_text.done\n"
    b'data: {"type":"response.output_text.done","item_id":"%s","output_index":%d,'
    b'"content_index":%d,"text":%s,"logprobs":[],"sequence_number":%d}\n\n'
)
_REFUSAL_DONE = (
    b"event: response.refusal.done\n"
    b'data: {"type":"response.refusal.done","item_id":"%s","output_index":%d,'
    b'"content_index":%d,"refusal":%s,"sequence_number":%d}\n\n'
)
_PART_DONE = (
    b"event: response.content_part.done\n"
    b'data: {"type":"response.content_part.done","item_id":"%s","output_index":%d,'
    b'"content_index":%d,"part":%s,"sequence_number":%d}\n\n'
)
_MESSAGE = b'{"id":"%s","type":"message","role":"assistant","status":"%s","content":[%s]}'
_MESSAGE_DONE = (
    b"event: response.output_item.done\n"
    b'data: {"type":"response.output_item.done","output_index":%d,"item":%s,'
    b'"sequence_number":%d}\n\n'
)


def _text_span(block: bytes, at: int, end: int) -> tuple[int, int] | None:
    """Where the escaped text (a JSON string's inside) is in the event `block[at:end]` when
    it is a chunk whose only news is more text — one choice, a delta of non-empty `content`
    alone, no finish reason, no usage — as OpenAI, vLLM and SGLang send most chunks; else
    None.

    Short searches and fixed-place comparisons only: the chunk is not parsed. The text
    ends at the first `"}` after it starts unless that quote is escaped, and a text that
    ends in a backslash takes the long way rather than be told apart from one."""
    if not block.startswith(b"data: {", at):
        return None
    head = block.rfind(_CONTENT, at, end)
    if head < 0 or not block.startswith(_CHOICE, head - len(_CHOICE)):
        return None
    start = head + len(_CONTENT)
    stop = block.find(b'"}', start, end)
    if stop <= start or block[stop - 1] == _BACKSLASH:
        return None
    for tail in _TEXT_TAILS:
        if block.startswith(tail, stop):
            rest = stop + len(tail)
            break
    else:
        return None
    if end - rest > 1 and block.find(b'"usage":{', rest, end) >= 0:
        return None
    return start, stop


def _run(block: bytes, at: int, prefix: bytes, suffix: bytes, pieces: list[bytes]) -> int:
    """The texts of the plain chunks from `at` on that are the chunk `_text_span` just
    read with other text (`prefix` text `suffix`: one stream's chunks differ in their text
    alone), added to `pieces`; where the events after them start, or -1 when the run
    cannot be told apart in one go (the caller reads event by event).

    One split of the bytes at `{"content":"`, which ends the prefix and cannot occur in a
    JSON string (its quotes would be escaped): each piece then ends with the suffix and
    the prefix's start if the next chunk is another plain one. A piece is a whole chunk's
    text if it holds no newline (no event boundary), no quote that ends a string, and no
    backslash at its end (one escaping the suffix's quote). C loops only (`map`): every
    Python operation per chunk would cost about what the whole run does."""
    if not block.startswith(prefix, at):
        return at
    joint = suffix + prefix[: -len(_CONTENT)]
    segments = block[at + len(prefix) :].split(_CONTENT)
    texts = list(map(bytes.removesuffix, segments, repeat(joint)))
    kept = list(map(is_, texts, segments))  # True: not a text followed by another chunk
    if True in kept:
        count = kept.index(True)
        del texts[count:]
        # Its text ends with the suffix too if it is the last plain chunk before others.
        last = segments[count]
        stop = last.find(suffix)
        if stop >= 0 and b"\n" not in last[:stop]:
            texts.append(last[:stop])
    if not texts:
        return at
    joined = b"".join(texts)
    if b"\n" in joined or not _no_end_quote(joined):
        return -1
    if b"\\" in joined and any(map(bytes.endswith, texts, repeat(b"\\"))):
        return -1
    pieces.append(joined)
    # Each text was one whole event: its prefix, the text, its suffix.
    return at + len(texts) * (len(prefix) + len(suffix)) + len(joined)


def _no_end_quote(text: bytes) -> bool:
    """Whether every quote in escaped text is escaped (the pairs `\\\\` escape nothing)."""
    if b'"' not in text:
        return True
    bare = text.replace(b"\\\\", b"")
    return bare.count(b'"') == bare.count(b'\\"')


def _role_model(block: bytes, at: int, end: int) -> str | None:
    """The model of the event `block[at:end]` when it is a chunk that only gives the
    assistant role with empty content (the usual first chunk); else None."""
    if not block.startswith(b"data: {", at):
        return None
    choice = block.find(_ROLE, at, end)
    if choice < 0 or block[choice + len(_ROLE) : end] not in _ROLE_TAILS:
        return None
    name = block.find(b'"model":"', at, choice)
    before = block[at:choice]
    if name < 0 or b'"usage":{' in before or b'"error"' in before:
        return None
    name += 9
    close = block.find(b'"', name, choice)
    model = block[name:close]
    if close < 0 or b"\\" in model:
        return None
    try:
        return model.decode()
    except UnicodeDecodeError:
        return None


def _finish_reason(block: bytes, at: int, end: int) -> str | None:
    """The finish reason of the event `block[at:end]` when it is a chunk with an empty
    delta and a finish reason only; else None."""
    if not block.startswith(b"data: {", at):
        return None
    choice = block.rfind(_CHOICE, at, end)
    if choice < 0:
        return None
    reason = _FINISH_TAILS.get(block[choice + len(_CHOICE) : end])
    before = block[at:choice]
    if reason is None or b'"usage":{' in before or b'"error"' in before:
        return None
    return reason


def _usage_of(block: bytes, at: int, end: int) -> dict[str, Any] | None:
    """The usage of the event `block[at:end]` when it is a chunk with no choices and
    usage as its last member (the usual last chunk); else None."""
    start = block.find(_USAGE, at, end)
    if start < 0 or not block.startswith(b"data: {", at) or block.find(b'"error"', at, start) >= 0:
        return None
    try:
        # The object, then the chunk's closing brace: a JSON object or no parse at all.
        usage: dict[str, Any] = orjson.loads(block[start + len(_USAGE) - 1 : end - 1])
    except orjson.JSONDecodeError:
        return None
    return usage


def _decoded(payload: bytes, cut: bool) -> Any:
    """A payload as a chunk: None for `[DONE]`, `_NOT_JSON` for garbage, `_SKIP` for the
    unfinished last event of a cut stream."""
    if payload.strip() == b"[DONE]":
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _SKIP if cut else _NOT_JSON


def _delta_frame(
    event_type: str, fields: dict[str, Any], *, logprobs: bool = False
) -> tuple[bytes, bytes]:
    """The bytes of a delta event before and after its text, built once per item or part:
    the event per chunk is then two concatenations and one small orjson call."""
    body = orjson.dumps({"type": event_type, **fields})[:-1]
    head = b"event: " + event_type.encode() + b"\ndata: " + body + b',"delta":'
    tail = b',"logprobs":[],"sequence_number":' if logprobs else b',"sequence_number":'
    return head, tail


def _added(item: _Item) -> dict[str, Any]:
    return {"output_index": item.index, "item": item.render()}


def _part(item: _Item, index: int) -> dict[str, Any]:
    kind = item.parts[index][0]
    part = content_part(kind, "")
    return {"item_id": item.id, "output_index": item.index, "content_index": index, "part": part}


def _summary(item: _Item, part: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    out = {"item_id": item.id, "output_index": item.index, "summary_index": 0, **fields}
    if part is not None:
        out["part"] = part
    return out
