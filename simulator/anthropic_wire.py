"""Anthropic ``POST /v1/messages`` in the real wire format (JSON and SSE events).

``reasoning=N``: Anthropic bills thinking as output, so the tokens are added to
``output_tokens``.  Without ``thinking`` in the request they stay hidden and ``/_stats``
records no reasoning for them.  With ``thinking: {"type": "enabled"|"adaptive"}`` the answer
starts with a ``thinking`` block (streamed as ``thinking_delta`` + ``signature_delta``) and
usage carries ``output_tokens_details.thinking_tokens``, which ``/_stats`` records.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .behaviour import plan_tokens
from .content import anthropic_prompt_tokens, fragments, schema_instance, word, words
from .delivery import malformed_json, pace_non_stream, pump, truncated_json
from .errors import anthropic_error_body
from .prompt_cache import anthropic_prefix
from .runtime import Call, begin, gate, handler, new_id

__all__ = ["messages"]

_MALFORMED_EVENT = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{\n\n'
)


_SIGNATURE = "c2ltdWxhdGVkLXNpZ25hdHVyZQ=="


def _thinking(body: dict[str, Any]) -> bool:
    setting = body.get("thinking")
    return isinstance(setting, dict) and setting.get("type") in ("enabled", "adaptive")


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _answers_tool(messages: Any) -> bool:
    last = messages[-1] if isinstance(messages, list) and messages else None
    content = last.get("content") if isinstance(last, dict) else None
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _pick_tools(call: Call) -> list[tuple[str, Any]]:
    """``(name, input_schema)`` per ``tool_use`` block to answer with (``tool_calls=N`` of
    them unless ``disable_parallel_tool_use``), or none for a text answer."""
    tools = call.body.get("tools")
    choice = call.body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else "auto"
    if not isinstance(tools, list) or not tools or kind == "none":
        return []
    if kind == "auto" and _answers_tool(call.body.get("messages")):
        return []  # a model given its tool's result answers rather than calling again
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if not named:
        return []
    candidates = named
    if kind == "tool" and isinstance(choice, dict):
        wanted = choice.get("name")
        candidates = [tool for tool in named if tool["name"] == wanted]
        if not candidates:
            raise call.error(400, f"tool_choice.name: no tool named {wanted!r} in tools")
    serial = isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True
    count = 1 if serial else call.behaviour.tool_calls
    return [
        (str(tool["name"]), tool.get("input_schema"))
        for tool in (candidates[i % len(candidates)] for i in range(count))
    ]


def _validate(call: Call) -> tuple[int, list[Any]]:
    body = call.body
    for field in ("max_tokens", "messages"):
        if field not in body:
            raise call.error(400, f"{field}: Field required")
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise call.error(400, "max_tokens: Input should be a positive integer")
    msgs = body["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise call.error(400, "messages: Input should be a non-empty list")
    return max_tokens, msgs


@handler
async def messages(request: web.Request) -> web.StreamResponse:
    call = await begin(request, "messages", "anthropic")
    max_tokens, msgs = _validate(call)
    prompt = anthropic_prompt_tokens(call.body.get("system"), msgs)
    tools = _pick_tools(call)
    await gate(call, prompt)
    b = call.behaviour
    prefix = anthropic_prefix(call.body.get("system")) if b.prompt_cache else None
    cache_read, cache_creation = call.prompt_cache(prompt, prefix, bills_writes=True)
    input_tokens = prompt - cache_read - cache_creation
    # The answer's blocks with the streamed pieces of each (several tool_use blocks are
    # parallel tool calls).
    answer: list[tuple[dict[str, Any], list[str]]]
    if b.content_filter:
        answer, output, stop_reason = [({"type": "text", "text": ""}, [])], b.reasoning, "refusal"
    elif tools:
        answer = []
        for variant, (name, schema) in enumerate(tools):
            document = schema_instance(schema, variant)
            block = {"type": "tool_use", "id": new_id("toolu_"), "name": name, "input": document}
            answer.append((block, fragments(orjson.dumps(document).decode())))
        output = sum(len(p) for _, p in answer) + b.reasoning
        stop_reason = "tool_use"
    else:
        # max_tokens is mandatory here (litellm sends 4096 when its caller set none), so it
        # caps the answer rather than setting its length.
        plan = plan_tokens(b, max_tokens, limit_is_cap=True)
        text = {"type": "text", "text": words(plan.visible)}
        answer = [(text, [word(i) for i in range(plan.visible)])]
        output = plan.completion
        stop_reason = "max_tokens" if plan.truncated else "end_turn"
    pieces = [piece for _, block_pieces in answer for piece in block_pieces]
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "output_tokens": output,
    }
    reasoning = output - len(pieces)
    thinking = reasoning > 0 and _thinking(call.body)
    blocks = [block for block, _ in answer]
    if thinking:
        usage["output_tokens_details"] = {"thinking_tokens": reasoning}
        thought = f"Simulated reasoning ({reasoning} tokens)."
        blocks.insert(0, {"type": "thinking", "thinking": thought, "signature": _SIGNATURE})

    def record() -> None:
        call.state.stats.usage(
            call.base,
            prompt=prompt,
            cached=cache_read,
            cache_write=cache_creation,
            completion=output,
            reasoning=reasoning if thinking else 0,
        )

    message_id = new_id("msg_")
    if call.stream:
        start_message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Like the real API, message_start reports one output token so far.
            "usage": {**usage, "output_tokens": 1},
        }
        head = _event("message_start", {"type": "message_start", "message": start_message})
        if thinking:
            head += _thinking_events(blocks[0])
        first = 1 if thinking else 0
        body = _block_events(answer, first)
        head += body.pop(0) + _event("ping", {"type": "ping"})
        final_usage = {
            k: v for k, v in usage.items() if k in ("output_tokens", "output_tokens_details")
        }
        last = first + len(answer) - 1
        tail = (
            _event("content_block_stop", {"type": "content_block_stop", "index": last})
            + _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": final_usage,
                },
            )
            + _event("message_stop", {"type": "message_stop"})
        )
        return await pump(
            call,
            head,
            body,
            tail,
            error_event=_event("error", anthropic_error_body(529)),
            malformed_event=_MALFORMED_EVENT,
            on_delivered=record,
            pre_content_tokens=b.reasoning,
        )
    payload = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    await pace_non_stream(call, output)
    if b.cut_after is not None:
        return await truncated_json(call, orjson.dumps(payload))
    if b.malformed:
        return malformed_json(call, orjson.dumps(payload))
    record()
    return call.json(payload)


def _block_events(answer: list[tuple[dict[str, Any], list[str]]], first: int) -> list[bytes]:
    """Stream steps of the answer's blocks from index ``first``: each block's start (the
    one before it stopped first), then one step per delta. The last block's stop is the
    caller's, in the tail."""
    steps: list[bytes] = []
    for offset, (block, pieces) in enumerate(answer):
        index = first + offset
        if block["type"] == "tool_use":
            start = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        else:
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces]
        opening = b""
        if offset:
            opening = _event(
                "content_block_stop", {"type": "content_block_stop", "index": index - 1}
            )
        steps.append(
            opening
            + _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        steps += [
            _event(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}
            )
            for d in deltas
        ]
    return steps


def _thinking_events(block: dict[str, Any]) -> bytes:
    """A streamed ``thinking`` block at index 0: start, text delta, signature delta, stop."""
    start = {"type": "thinking", "thinking": "", "signature": ""}
    deltas = (
        {"type": "thinking_delta", "thinking": block["thinking"]},
        {"type": "signature_delta", "signature": block["signature"]},
    )
    out = _event(
        "content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}
    )
    for delta in deltas:
        out += _event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
    return out + _event("content_block_stop", {"type": "content_block_stop", "index": 0})
