"""OpenAI chat answers → Anthropic Messages answers (JSON; streams are in anthropic_stream).

Pure, no I/O. Lossy where OpenAI says less than Anthropic: OpenAI cannot tell a stop
sequence from a natural end, so `stop_sequence` is never reported (a stop is `end_turn`).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import UpstreamMalformed

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_PREFIXES = ("chatcmpl-", "chatcmpl_", "msg_")


def message_id(openai_id: Any, fallback: str) -> str:
    """`msg_…` from the upstream's id, so logs on both sides can be matched up."""
    if not isinstance(openai_id, str) or not openai_id:
        return f"msg_{fallback}"
    for prefix in _PREFIXES:
        if openai_id.startswith(prefix):
            return "msg_" + openai_id[len(prefix) :]
    return f"msg_{openai_id}"


def usage(openai_usage: Any) -> dict[str, int]:
    """Anthropic usage: `input_tokens` EXCLUDES cache reads and writes, unlike OpenAI's
    `prompt_tokens`; reasoning stays inside `output_tokens` on both sides."""
    if not isinstance(openai_usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    details = openai_usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    # Top-level cache fields are what litellm reports for Anthropic upstreams.
    read = _count(details.get("cached_tokens")) or _count(
        openai_usage.get("cache_read_input_tokens")
    )
    write = _count(details.get("cache_write_tokens")) or _count(
        openai_usage.get("cache_creation_input_tokens")
    )
    prompt = _count(openai_usage.get("prompt_tokens"))
    return {
        "input_tokens": max(0, prompt - read - write),
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": _count(openai_usage.get("completion_tokens")),
    }


def to_anthropic(completion: Any, model: str, fallback_id: str) -> dict[str, Any]:
    """A `chat.completion` as an Anthropic `message`, named after the model asked for."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if (
        not isinstance(completion, dict)
        or not isinstance(first, dict)
        or not isinstance(message, dict)
    ):
        raise UpstreamMalformed("The upstream answer has no message to translate.")
    content: list[dict[str, Any]] = _thinking(message)
    text = message.get("content")
    if isinstance(text, list):  # some servers answer in parts
        text = "".join(
            p["text"] for p in text if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    for i, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": tool_id(call.get("id"), fallback_id, i),
                "name": str(function.get("name") or ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    if not content:
        content.append({"type": "text", "text": ""})
    tool_used = any(block["type"] == "tool_use" for block in content)
    return {
        "id": message_id(completion.get("id"), fallback_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(first.get("finish_reason"), tool_used, bool(refusal)),
        "stop_sequence": None,
        "usage": usage(completion.get("usage")),
    }


def stop_reason(finish: Any, tool_used: bool, refused: bool) -> str:
    if refused and finish in (None, "stop"):
        return "refusal"
    mapped = STOP_REASONS.get(finish) if isinstance(finish, str) else None
    if mapped is not None:
        return mapped
    return "tool_use" if tool_used else "end_turn"


def tool_input(arguments: Any) -> dict[str, Any]:
    """Tool arguments as the object Anthropic clients expect.

    Arguments that are not a JSON object (models do emit broken JSON) are kept, not
    dropped, as `{"_raw": "<the text>"}` so the client can see what came back.
    """
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw": arguments}
    return parsed if isinstance(parsed, dict) else {"_raw": arguments}


def _thinking(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Reasoning first, as Anthropic orders it; litellm's `thinking_blocks` keep the
    signatures a client must send back, bare `reasoning_content` has none."""
    blocks = message.get("thinking_blocks")
    if isinstance(blocks, list) and blocks:
        return [
            b
            for b in blocks
            if isinstance(b, dict)
            and isinstance(b.get("type"), str)
            and b["type"] in _THINKING_TYPES
        ]
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        return [{"type": "thinking", "thinking": reasoning, "signature": ""}]
    return []


_THINKING_TYPES = frozenset({"thinking", "redacted_thinking"})


def tool_id(raw: Any, fallback: str, index: int) -> str:
    return raw if isinstance(raw, str) and raw else f"toolu_{fallback}_{index}"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
