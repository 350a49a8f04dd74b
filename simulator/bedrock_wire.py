"""Amazon Bedrock Converse API: ``POST /model/{modelId}/converse`` and ``/converse-stream``.

``converse`` answers JSON; ``converse-stream`` answers the binary AWS event stream (see
:mod:`.eventstream`): ``messageStart``, ``contentBlockStart`` (tool use only),
``contentBlockDelta``…, ``contentBlockStop``, ``messageStop``, then ``metadata`` with usage.
Every event payload carries a ``p`` padding field, as the real service's do.  Errors are
``{"message": …}`` with the exception name in ``x-amzn-ErrorType``; a mid-stream error is
an exception message (``serviceUnavailableException``, 503).

The model id comes from the path (clients percent-encode it, ``:`` included), so
directives go after ``::`` in it or in ``x-mock-behavior``.  Auth: a SigV4
``Authorization`` header whose access key id is the simulator's key (signature unchecked).

Usage follows Bedrock: ``inputTokens`` excludes ``cacheReadInputTokens`` and
``cacheWriteInputTokens`` (``cached=N`` / ``cache_write=N``, or a ``prompt_cache`` hit /
miss on ``system``); ``totalTokens`` is the sum of all four.  ``reasoning=N`` is billed
inside ``outputTokens``; when the request enables thinking
(``additionalModelRequestFields.thinking`` or ``reasoningConfig``) a ``reasoningContent``
block comes first, and when it asks for ``/usage/output_tokens_details`` the count is
reported in ``additionalModelResponseFields.usage.output_tokens_details.thinking_tokens``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .behaviour import plan_tokens
from .content import converse_prompt_tokens, fragments, schema_instance, word, words
from .delivery import malformed_json, pace_non_stream, pump, truncated_json
from .eventstream import CONTENT_TYPE, event, exception
from .prompt_cache import converse_prefix
from .runtime import Call, begin, gate, handler, new_id

__all__ = ["converse", "converse_stream"]

#: The real service pads every event with a random-length ``p`` to hide token sizes.
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
_SIGNATURE = "c2ltdWxhdGVkLXNpZ25hdHVyZQ=="
_STREAM_ERROR = "Bedrock is unable to process your request."
_THINKING_PATH = "/usage/output_tokens_details"


def _padded(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "p": _PAD}


def _answers_tool(messages: Any) -> bool:
    last = messages[-1] if isinstance(messages, list) and messages else None
    content = last.get("content") if isinstance(last, dict) else None
    return isinstance(content, list) and any(
        isinstance(block, dict) and "toolResult" in block for block in content
    )


def _pick_tools(call: Call) -> list[tuple[str, Any]]:
    """``(name, schema)`` per ``toolUse`` block to answer with (``tool_calls=N`` of them),
    or none for a text answer."""
    config = call.body.get("toolConfig")
    if not isinstance(config, dict) or not isinstance(config.get("tools"), list):
        return []
    specs = [
        t["toolSpec"]
        for t in config["tools"]
        if isinstance(t, dict) and isinstance(t.get("toolSpec"), dict) and t["toolSpec"].get("name")
    ]
    if not specs:
        return []
    choice = config.get("toolChoice")
    forced = isinstance(choice, dict) and ("any" in choice or "tool" in choice)
    if not forced and _answers_tool(call.body.get("messages")):
        return []  # a model given its tool's result answers rather than calling again
    named = choice.get("tool") if isinstance(choice, dict) else None
    wanted = named.get("name") if isinstance(named, dict) else None
    candidates = [spec for spec in specs if wanted is None or spec["name"] == wanted]
    if not candidates:
        raise call.error(400, f"The tool {wanted!r} in toolChoice is not in toolConfig.tools.")
    out = []
    for i in range(call.behaviour.tool_calls):
        spec = candidates[i % len(candidates)]
        schema = spec.get("inputSchema")
        out.append((str(spec["name"]), schema.get("json") if isinstance(schema, dict) else None))
    return out


def _thinking(call: Call) -> bool:
    extra = call.body.get("additionalModelRequestFields")
    if not isinstance(extra, dict):
        return False
    for key in ("thinking", "reasoningConfig"):
        setting = extra.get(key)
        if isinstance(setting, dict) and setting.get("type") in ("enabled", "adaptive"):
            return True
    return False


def _limit(call: Call) -> int | None:
    config = call.body.get("inferenceConfig")
    value = config.get("maxTokens") if isinstance(config, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise call.error(
            400,
            "1 validation error detected: Value at 'inferenceConfig.maxTokens' failed to "
            "satisfy constraint: Member must have value greater than or equal to 1",
        )
    return value


@dataclass(slots=True)
class _Answer:
    #: Content blocks with the streamed pieces of each (several toolUse blocks are
    #: parallel tool calls).
    blocks: list[tuple[dict[str, Any], list[str]]]
    visible: int
    reasoning: int
    stop: str


def _answer(call: Call, tools: list[tuple[str, Any]], limit: int | None) -> _Answer:
    b = call.behaviour
    if b.content_filter:
        return _Answer([({"text": ""}, [])], 0, b.reasoning, "content_filtered")
    if tools:
        blocks = []
        for variant, (name, schema) in enumerate(tools):
            document = schema_instance(schema, variant)
            use = {"toolUseId": new_id("tooluse_"), "name": name, "input": document}
            blocks.append(({"toolUse": use}, fragments(orjson.dumps(document).decode())))
        visible = sum(len(pieces) for _, pieces in blocks)
        return _Answer(blocks, visible, b.reasoning, "tool_use")
    plan = plan_tokens(b, limit)
    pieces = [word(i) for i in range(plan.visible)]
    stop = "max_tokens" if plan.truncated else "end_turn"
    return _Answer([({"text": words(plan.visible)}, pieces)], plan.visible, plan.reasoning, stop)


def _frames(
    answer: _Answer, thought: str | None, stop: dict[str, Any], metadata: dict[str, Any]
) -> tuple[bytes, list[bytes], bytes]:
    """``(head, one delta per token, tail)`` event-stream messages of a ConverseStream."""
    first = 0 if thought is None else 1
    head = event("messageStart", _padded({"role": "assistant"}))
    if thought is not None:
        for reasoning in ({"text": thought}, {"signature": _SIGNATURE}):
            delta = {"contentBlockIndex": 0, "delta": {"reasoningContent": reasoning}}
            head += event("contentBlockDelta", _padded(delta))
        head += event("contentBlockStop", _padded({"contentBlockIndex": 0}))
    body: list[bytes] = []
    index = first
    for offset, (block, pieces) in enumerate(answer.blocks):
        index = first + offset
        opening = b""
        if offset:  # the previous block ends where this one starts
            opening = event("contentBlockStop", _padded({"contentBlockIndex": index - 1}))
        if "toolUse" in block:
            start = {k: block["toolUse"][k] for k in ("toolUseId", "name")}
            opening += event(
                "contentBlockStart",
                _padded({"contentBlockIndex": index, "start": {"toolUse": start}}),
            )
            deltas: list[dict[str, Any]] = [{"toolUse": {"input": p}} for p in pieces]
        else:
            deltas = [{"text": piece} for piece in pieces]
        if offset:
            body.append(opening)
        else:
            head += opening
        body += [
            event("contentBlockDelta", _padded({"contentBlockIndex": index, "delta": d}))
            for d in deltas
        ]
    # A block that never streamed anything (a filtered answer) is never opened or closed.
    tail = event("contentBlockStop", _padded({"contentBlockIndex": index})) if body else b""
    tail += event("messageStop", _padded(stop))
    tail += event("metadata", _padded(metadata))
    return head, body, tail


@handler
async def converse(request: web.Request) -> web.StreamResponse:
    return await _converse(request, stream=False)


@handler
async def converse_stream(request: web.Request) -> web.StreamResponse:
    return await _converse(request, stream=True)


async def _converse(request: web.Request, *, stream: bool) -> web.StreamResponse:
    started = time.monotonic()
    model = request.match_info["model_id"]
    call = await begin(request, "converse", "bedrock", model=model, stream=stream)
    messages = call.body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise call.error(
            400,
            "1 validation error detected: Value at 'messages' failed to satisfy constraint: "
            "Member must have length greater than or equal to 1",
        )
    limit = _limit(call)
    system = call.body.get("system")
    prompt = converse_prompt_tokens(system, messages)
    tools = _pick_tools(call)
    await gate(call, prompt)
    b = call.behaviour
    answer = _answer(call, tools, limit)
    prefix = converse_prefix(system) if b.prompt_cache else None
    cached, cache_write = call.prompt_cache(prompt, prefix, bills_writes=True)
    output = answer.visible + answer.reasoning
    usage = {
        "inputTokens": prompt - cached - cache_write,
        "outputTokens": output,
        "totalTokens": prompt + output,
        "cacheReadInputTokens": cached,
        "cacheWriteInputTokens": cache_write,
    }
    thinking = answer.reasoning > 0 and _thinking(call)
    paths = call.body.get("additionalModelResponseFieldPaths")
    reported = thinking and isinstance(paths, list) and _THINKING_PATH in paths
    extra = {"usage": {"output_tokens_details": {"thinking_tokens": answer.reasoning}}}
    thought = f"Simulated reasoning ({answer.reasoning} tokens)."

    def record() -> None:
        call.state.stats.usage(
            call.base,
            prompt=prompt,
            cached=cached,
            cache_write=cache_write,
            completion=output,
            reasoning=answer.reasoning if reported else 0,
        )

    def latency() -> dict[str, int]:
        """Time so far plus the pacing still to come (``ttft`` and ``tps``)."""
        pending = b.ttft / 1000.0 + (output / b.tps if b.tps else 0.0)
        return {"latencyMs": round((time.monotonic() - started + pending) * 1000)}

    if call.stream:
        stop: dict[str, Any] = {"stopReason": answer.stop}
        if reported:
            stop["additionalModelResponseFields"] = extra
        metadata = {"usage": usage, "metrics": latency()}
        head, body, tail = _frames(answer, thought if thinking else None, stop, metadata)
        return await pump(
            call,
            head,
            body,
            tail,
            error_event=exception("serviceUnavailableException", _STREAM_ERROR),
            malformed_event=event("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"te'),
            on_delivered=record,
            pre_content_tokens=answer.reasoning,
            content_type=CONTENT_TYPE,
        )
    content: list[dict[str, Any]] = []
    if thinking:
        content.append(
            {"reasoningContent": {"reasoningText": {"text": thought, "signature": _SIGNATURE}}}
        )
    content += [block for block, _ in answer.blocks]
    payload: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": answer.stop,
        "usage": usage,
        "metrics": latency(),
    }
    if reported:
        payload["additionalModelResponseFields"] = extra
    await pace_non_stream(call, output)
    if b.cut_after is not None:
        return await truncated_json(call, orjson.dumps(payload))
    if b.malformed:
        return malformed_json(call, orjson.dumps(payload))
    record()
    return call.json(payload)
