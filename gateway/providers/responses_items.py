"""The Responses stream translator's state and its long way: decoded chat chunks.

`ItemStream` is `StreamTranslator`'s base: it holds the stream's state and turns decoded
chunks (the ones the byte-level fast path in `responses_stream` does not recognise) into
events — reasoning, message parts, refusals and function calls as output items opened in
the order their first delta arrives and closed when the next starts or the answer ends —
and sends the terminal event (completed, incomplete or failed).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.responses_chunks import NO_HEADS
from gateway.providers.responses_frames import (
    MESSAGE,
    MESSAGE_DONE,
    PART_DONE,
    REFUSAL_DONE,
    REFUSAL_PART,
    TERMINAL,
    TERMINAL_EVENT,
    TEXT_DONE,
    TEXT_PART,
    Item,
    added,
    delta_frame,
    part_fields,
    summary,
)
from gateway.providers.responses_opening import joined_terminal, plain_echo
from gateway.providers.responses_output import (
    error_code,
    new_id,
    response_skeleton,
    responses_usage,
    status_for,
)
from gateway.providers.responses_replay import event_bytes, failed_event
from gateway.providers.sse import SSEDecoder

# The opening Response's state and empty output, replaced in the terminal one (`_terminal`).
_IN_PROGRESS = b',"status":"in_progress","error":null,"incomplete_details":null,'
_NO_OUTPUT = b',"output":[],'
_TERMINAL_RESPONSE = b'%s,"status":"%s","error":null,"incomplete_details":%s%s,"output":[%s]%s%s'
LATER: dict[str, Any] = {}  # `_final` of a completed response until `response` is asked
# `_fast`: a plain chunk of text cannot take the fast path, appends to the open part, or
# opens a message (no item open).
FAST_NO, FAST_APPEND, FAST_OPEN = 0, 1, 2
NO_FRAME = (b"-", b"-", 0, 0)  # matches no block


class ItemStream:
    """A Responses stream's state, and decoded chunks into its items' events (the long
    way; `StreamTranslator` adds the byte-level fast path on top)."""

    __slots__ = (
        "_calls",
        "_created_at",
        "_current",
        "_decoder",
        "_deltas",
        "_fast",
        "_final",
        "_final_usage",
        "_finish",
        "_finished",
        "_frame",
        "_heads",
        "_items",
        "_last_call",
        "_model",
        "_model_seen",
        "_opening",
        "_opening_values",
        "_partial",
        "_request",
        "_response_id",
        "_saw_done",
        "_seq",
        "_skeleton",
        "_started",
        "_tail",
        "_usage",
    )

    def __init__(self, request: dict[str, Any], *, response_id: str, created_at: int) -> None:
        self._request = request
        self._response_id = response_id
        self._created_at = created_at
        self._model: Any = None  # the model a chunk named (None: the requested one)
        # The in-progress Response (`_base`); for the usual request made only if asked,
        # the opening events' JSON coming from a template (`plain_opening`).
        self._skeleton: dict[str, Any] | None = (
            None
            if plain_echo(request)
            else response_skeleton(
                request, response_id=response_id, created_at=created_at, model=None
            )
        )
        self._seq = 0
        self._deltas = 0  # delta events written (a cut stream's output estimate)
        self._decoder: SSEDecoder | None = None  # for the long way only (`_sse`)
        self._partial = False  # the decoder holds part of an event (its `pending`)
        self._tail = b""  # the start of an event the last read ended in (the fast way)
        self._started = False
        self._model_seen = False  # the response names the chat's model once a chunk has one
        self._final: dict[str, Any] | None = None  # the terminal Response, once sent
        self._finish: Any = None
        self._finished = False  # a finish_reason was seen
        self._saw_done = False
        # What a plain chunk of text does now, if it can take the fast path (`_set_fast`).
        self._fast = FAST_NO
        # The bytes around the text of the last plain chunk read, and where the text is.
        self._frame = NO_FRAME
        # The heads of its finish and usage chunks, from the frame's prefix (`chunk_heads`).
        self._heads = NO_HEADS
        self._usage: Any = None
        self._final_usage: dict[str, Any] | None = None  # `_usage` as the terminal event said
        # The Response as `response.created` sent it, and the model it named (`_terminal`).
        self._opening: tuple[bytes, Any] = (b"", None)
        # The opening Response's own values when it came from the template (`plain_values`).
        self._opening_values: tuple[bytes, bytes, bytes, bytes, bytes] | None = None
        self._items: list[Item] = []
        self._current: Item | None = None  # the open reasoning or message item
        self._calls: dict[Any, Item] | None = None  # chat tool call index → its item
        self._last_call: Any = None

    @property
    def delta_events(self) -> int:
        """The delta events written so far: what a stream cut before its usage is
        estimated to have generated (gateway/core/responses_relay.py)."""
        return self._deltas

    def ended(self) -> bool | None:
        """None while the stream runs; once a terminal event is written, True for an answer
        (completed or incomplete), False for a failed response."""
        final = self._final
        if final is None:
            return None
        return final is LATER or final.get("status") != "failed"

    def final_usage(self) -> dict[str, Any] | None:
        """The usage the terminal event reports (Responses names), without building the
        Response."""
        if self._final_usage is not None:
            return self._final_usage  # the terminal event's, made once
        return responses_usage(self._usage) if self._usage is not None else None

    def opening(self) -> tuple[bool, dict[str, Any] | None]:
        """What the events written so far commit to, known without reading them back:
        (whether content or an end was written, the error of a response that failed
        before any content — the caller may still fail over)."""
        final = self._final
        if self._items:
            return True, None  # content went out first: a failure after it is relayed
        if final is not None and final is not LATER and final.get("status") == "failed":
            return True, final.get("error") or {}
        return final is not None, None

    @property
    def response(self) -> dict[str, Any]:
        """The Response so far (status in_progress until a terminal event was sent)."""
        final = self._final
        if final is LATER:
            # Completed: the event was built from the items' JSON, the dict only now.
            final = self._final = self._whole()
        if final is not None:
            return final
        self._fold()
        response = dict(self._base())
        response["output"] = [item.render() for item in self._items]
        if self._usage is not None:
            response["usage"] = responses_usage(self._usage)
        return response

    def _whole(self) -> dict[str, Any]:
        """The completed (or incomplete) Response."""
        status, details = status_for(self._finish)
        response = dict(self._base())
        response["status"] = status
        response["incomplete_details"] = details
        response["output"] = [item.render() for item in self._items]
        if self._usage is not None:
            response["usage"] = responses_usage(self._usage)
        return response

    def _sse(self) -> SSEDecoder:
        """The SSE decoder of the long way, made when a read first takes it (most streams'
        reads never do)."""
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = SSEDecoder()
        return decoder

    def _base(self) -> dict[str, Any]:
        """The in-progress Response with no output (made now if it was left to a template)."""
        skeleton = self._skeleton
        if skeleton is None:
            skeleton = self._skeleton = response_skeleton(
                self._request,
                response_id=self._response_id,
                created_at=self._created_at,
                model=self._model,
            )
        return skeleton

    def _name_model(self, model: str) -> None:
        """The Response names the model a chunk named (the first one to name one)."""
        self._model = model
        self._model_seen = True
        if self._skeleton is not None:
            self._skeleton["model"] = model

    def _current_model(self) -> Any:
        """The model the Response names now."""
        if self._skeleton is not None:
            return self._skeleton["model"]
        model = self._model
        return model if model.__class__ is str else str(self._request.get("model") or "")

    def _set_fast(self) -> None:
        """Recompute `_fast` after a chunk took the long way (state may have changed)."""
        if not self._model_seen or self._finished or self._final is not None:
            self._fast = FAST_NO
            return
        item = self._current
        if item is None:
            self._fast = FAST_OPEN
        elif item.kind == "message" and item.parts and item.parts[-1][0] == "output_text":
            self._fast = FAST_APPEND
        else:
            self._fast = FAST_NO

    def _fold(self) -> None:
        """Decode the escaped text pieces of the open item into its text (one JSON string:
        each piece is a whole string's inside)."""
        item = self._current
        if item is not None and item.raw:
            item.fold()

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
            self._name_model(chunk["model"])
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
                self._emit(out, "response.reasoning_summary_part.added", summary(item, part))
                item.delta = delta_frame("response.reasoning_summary_text.delta", summary(item))
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
            self._emit(out, "response.content_part.added", part_fields(item, index))
            event = (
                "response.output_text.delta" if kind == "output_text" else "response.refusal.delta"
            )
            fields = {"item_id": item.id, "output_index": item.index, "content_index": index}
            item.delta = delta_frame(event, fields, logprobs=kind == "output_text")
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
        calls = self._calls
        if calls is None:
            calls = self._calls = {}
        item = calls.get(key)
        if item is None:
            self._close_current(out)
            item = self._new("function_call", "fc_")
            call_id = call.get("id")
            item.call_id = call_id if isinstance(call_id, str) and call_id else new_id("call_")
            name = function.get("name")
            item.name = name if isinstance(name, str) else ""
            calls[key] = item
            self._emit(out, "response.output_item.added", added(item))
            fields = {"item_id": item.id, "output_index": item.index}
            item.delta = delta_frame("response.function_call_arguments.delta", fields)
        elif not item.name and isinstance(function.get("name"), str):
            item.name = function["name"]
        self._last_call = key
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.pieces.append(arguments)
            self._delta(item, arguments, out)

    # -- items --------------------------------------------------------------------------

    def _new(self, kind: str, prefix: str) -> Item:
        item = Item(kind, new_id(prefix), len(self._items))
        self._items.append(item)
        return item

    def _open(self, kind: str, out: list[bytes]) -> Item:
        """The open item of this kind, or a new one (closing the other kind first)."""
        current = self._current
        if current is not None and current.kind == kind:
            return current
        self._close_current(out)
        item = self._current = self._new(kind, "rs_" if kind == "reasoning" else "msg_")
        self._emit(out, "response.output_item.added", added(item))
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
        self._emit(out, "response.content_part.added", part_fields(item, 0))

    def _close_item(self, item: Item, out: list[bytes], status: str = "completed") -> None:
        if item.status != "in_progress":
            return
        if item.kind == "reasoning":
            text = "".join(item.pieces)
            if text:
                self._emit(out, "response.reasoning_summary_text.done", summary(item, text=text))
                part = {"type": "summary_text", "text": text}
                self._emit(out, "response.reasoning_summary_part.done", summary(item, part))
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

    def _close_message(self, item: Item, out: list[bytes], status: str) -> None:
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
            part = TEXT_PART % text
            item.done_parts.append(part)
            out.append(TEXT_DONE % (ident, item.index, index, text, seq))
            out.append(PART_DONE % (ident, item.index, index, part, seq + 1))
            seq += 2
        item.status = status
        item.json = MESSAGE % (item.id.encode(), status.encode(), b",".join(item.done_parts))
        out.append(MESSAGE_DONE % (item.index, item.json, seq))
        self._seq = seq + 1

    def _close_part(self, item: Item, out: list[bytes]) -> None:
        """The done events of a message's last part, from templates: its text dumped once."""
        index = len(item.parts) - 1
        kind, pieces = item.parts[index]
        text = orjson.dumps("".join(pieces))
        ident = item.id.encode()
        seq = self._seq
        self._seq = seq + 2
        if kind == "output_text":
            part = TEXT_PART % text
            out.append(TEXT_DONE % (ident, item.index, index, text, seq))
        else:
            part = REFUSAL_PART % text
            out.append(REFUSAL_DONE % (ident, item.index, index, text, seq))
        out.append(PART_DONE % (ident, item.index, index, part, seq + 1))
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
        usage = self._final_usage = (
            responses_usage(self._usage) if self._usage is not None else None
        )
        kind = TERMINAL[status]
        out.append(TERMINAL_EVENT % (kind, kind, self._seq, self._terminal(status, details, usage)))
        self._seq += 1
        self._final = LATER

    def _terminal(self, status: str, details: Any, usage: dict[str, Any] | None) -> bytes:
        """The terminal Response's JSON, from the items' JSON (`_close_item`): `response`
        makes the dict only if asked. Usually the opening Response's bytes with its status,
        details and output replaced (no dict copied, the settings not dumped again): the
        same bytes `orjson.dumps` gives (tests/unit/test_responses_fast_paths.py)."""
        opening, model = self._opening
        skeleton = self._skeleton
        items = b",".join([item.json for item in self._items])
        plain = skeleton is None or skeleton["instructions"].__class__ is not list
        if opening and plain and self._current_model() == model:
            done = b"null" if details is None else orjson.dumps(details)
            tail = b',"usage":%s}' % orjson.dumps(usage) if usage is not None else b"}"
            values = self._opening_values
            if values is not None:  # the usual request's: the template again
                return joined_terminal(values, status.encode(), done, items, tail)
            # Before the output come only the id, object, created_at, status, error, details,
            # instructions (a string), max_output_tokens and model: no string can hold an
            # unescaped quote, so the first matches are the Response's own members.
            state = opening.find(_IN_PROGRESS)
            output = opening.find(_NO_OUTPUT, state)
            if state > 0 and output > 0:
                return _TERMINAL_RESPONSE % (
                    opening[:state],
                    status.encode(),
                    done,
                    opening[state + len(_IN_PROGRESS) - 1 : output],
                    items,
                    opening[output + len(_NO_OUTPUT) - 1 : -1],
                    tail,
                )
        response = dict(self._base())
        response["status"] = status
        response["incomplete_details"] = details
        response["output"] = orjson.Fragment(b"[%s]" % items)
        if usage is not None:
            response["usage"] = usage
        return orjson.dumps(response)

    def _fail(self, out: list[bytes], message: str, code: str = "server_error") -> None:
        response = self.response
        out.append(failed_event(response, message=message, code=code, sequence_number=self._seq))
        self._seq += 1
        self._final = {**response, "status": "failed", "error": {"code": code, "message": message}}

    def _delta(self, item: Item, text: str, out: list[bytes]) -> None:
        head, tail = item.delta
        out.append(head + orjson.dumps(text) + tail + b"%d}\n\n" % self._seq)
        self._seq += 1
        self._deltas += 1

    def _emit(self, out: list[bytes], event_type: str, fields: dict[str, Any]) -> None:
        fields["type"] = event_type
        fields["sequence_number"] = self._seq
        self._seq += 1
        out.append(event_bytes(event_type, fields))
