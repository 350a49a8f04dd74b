"""Byte templates and item state of the Responses stream events (`StreamTranslator`'s).

The start and terminal events, a message's structural events as `%`-templates (the same
JSON `event_bytes` would make), `Item` (an output item being streamed) and the field dicts
and delta-event frames of the other items' events.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.responses_output import (
    content_part,
    function_call_item,
    message_item,
    reasoning_item,
)

TERMINAL = {"completed": b"response.completed", "incomplete": b"response.incomplete"}
STARTED = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":%d,'
    b'"response":%s}\n\n'
    b'event: response.in_progress\ndata: {"type":"response.in_progress","sequence_number":%d,'
    b'"response":%s}\n\n'
)
# `STARTED` at sequence numbers 0 and 1 (every stream's start), cut where the Response goes:
# joined around it, which costs a third of formatting the template.
STARTED_AT_0 = (STARTED % (0, b"\0", 1, b"\0")).split(b"\0")
TERMINAL_EVENT = b'event: %s\ndata: {"type":"%s","sequence_number":%d,"response":%s}\n\n'
# Event templates for the message's structural events (the same JSON `ItemStream._emit` would make).
MESSAGE_OPENED = (
    b"event: response.output_item.added\n"
    b'data: {"type":"response.output_item.added","output_index":%d,"item":{"id":"%s",'
    b'"type":"message","role":"assistant","status":"in_progress","content":[]},'
    b'"sequence_number":%d}\n\n'
    b"event: response.content_part.added\n"
    b'data: {"type":"response.content_part.added","item_id":"%s","output_index":%d,'
    b'"content_index":0,"part":{"type":"output_text","text":"","annotations":[],'
    b'"logprobs":[]},"sequence_number":%d}\n\n'
)
TEXT_DELTA_HEAD = (
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","item_id":"%s","output_index":%d,'
    b'"content_index":0,"delta":'
)
TEXT_DELTA_TAIL = b',"logprobs":[],"sequence_number":'
TEXT_PART = b'{"type":"output_text","text":%s,"annotations":[],"logprobs":[]}'
REFUSAL_PART = b'{"type":"refusal","refusal":%s}'
TEXT_DONE = (
    b"event: response.output_text.done\n"
    b'data: {"type":"response.output_text.done","item_id":"%s","output_index":%d,'
    b'"content_index":%d,"text":%s,"logprobs":[],"sequence_number":%d}\n\n'
)
REFUSAL_DONE = (
    b"event: response.refusal.done\n"
    b'data: {"type":"response.refusal.done","item_id":"%s","output_index":%d,'
    b'"content_index":%d,"refusal":%s,"sequence_number":%d}\n\n'
)
PART_DONE = (
    b"event: response.content_part.done\n"
    b'data: {"type":"response.content_part.done","item_id":"%s","output_index":%d,'
    b'"content_index":%d,"part":%s,"sequence_number":%d}\n\n'
)
MESSAGE = b'{"id":"%s","type":"message","role":"assistant","status":"%s","content":[%s]}'
MESSAGE_DONE = (
    b"event: response.output_item.done\n"
    b'data: {"type":"response.output_item.done","output_index":%d,"item":%s,'
    b'"sequence_number":%d}\n\n'
)


class Item:
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
        self.delta = (b"", b"")  # the bytes around a delta event's text (see `delta_frame`)
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


def delta_frame(
    event_type: str, fields: dict[str, Any], *, logprobs: bool = False
) -> tuple[bytes, bytes]:
    """The bytes of a delta event before and after its text, built once per item or part:
    the event per chunk is then two concatenations and one small orjson call."""
    body = orjson.dumps({"type": event_type, **fields})[:-1]
    head = b"event: " + event_type.encode() + b"\ndata: " + body + b',"delta":'
    tail = b',"logprobs":[],"sequence_number":' if logprobs else b',"sequence_number":'
    return head, tail


def added(item: Item) -> dict[str, Any]:
    return {"output_index": item.index, "item": item.render()}


def part_fields(item: Item, index: int) -> dict[str, Any]:
    kind = item.parts[index][0]
    part = content_part(kind, "")
    return {"item_id": item.id, "output_index": item.index, "content_index": index, "part": part}


def summary(item: Item, part: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    out = {"item_id": item.id, "output_index": item.index, "summary_index": 0, **fields}
    if part is not None:
        out["part"] = part
    return out


def _slots(template: bytes, count: int) -> list[bytes]:
    """A `%`-template cut at its `count` conversions (each `%s` or `%d`): the pieces a
    join puts the values between."""
    return (template.replace(b"%d", b"%s") % ((b"\0",) * count)).split(b"\0")


_TEXT_DONE = _slots(TEXT_DONE, 5)  # item id, output index, content index, text, seq
_PART_DONE = _slots(PART_DONE, 5)  # item id, output index, content index, part, seq
_TEXT_PART = _slots(TEXT_PART, 1)  # text
_MESSAGE = _slots(MESSAGE, 3)  # id, status, parts
_MESSAGE_DONE = _slots(MESSAGE_DONE, 3)  # output index, item, seq
_TERMINAL_EVENT = _slots(TERMINAL_EVENT, 4)  # type, type, seq, response


def text_part(text: bytes) -> bytes:
    """`TEXT_PART % text`."""
    return b"".join((_TEXT_PART[0], text, _TEXT_PART[1]))


def message_json(ident: bytes, status: bytes, part: bytes) -> bytes:
    """`MESSAGE % (ident, status, part)`: a message item of one part."""
    return b"".join((_MESSAGE[0], ident, _MESSAGE[1], status, _MESSAGE[2], part, _MESSAGE[3]))


def message_end(
    ident: bytes, index: bytes, text: bytes, part: bytes, item: bytes, seq: int
) -> bytes:
    """The done events of a message of one output_text part (`text` as JSON, `part` and
    `item` its JSON), from sequence number `seq`: `TEXT_DONE`, `PART_DONE` and
    `MESSAGE_DONE` in one join (tests/unit/test_responses_fast_paths_stream.py)."""
    td, pd, md = _TEXT_DONE, _PART_DONE, _MESSAGE_DONE
    return b"".join(
        (
            td[0], ident, td[1], index, td[2], b"0", td[3], text, td[4], b"%d" % seq, td[5],
            pd[0], ident, pd[1], index, pd[2], b"0", pd[3], part, pd[4], b"%d" % (seq + 1), pd[5],
            md[0], index, md[1], item, md[2], b"%d" % (seq + 2), md[3],
        )
    )  # fmt: skip


def terminal_event(kind: bytes, seq: int, response: bytes) -> bytes:
    """`TERMINAL_EVENT % (kind, kind, seq, response)`."""
    te = _TERMINAL_EVENT
    return b"".join((te[0], kind, te[1], kind, te[2], b"%d" % seq, te[3], response, te[4]))
