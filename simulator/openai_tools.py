"""OpenAI chat request features beyond plain text: tool calls (several in one message, as
with ``parallel_tool_calls``), how they stream, ``logprobs`` and JSON mode's prompt text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .content import fragments, text_segments
from .runtime import Call, new_id
from .structured import MAX_TOP_LOGPROBS

__all__ = ["choose_calls", "pick_tools", "prompt_texts", "requested_logprobs", "tool_deltas"]


def requested_logprobs(call: Call) -> int | None:
    """``top_logprobs`` wanted when the request asks for ``logprobs``, else None; 400s for
    what OpenAI refuses (a count out of range, ``top_logprobs`` without ``logprobs``)."""
    wanted = call.body.get("logprobs")
    top = call.body.get("top_logprobs")
    if top is not None and (
        not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS
    ):
        raise call.error(
            400,
            f"Invalid 'top_logprobs': must be an integer in [0, {MAX_TOP_LOGPROBS}].",
            param="top_logprobs",
        )
    if wanted is not True:
        if top is not None:
            raise call.error(
                400,
                "Invalid 'top_logprobs': 'logprobs' must be true to use it.",
                param="top_logprobs",
            )
        return None
    return top or 0


def _last_role(messages: Any) -> Any:
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("role")
    return None


def pick_tools(call: Call) -> list[tuple[str, Any]]:
    """``(name, parameters)`` per tool call to make (``tool_calls=N`` of them, cycling
    through the candidates), or none when the answer is not a tool call."""
    tools = call.body.get("tools")
    choice = call.body.get("tool_choice", "auto")
    if not isinstance(tools, list) or not tools or choice == "none":
        return []
    if choice == "auto" and _last_role(call.body.get("messages")) == "tool":
        return []  # a model given its tool's result answers rather than calling again
    functions = [
        t["function"]
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")
    ]
    if not functions:
        return []
    wanted = None
    if isinstance(choice, dict):
        named = choice.get("function")
        wanted = named.get("name") if isinstance(named, dict) else None
    return choose_calls(call, functions, wanted)


def choose_calls(
    call: Call, functions: list[dict[str, Any]], wanted: str | None
) -> list[tuple[str, Any]]:
    """``(name, parameters)`` per call among ``functions`` (each with a ``name``): the one
    ``wanted`` (named by ``tool_choice``) or the ``tool=NAME`` directive's, else cycling
    through all; ``tool_calls=N`` of them unless ``parallel_tool_calls`` is false."""
    if wanted is None:
        wanted = call.behaviour.tool  # the `tool=NAME` directive
    candidates = functions if wanted is None else [f for f in functions if f["name"] == wanted]
    if not candidates:
        raise call.error(
            400,
            f"Invalid 'tool_choice': no function named {wanted!r} in 'tools'.",
            param="tool_choice",
        )
    parallel = call.body.get("parallel_tool_calls") is not False
    count = call.behaviour.tool_calls if parallel else 1
    return [
        (str(fn["name"]), fn.get("parameters"))
        for fn in (candidates[i % len(candidates)] for i in range(count))
    ]


def prompt_texts(messages: Any) -> list[str]:
    """Every text piece of the conversation, in order (where JSON mode finds its schema)."""
    out: list[str] = []
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            out += text_segments(message.get("content"))
    return out


def tool_deltas(
    calls: list[tuple[str, str]],
    indexes: range,
    chunk: Callable[[list[bytes]], bytes],
    delta: Callable[[int, dict[str, Any]], bytes],
) -> tuple[bytes, list[bytes]]:
    """Streamed tool calls as OpenAI sends them: each call opens with its ``index``, ``id``
    and name (the first one together with the role), then its arguments piece by piece
    under the same ``index``. Returns ``(head chunk, later chunks)``."""
    ids = [[new_id("call_") for _ in calls] for _ in indexes]
    head = b""
    body: list[bytes] = []
    for position, (name, arguments) in enumerate(calls):
        opened = []
        for i in indexes:
            opening: dict[str, Any] = {
                "tool_calls": [
                    {
                        "index": position,
                        "id": ids[i][position],
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            }
            if position == 0:
                opening = {"role": "assistant", "content": None, "refusal": None, **opening}
            opened.append(delta(i, opening))
        if position == 0:
            head = chunk(opened)
        else:
            body.append(chunk(opened))
        for piece in fragments(arguments):
            part = {"tool_calls": [{"index": position, "function": {"arguments": piece}}]}
            body.append(chunk([delta(i, part) for i in indexes]))
    return head, body
