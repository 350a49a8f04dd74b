"""Chat answers → Response objects.

`response_from_chat` (a whole chat answer) and `responses_stream.StreamTranslator` (chunk by
chunk) build their output items, the echoed request fields and the usage with the same
helpers here, so a streamed answer ends in exactly the Response the same answer gets
unstreamed (ids aside). The usual request and answer (plain settings, text alone) take
shorter paths that build the same dicts. The way back is `responses_chat_view.chat_view`.
Pure, no I/O; `responses_translate` re-exports the public functions.
"""

from __future__ import annotations

import itertools
import os
import secrets
from typing import Any

import orjson

from gateway.providers.responses_opening import PLAIN_ECHO, plain_skeleton

# The spec's `ResponseErrorCode` enum: an upstream code outside it is sent as server_error.
ERROR_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "data_residency_mismatch",
        "bio_policy",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)

# Chat finish reasons that end a Response as `incomplete`, with the spec's reason.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    """A fresh id with OpenAI's prefix for its kind (resp_, msg_, fc_, rs_, call_): a
    random per-process part and a counter, so unique without a system call per id (ids
    are names, not secrets: a stored response is only ever served to the key that made it)."""
    return f"{prefix}{_ID_SALT}{hex(next(_ID_COUNTER))[3:]}"


def _reseed_ids() -> None:
    global _ID_SALT
    _ID_SALT = secrets.token_hex(10)


_ID_SALT = secrets.token_hex(10)
# From 16**12 + 1: `hex` then writes "0x1" and the 12 digits `new_id` keeps (the counter's
# part as `:012x` wrote it, a format spec costing a quarter of the call more), for the
# first 16**12 (2.8e14) ids of a process.
_ID_COUNTER = itertools.count(16**12 + 1)
# A forked worker must not mint its parent's ids.
os.register_at_fork(after_in_child=_reseed_ids)


def error_code(code: Any) -> str:
    return code if isinstance(code, str) and code in ERROR_CODES else "server_error"


def status_for(finish_reason: Any) -> tuple[str, dict[str, str] | None]:
    """(status, incomplete_details) of a Response whose chat answer ended so."""
    reason = INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning of a chat message or delta: vLLM and SGLang send `reasoning_content`
    (newer vLLM `reasoning`, sometimes both with the same text), litellm `reasoning_content`."""
    text = message.get("reasoning_content")
    if not isinstance(text, str) or not text:
        text = message.get("reasoning")
    return text if isinstance(text, str) else ""


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "summary": summary}


def content_part(kind: str, text: str) -> dict[str, Any]:
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, parts: list[tuple[str, str]], status: str) -> dict[str, Any]:
    """An assistant message; `parts` are (output_text | refusal, text) pairs."""
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [content_part(kind, text) for kind, text in parts],
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _echo_tool(tool: Any) -> Any:
    # The Response schema requires `parameters` and `strict` on a function tool (null allowed).
    if isinstance(tool, dict) and tool.get("type") == "function":
        return {"parameters": None, "strict": None, **tool}
    return tool


_NUMBERS = (int, float)


def response_skeleton(
    request: dict[str, Any], *, response_id: str, created_at: int, model: Any
) -> dict[str, Any]:
    """An in-progress Response with no output yet, echoing the request's settings. Once
    per Responses request: types are told by `__class__` (a parsed body's are exact),
    which costs no call."""
    if request.keys() <= _PLAIN_ECHO:
        return plain_skeleton(request, response_id, created_at, model)
    get = request.get
    tools = get("tools")
    text = get("text")
    text = dict(text) if text.__class__ is dict else {}
    if text.get("format").__class__ is not dict:
        text["format"] = {"type": "text"}
    instructions = get("instructions")
    metadata = get("metadata")
    parallel = get("parallel_tool_calls")
    maximum = get("max_output_tokens")
    reasoning = get("reasoning")
    previous = get("previous_response_id")
    temperature = get("temperature")
    top_p = get("top_p")
    response: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": instructions if instructions.__class__ in (str, list) else None,
        "max_output_tokens": maximum if maximum.__class__ in (int, bool) else None,
        "model": model if model.__class__ is str else str(get("model") or ""),
        "output": [],
        "parallel_tool_calls": parallel if parallel.__class__ is bool else True,
        "previous_response_id": previous if previous.__class__ is str else None,
        "reasoning": reasoning if reasoning.__class__ is dict else None,
        "store": get("store") is not False,
        "temperature": temperature if temperature.__class__ in _NUMBERS else None,
        "text": text,
        "tool_choice": get("tool_choice") or "auto",
        "tools": [_echo_tool(tool) for tool in tools] if tools.__class__ is list else [],
        "top_p": top_p if top_p.__class__ in _NUMBERS else None,
        "truncation": "auto" if get("truncation") == "auto" else "disabled",
        "metadata": metadata if metadata.__class__ is dict else {},
    }
    user = get("user")
    if user.__class__ is str:
        response["user"] = user
    return response


# A request of these fields alone echoes the defaults for every other setting
# (gateway/providers/responses_opening.py).
_PLAIN_ECHO = PLAIN_ECHO


_NO_DETAILS: dict[str, Any] = {}


def responses_usage(chat_usage: Any) -> dict[str, Any] | None:
    """Chat usage (prompt/completion tokens) under the Responses names. Once per streamed
    answer, so written with few calls (`__class__ is int`: no bool, no call)."""
    if not isinstance(chat_usage, dict):
        return None
    get = chat_usage.get
    inputs = get("prompt_tokens_details")
    if inputs.__class__ is not dict:
        inputs = _NO_DETAILS
    outputs = get("completion_tokens_details")
    reasoning = outputs.get("reasoning_tokens") if outputs.__class__ is dict else 0
    cached = inputs.get("cached_tokens")
    written = inputs.get("cache_write_tokens")
    prompt = get("prompt_tokens")
    completion = get("completion_tokens")
    total = get("total_tokens")
    prompt = prompt if prompt.__class__ is int and prompt > 0 else 0
    completion = completion if completion.__class__ is int and completion > 0 else 0
    usage: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": cached if cached.__class__ is int and cached > 0 else 0,
            "cache_write_tokens": written if written.__class__ is int and written > 0 else 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": reasoning if reasoning.__class__ is int and reasoning > 0 else 0
        },
        "total_tokens": total if total.__class__ is int and total > 0 else prompt + completion,
    }
    if "cost_usd" in chat_usage:
        usage["cost_usd"] = chat_usage["cost_usd"]  # Farebox's own member, kept
    return usage


# -- whole answers ------------------------------------------------------------------


def response_from_chat(
    chat: dict[str, Any],
    request: dict[str, Any],
    *,
    response_id: str,
    created_at: int,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """A `chat.completion` as a Response object (`object: "response"`)."""
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    message = message if isinstance(message, dict) else {}
    content = text_alone(message)
    if content is not None:
        return _text_response(chat, request, choice, content, response_id, created_at, completed_at)
    output: list[dict[str, Any]] = []
    thought = reasoning_text(message)
    if thought:
        output.append(reasoning_item(new_id("rs_"), thought))
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else ""
    calls = message.get("tool_calls")
    calls = [call for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []
    if text or refusal or not (calls or output):
        parts: list[tuple[str, str]] = []
        if text or not refusal:
            parts.append(("output_text", text))
        if refusal:
            parts.append(("refusal", refusal))
        output.append(message_item(new_id("msg_"), parts, "completed"))
    for call in calls:
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
        output.append(
            function_call_item(
                new_id("fc_"),
                str(call.get("id") or new_id("call_")),
                str(function.get("name") or ""),
                arguments,
                "completed",
            )
        )
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    model = chat.get("model") if isinstance(chat.get("model"), str) else request.get("model")
    response = response_skeleton(
        request, response_id=response_id, created_at=created_at, model=model
    )
    status, details = status_for(finish)
    if status == "incomplete" and output and "status" in output[-1]:
        output[-1]["status"] = "incomplete"  # the item being written when it was cut
    response["status"] = status
    response["incomplete_details"] = details
    response["output"] = output
    if status == "completed" and completed_at is not None:
        response["completed_at"] = completed_at
    usage = responses_usage(chat.get("usage"))
    if usage is not None:
        response["usage"] = usage
    return response


_NO_TEXT = (None, "")


def text_alone(message: dict[str, Any]) -> str | None:
    """The content of a chat message that is non-empty text and nothing else — the usual
    answer (vLLM's nulls and empty lists count as absent); else None."""
    content = message.get("content")
    if (
        content.__class__ is str
        and content
        and message.get("refusal") is None
        and not message.get("tool_calls")
        and message.get("reasoning_content") in _NO_TEXT
        and message.get("reasoning") in _NO_TEXT
    ):
        return content
    return None


def _text_response(
    chat: dict[str, Any],
    request: dict[str, Any],
    choice: dict[str, Any],
    text: str,
    response_id: str,
    created_at: int,
    completed_at: int | None,
) -> dict[str, Any]:
    """`response_from_chat` of an answer that is non-empty text alone: the same Response
    (tests/unit/test_responses_fast_paths.py), without the branches for the other items."""
    status, details = status_for(choice.get("finish_reason"))
    model = chat.get("model")
    response = response_skeleton(
        request,
        response_id=response_id,
        created_at=created_at,
        model=model if model.__class__ is str else request.get("model"),
    )
    response["status"] = status
    response["incomplete_details"] = details
    response["output"] = [
        {
            "id": new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
    ]
    if completed_at is not None and status == "completed":
        response["completed_at"] = completed_at
    usage = responses_usage(chat.get("usage"))
    if usage is not None:
        response["usage"] = usage
    return response
