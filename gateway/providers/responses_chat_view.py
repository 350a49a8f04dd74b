"""A Response object read back as a `chat.completion`, for code that reads chat bodies
(quality gates, consensus, drill shape checks). Pure, no I/O; re-exported by
`responses_translate` beside the way there (`responses_output.response_from_chat`).
"""

from __future__ import annotations

from typing import Any


def chat_view(response: dict[str, Any]) -> dict[str, Any]:
    """A Response object seen as a `chat.completion` (for code that reads chat bodies)."""
    texts: list[str] = []
    refusals: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    output = response.get("output")
    for item in output if isinstance(output, list) else ():
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    texts.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    refusals.append(part.get("refusal") or "")
        elif kind == "reasoning":
            thoughts.extend(s.get("text") or "" for s in item.get("summary") or ())
        elif kind == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                }
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": "".join(refusals) if refusals else None,
    }
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    finish = {"max_output_tokens": "length", "content_filter": "content_filter"}.get(
        str(reason), "tool_calls" if calls else "stop"
    )
    chat: dict[str, Any] = {
        "id": response.get("id"),
        "object": "chat.completion",
        "created": int(response.get("created_at") or 0),
        "model": response.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
    }
    usage = response.get("usage")
    if isinstance(usage, dict):
        chat["usage"] = _chat_usage(usage)
    return chat


def _chat_usage(usage: dict[str, Any]) -> dict[str, Any]:
    inputs = usage.get("input_tokens_details") or {}
    outputs = usage.get("output_tokens_details") or {}
    out: dict[str, Any] = {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
        "prompt_tokens_details": {"cached_tokens": inputs.get("cached_tokens", 0)},
        "completion_tokens_details": {"reasoning_tokens": outputs.get("reasoning_tokens", 0)},
    }
    if inputs.get("cache_write_tokens"):
        out["prompt_tokens_details"]["cache_write_tokens"] = inputs["cache_write_tokens"]
    if "cost_usd" in usage:
        out["cost_usd"] = usage["cost_usd"]
    return out
