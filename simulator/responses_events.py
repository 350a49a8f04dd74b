"""The Responses API stream: a finished Response object laid out as the SSE events OpenAI
sends (``event: <type>`` + ``data: <json>``, ``sequence_number`` from 0, no ``[DONE]``).

Order: ``response.created``, ``response.in_progress``; per output item
``response.output_item.added`` … ``response.output_item.done`` with, in between, the
reasoning summary events (``reasoning_summary_part.added``, ``reasoning_summary_text.delta``
/ ``.done``, ``reasoning_summary_part.done``), the web search events
(``web_search_call.in_progress`` / ``.searching`` / ``.completed``), the message's
``content_part.added``, one ``output_text.delta`` per token, ``output_text.done``,
``content_part.done``, or a call's ``function_call_arguments.delta`` per token and
``.done``; then ``response.completed`` (``response.incomplete`` when the response is
incomplete) carrying the whole response with usage.

Token deltas are the paced steps of :func:`.delivery.pump`, so ``ttft``, ``tps``,
``cut_after`` (the connection drops after ``N`` deltas, no terminal event),
``midstream_error`` (an ``error`` event after ``N`` deltas, then the end) and ``malformed``
(a ``data:`` line whose JSON never closes) behave as on chat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from .content import fragments
from .delivery import pump
from .runtime import Call

__all__ = ["MALFORMED_EVENT", "stream_response"]

MALFORMED_EVENT = (
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","item_id":"msg_broken","delta":"tok\n\n'
)


class _Events:
    """Numbers and frames events."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _delta_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``LogProb`` of the finished text as a delta event carries it (no ``bytes``)."""
    return {
        "token": entry["token"],
        "logprob": entry["logprob"],
        "top_logprobs": [
            {"token": t["token"], "logprob": t["logprob"]} for t in entry["top_logprobs"]
        ],
    }


def _opened(item: dict[str, Any]) -> dict[str, Any]:
    """An item as ``output_item.added`` shows it: in progress, nothing generated yet."""
    kind = item["type"]
    if kind == "message":
        return {**item, "status": "in_progress", "content": []}
    if kind == "function_call":
        return {**item, "status": "in_progress", "arguments": ""}
    if kind == "reasoning":
        return {**item, "summary": []}
    return {**item, "status": "in_progress"}


async def stream_response(
    call: Call, response: dict[str, Any], pieces: list[str], on_delivered: Callable[[], None]
) -> web.StreamResponse:
    """Stream ``response`` (a finished Response object; ``pieces`` are its message's text
    tokens) with the call's pacing and faults; ``on_delivered`` records usage once the
    terminal event is out."""
    event = _Events()
    snapshot = {key: value for key, value in response.items() if key not in ("usage", "output")}
    snapshot.update(status="in_progress", completed_at=None, incomplete_details=None, output=[])
    head = event("response.created", response=snapshot)
    head += event("response.in_progress", response=snapshot)
    # Paced steps: body[i] holds token i's delta, preceded by whatever closes the previous
    # call and opens the next one.
    body: list[bytes] = []
    #: Sequence number of each step's first event, and of what follows the last step.
    starts: list[int] = []
    pending = b""
    flushed = event.sequence
    for index, item in enumerate(response["output"]):
        kind = item["type"]
        pending += event("response.output_item.added", output_index=index, item=_opened(item))
        where = {"item_id": item["id"], "output_index": index}
        if kind == "reasoning":
            for s, part in enumerate(item["summary"]):
                empty = {"type": "summary_text", "text": ""}
                pending += event(
                    "response.reasoning_summary_part.added", **where, summary_index=s, part=empty
                )
                pending += event(
                    "response.reasoning_summary_text.delta",
                    **where,
                    summary_index=s,
                    delta=part["text"],
                )
                pending += event(
                    "response.reasoning_summary_text.done",
                    **where,
                    summary_index=s,
                    text=part["text"],
                )
                pending += event(
                    "response.reasoning_summary_part.done", **where, summary_index=s, part=part
                )
        elif kind == "web_search_call":
            for stage in ("in_progress", "searching", "completed"):
                pending += event(f"response.web_search_call.{stage}", **where)
        elif kind == "message":
            part = item["content"][0]
            at = {**where, "content_index": 0}
            opened = {**part, "text": "", "logprobs": []}
            pending += event("response.content_part.added", **at, part=opened)
            logprobs = part["logprobs"]
            for position, piece in enumerate(pieces):
                entry = [_delta_logprob(logprobs[position])] if logprobs else []
                starts.append(flushed)
                body.append(
                    pending + event("response.output_text.delta", **at, delta=piece, logprobs=entry)
                )
                pending, flushed = b"", event.sequence
            pending += event(
                "response.output_text.done", **at, text=part["text"], logprobs=part["logprobs"]
            )
            pending += event("response.content_part.done", **at, part=part)
        elif kind == "function_call":
            for piece in fragments(item["arguments"]):
                starts.append(flushed)
                body.append(
                    pending + event("response.function_call_arguments.delta", **where, delta=piece)
                )
                pending, flushed = b"", event.sequence
            pending += event(
                "response.function_call_arguments.done",
                **where,
                name=item["name"],
                arguments=item["arguments"],
            )
        pending += event("response.output_item.done", output_index=index, item=item)
        if not body:  # nothing paced yet: what came so far goes out with the head
            head += pending
            pending, flushed = b"", event.sequence
    starts.append(flushed)
    terminal = "response.completed" if response["status"] == "completed" else "response.incomplete"
    tail = pending + event(terminal, response=response)
    b = call.behaviour
    failing_at = b.midstream_error if b.midstream_error is not None else 0
    # The error event is numbered after whatever precedes it: everything before step N.
    sequence = starts[min(failing_at, len(starts) - 1)]
    message = call.error_message("The server had an error while streaming (simulated).")
    error = {
        "type": "error",
        "code": "server_error",
        "message": message or "",
        "param": None,
        "sequence_number": sequence,
    }
    return await pump(
        call,
        head,
        body,
        tail,
        error_event=b"event: error\ndata: " + orjson.dumps(error) + b"\n\n",
        malformed_event=MALFORMED_EVENT,
        on_delivered=on_delivered,
        pre_content_tokens=response["usage"]["output_tokens_details"]["reasoning_tokens"],
    )
