"""OpenAI chat completion chunks (SSE) → Anthropic Messages stream events.

Pure, no I/O. The usage of an OpenAI stream only arrives in its last chunk, so
`message_start` carries zeros and `message_delta` the real, complete numbers (input,
cache reads and writes, output): the Anthropic SDKs' accumulators take them from there.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.api.anthropic_reply import message_id, stop_reason, tool_id, usage
from gateway.core.streaming import decode_events

# OpenAI error types that are also Anthropic ones; anything else is an `api_error`.
_SHARED_ERROR_TYPES = frozenset(
    {"invalid_request_error", "rate_limit_error", "overloaded_error", "authentication_error"}
)


def event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def stream_error(message: str, kind: str = "api_error") -> bytes:
    return event("error", {"type": "error", "error": {"type": kind, "message": message}})


class StreamTranslator:
    """OpenAI `chat.completion.chunk` SSE blocks in, Anthropic stream events out.

    Blocks: thinking (`reasoning_content`), text, then one `tool_use` block per tool
    call; a block is closed when output switches to another. Only choice 0 is used
    (Anthropic has no `n`).
    """

    __slots__ = (
        "_block",
        "_fallback_id",
        "_model",
        "_next_index",
        "_pending",
        "_refused",
        "_started",
        "_stop",
        "_tools",
        "_usage",
        "ended",
    )

    def __init__(self, model: str, fallback_id: str) -> None:
        self._model = model
        self._fallback_id = fallback_id
        self._pending = b""
        self._started = False
        self._block: tuple[str, Any, int] | None = None  # (kind, key, index) of the open one
        self._next_index = 0
        self._tools: dict[Any, int] = {}  # OpenAI tool call index → Anthropic block index
        self._stop: Any = None
        self._refused = False
        self._usage: Any = None
        self.ended = False

    def feed(self, block: bytes) -> bytes:
        if self.ended:
            return b""
        data = self._pending + block if self._pending else block
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._pending = data
            return b""
        self._pending = data[cut + 2 :]
        out: list[bytes] = []
        for payload in decode_events(data[: cut + 2]):
            self._on_event(payload, out)
            if self.ended:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """Called when the service's stream ended without `[DONE]` or an error event."""
        out = self.feed(b"\n\n") if self._pending.strip() else b""
        if self.ended:
            return out
        self.ended = True
        return out + stream_error("The upstream stream ended before it was complete.")

    # -- events -------------------------------------------------------------------------

    def _on_event(self, payload: bytes, out: list[bytes]) -> None:
        if payload == b"[DONE]":
            self._done(out)
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            self.ended = True
            out.append(stream_error("The upstream sent a stream event that is not a JSON object."))
            return
        error = chunk.get("error")
        if error is not None:
            self.ended = True
            out.append(_error_event(error))
            return
        if not self._started:
            self._start(chunk.get("id"), out)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._on_choice(choice, out)

    def _start(self, openai_id: Any, out: list[bytes]) -> None:
        self._started = True
        self._fallback_id = message_id(openai_id, self._fallback_id)[4:]
        message: dict[str, Any] = {
            "id": "msg_" + self._fallback_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Unknown until the usage chunk, which comes last; message_delta has them.
            "usage": {
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        out.append(event("message_start", {"type": "message_start", "message": message}))

    def _on_choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                index = self._open("thinking", None, {"thinking": "", "signature": ""}, out)
                self._delta(index, {"type": "thinking_delta", "thinking": reasoning}, out)
            self._signatures(delta.get("thinking_blocks"), out)
            for field in ("content", "refusal"):
                text = delta.get(field)
                if isinstance(text, str) and text:
                    self._refused = self._refused or field == "refusal"
                    index = self._open("text", None, {"text": ""}, out)
                    self._delta(index, {"type": "text_delta", "text": text}, out)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    self._tool_delta(call, out)
        if choice.get("finish_reason"):
            self._stop = choice["finish_reason"]

    def _signatures(self, blocks: Any, out: list[bytes]) -> None:
        if self._block is None or self._block[0] != "thinking" or not isinstance(blocks, list):
            return
        for block in blocks:
            signature = block.get("signature") if isinstance(block, dict) else None
            if isinstance(signature, str) and signature:
                self._delta(
                    self._block[2], {"type": "signature_delta", "signature": signature}, out
                )

    def _tool_delta(self, call: dict[str, Any], out: list[bytes]) -> None:
        key = call.get("index")
        if not isinstance(key, int):
            # Servers that omit the index: a new id starts a new call, else the open one.
            call_id = call.get("id")
            key = call_id if isinstance(call_id, str) and call_id else None
            if key is None and self._block is not None:
                key = self._block[1]
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        index = self._tools.get(key)
        if index is None:
            start = {
                "id": tool_id(call.get("id"), self._fallback_id, len(self._tools)),
                "name": str(function.get("name") or ""),
                "input": {},
            }
            index = self._tools[key] = self._open("tool_use", key, start, out)
        # A call whose block was already closed (arguments interleaved between parallel
        # calls, which OpenAI does not do) still gets its delta, at its own index.
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._delta(index, {"type": "input_json_delta", "partial_json": arguments}, out)

    def _open(self, kind: str, key: Any, fields: dict[str, Any], out: list[bytes]) -> int:
        """Index of the open block of this kind (and key), closing another one first."""
        if self._block is not None:
            if self._block[0] == kind and self._block[1] == key:
                return self._block[2]
            self._close(out)
        index = self._next_index
        self._next_index += 1
        self._block = (kind, key, index)
        out.append(
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": kind, **fields},
                },
            )
        )
        return index

    def _close(self, out: list[bytes]) -> None:
        if self._block is not None:
            out.append(
                event("content_block_stop", {"type": "content_block_stop", "index": self._block[2]})
            )
            self._block = None

    @staticmethod
    def _delta(index: int, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )

    def _done(self, out: list[bytes]) -> None:
        if not self._started:
            self._start(None, out)
        if self._next_index == 0:  # nothing at all came back: one empty text block
            self._open("text", None, {"text": ""}, out)
        self._close(out)
        reason = stop_reason(self._stop, bool(self._tools), self._refused)
        out.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": None},
                    "usage": usage(self._usage),
                },
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
        self.ended = True


def _error_event(error: Any) -> bytes:
    message = error.get("message") if isinstance(error, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return stream_error(
        message if isinstance(message, str) and message else "The upstream reported an error.",
        kind if isinstance(kind, str) and kind in _SHARED_ERROR_TYPES else "api_error",
    )
