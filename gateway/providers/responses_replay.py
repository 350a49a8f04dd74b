"""A complete Response object as the Responses API's stream events, and the event framing.

For answers that exist whole before they are streamed (a buffered upstream, a cache hit, a
native upstream's JSON): the same typed sequence a live stream has, each text or argument
sent as one delta. Pure, no I/O; `event_bytes` and `failed_event` are shared with the live
translator (`responses_stream`).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.responses_output import error_code

__all__ = ["event_bytes", "failed_event", "replay_events"]


def event_bytes(event_type: str, data: dict[str, Any]) -> bytes:
    """`event: <type>\\ndata: <json>\\n\\n`; `data` already holds type and sequence_number."""
    return b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def failed_event(
    response: dict[str, Any], *, message: str, code: str, sequence_number: int
) -> bytes:
    """`response.failed` for a Response so far. A code outside the spec's enum (an upstream
    or gateway code) is sent as `server_error`."""
    failed = {
        **response,
        "status": "failed",
        "error": {"code": error_code(code), "message": message},
    }
    failed.pop("completed_at", None)
    data = {"type": "response.failed", "response": failed, "sequence_number": sequence_number}
    return event_bytes("response.failed", data)


class _Writer:
    __slots__ = ("out", "seq")

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.seq = 0

    def emit(self, event_type: str, **fields: Any) -> None:
        data = {"type": event_type, **fields, "sequence_number": self.seq}
        self.seq += 1
        self.out.append(event_bytes(event_type, data))


def replay_events(response: dict[str, Any]) -> bytes:
    """The whole event sequence of a finished Response, ending with response.completed,
    response.incomplete or response.failed (after its status)."""
    write = _Writer()
    start = {
        key: value
        for key, value in response.items()
        if key not in ("usage", "completed_at", "output_text")
    }
    start.update(status="in_progress", output=[], error=None, incomplete_details=None)
    write.emit("response.created", response=start)
    write.emit("response.in_progress", response=start)
    output = response.get("output")
    for index, item in enumerate(output if isinstance(output, list) else ()):
        _item(write, index, item)
    status = response.get("status")
    terminal = {"incomplete": "response.incomplete", "failed": "response.failed"}
    write.emit(terminal.get(status, "response.completed"), response=response)  # type: ignore[arg-type]
    return b"".join(write.out)


def _item(write: _Writer, index: int, item: dict[str, Any]) -> None:
    kind = item.get("type")
    item_id = item.get("id", "")
    at = {"item_id": item_id, "output_index": index}
    if kind == "message":
        content = item.get("content") or []
        write.emit("response.output_item.added", output_index=index, item=_opened(item, content=[]))
        for position, part in enumerate(content):
            _content_part(write, at, position, part)
    elif kind == "function_call":
        write.emit(
            "response.output_item.added", output_index=index, item=_opened(item, arguments="")
        )
        arguments = item.get("arguments") or ""
        if arguments:
            write.emit("response.function_call_arguments.delta", **at, delta=arguments)
        name = item.get("name") or ""
        write.emit("response.function_call_arguments.done", **at, name=name, arguments=arguments)
    elif kind == "reasoning":
        opened = {**item, "summary": []}
        if "content" in item:
            opened["content"] = []
        write.emit("response.output_item.added", output_index=index, item=opened)
        for position, part in enumerate(item.get("summary") or ()):
            text = part.get("text") or ""
            at_part = {**at, "summary_index": position}
            empty = {"type": "summary_text", "text": ""}
            write.emit("response.reasoning_summary_part.added", **at_part, part=empty)
            if text:
                write.emit("response.reasoning_summary_text.delta", **at_part, delta=text)
            write.emit("response.reasoning_summary_text.done", **at_part, text=text)
            full = {"type": "summary_text", "text": text}
            write.emit("response.reasoning_summary_part.done", **at_part, part=full)
        for position, part in enumerate(item.get("content") or ()):
            text = part.get("text") or ""
            at_part = {**at, "content_index": position}
            empty = {"type": "reasoning_text", "text": ""}
            write.emit("response.content_part.added", **at_part, part=empty)
            if text:
                write.emit("response.reasoning_text.delta", **at_part, delta=text)
            write.emit("response.reasoning_text.done", **at_part, text=text)
            write.emit("response.content_part.done", **at_part, part=part)
    else:
        # Another item type (a native upstream's tool call): added and done, whole.
        write.emit("response.output_item.added", output_index=index, item=item)
    write.emit("response.output_item.done", output_index=index, item=item)


def _opened(item: dict[str, Any], **fields: Any) -> dict[str, Any]:
    opened = {**item, **fields}
    if "status" in item:
        opened["status"] = "in_progress"
    return opened


def _content_part(write: _Writer, at: dict[str, Any], position: int, part: dict[str, Any]) -> None:
    at_part = {**at, "content_index": position}
    if part.get("type") == "refusal":
        refusal = part.get("refusal") or ""
        write.emit(
            "response.content_part.added", **at_part, part={"type": "refusal", "refusal": ""}
        )
        if refusal:
            write.emit("response.refusal.delta", **at_part, delta=refusal)
        write.emit("response.refusal.done", **at_part, refusal=refusal)
    else:
        text = part.get("text") or ""
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        write.emit("response.content_part.added", **at_part, part=empty)
        if text:
            write.emit("response.output_text.delta", **at_part, delta=text, logprobs=[])
        # The done event's logprobs have another shape than a part's; the part has them.
        write.emit("response.output_text.done", **at_part, text=text, logprobs=[])
    write.emit("response.content_part.done", **at_part, part=part)
