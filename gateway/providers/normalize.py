"""Provider answers → the OpenAI shape in WIRE.md, whatever adapter produced them.

Pure functions over plain dicts (no litellm import, no I/O), so a failover from one backend
to another cannot change what the client's code sees: the same keys, finish reasons, usage
semantics and error statuses. litellm already translates most provider formats into
OpenAI-like objects; what it leaves behind is fixed here: its extra keys
(`provider_specific_fields`, `thinking_blocks`, `function_call: null`…), provider finish
reasons, usage that names cache tokens the Anthropic way, a usage chunk that still carries a
choice, and error statuses it flattens (Anthropic's 529 becomes 500, 413 becomes 400).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Every finish reason a provider (or litellm passing one through) may report.
FINISH_REASONS: Mapping[str, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",
    # Anthropic
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
    # Gemini / Vertex (litellm lower-cases some of them)
    "finish_reason_unspecified": "stop",
    "safety": "content_filter",
    "recitation": "content_filter",
    "blocklist": "content_filter",
    "prohibited_content": "content_filter",
    "spii": "content_filter",
    "image_safety": "content_filter",
    "language": "content_filter",
    "malformed_function_call": "stop",
    "other": "stop",
    # Bedrock Converse
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    # Text-generation servers
    "eos": "stop",
    "eos_token": "stop",
}

# Provider error types → the HTTP status they mean, for when litellm has flattened it.
_ERROR_TYPE_STATUS: Mapping[str, int] = {
    # Anthropic
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
    # Google (status names)
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    # Bedrock (x-amzn-errortype)
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ThrottlingException": 429,
    "ServiceQuotaExceededException": 429,
    "ModelTimeoutException": 408,
    "ModelNotReadyException": 503,
    "ServiceUnavailableException": 503,
    "InternalServerException": 500,
    "ModelErrorException": 500,
}

# Statuses the client sees instead of the provider's own, for statuses no OpenAI SDK knows.
# Anthropic's 529 "overloaded" is a transient capacity error: 503 keeps it retryable.
_CLIENT_STATUS: Mapping[int, int] = {529: 503}

_OPENAI_TYPE: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

_CONTEXT_MARKERS = (
    "context length",
    "context_length",
    "context window",
    "prompt is too long",
    "input is too long",
    "too many tokens",
    "maximum context",
    "exceeds the maximum number of tokens",
    "input token count",
)


def finish_reason(value: Any, has_tool_calls: bool = False) -> str | None:
    """The OpenAI finish reason for any provider's; None stays None (a stream still going)."""
    if value is None or value == "":
        return None
    reason = FINISH_REASONS.get(str(value)) or FINISH_REASONS.get(str(value).lower(), "stop")
    if has_tool_calls and reason == "stop":
        return "tool_calls"  # some providers say "stop" after a tool call; OpenAI never does
    return reason


def _count(value: Any) -> int:
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return 0


def _details(usage: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = usage.get(name)
    return value if isinstance(value, Mapping) else {}


def usage(raw: Any) -> dict[str, Any] | None:
    """OpenAI usage: cached reads and cache writes INSIDE prompt_tokens (and named in
    prompt_tokens_details), reasoning INSIDE completion_tokens.

    Accepts OpenAI usage, litellm's (which adds Anthropic's `cache_read_input_tokens` /
    `cache_creation_input_tokens` beside it) and Anthropic's raw usage, whose
    `input_tokens` excludes both cache classes.
    """
    if not isinstance(raw, Mapping):
        return None
    prompt_details = _details(raw, "prompt_tokens_details")
    completion_details = _details(raw, "completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) or _count(
        raw.get("cache_read_input_tokens")
    )
    cache_write = (
        _count(prompt_details.get("cache_write_tokens"))
        or _count(prompt_details.get("cache_creation_tokens"))
        or _count(raw.get("cache_creation_input_tokens"))
    )
    if "prompt_tokens" in raw:
        prompt = _count(raw.get("prompt_tokens"))
        completion = _count(raw.get("completion_tokens"))
    else:  # Anthropic's own names: input excludes the cache classes
        prompt = _count(raw.get("input_tokens")) + cached + cache_write
        completion = _count(raw.get("output_tokens"))
    # A provider whose prompt count leaves the cache out would otherwise be billed for
    # negative uncached input; counting the cache in is the only consistent reading.
    prompt = max(prompt, cached + cache_write)
    reasoning = min(_count(completion_details.get("reasoning_tokens")), completion)
    details: dict[str, Any] = {"cached_tokens": cached}
    if cache_write:
        details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()


def _tool_call(raw: Any, streamed: bool) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        return None
    function = raw.get("function")
    function = function if isinstance(function, Mapping) else {}
    call: dict[str, Any] = {}
    if streamed:
        call["index"] = _count(raw.get("index"))
    if raw.get("id") or not streamed:
        call["id"] = raw.get("id") or ""
        call["type"] = "function"
    out_function: dict[str, Any] = {}
    if function.get("name") or not streamed:
        out_function["name"] = function.get("name") or ""
    arguments = _arguments(function.get("arguments"))
    if arguments or not streamed:
        out_function["arguments"] = arguments
    call["function"] = out_function
    return call


def _tool_calls(raw: Any, streamed: bool) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        return []
    return [call for item in raw if (call := _tool_call(item, streamed)) is not None]


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: keep the text ones
        return "".join(part.get("text", "") for part in value if isinstance(part, Mapping)) or None
    return str(value)


def _logprobs(value: Any) -> dict[str, Any] | None:
    """A choice's log probabilities with both keys the spec requires (litellm's from
    Gemini / Vertex AI have no `refusal`)."""
    if not isinstance(value, Mapping):
        return None
    content, refusal = value.get("content"), value.get("refusal")
    return {
        "content": content if isinstance(content, list) else None,
        "refusal": refusal if isinstance(refusal, list) else None,
    }


def _fingerprint(raw: Mapping[str, Any], out: dict[str, Any]) -> None:
    """`system_fingerprint` only when the provider sent one: the spec types it `string`,
    and litellm reports `None` for every provider that has no such thing."""
    value = raw.get("system_fingerprint")
    if isinstance(value, str):
        out["system_fingerprint"] = value


def response(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A `chat.completion` with exactly the OpenAI fields."""
    choices = []
    for position, choice in enumerate(raw.get("choices") or ()):
        if not isinstance(choice, Mapping):
            continue
        message = choice.get("message")
        message = message if isinstance(message, Mapping) else {}
        calls = _tool_calls(message.get("tool_calls"), streamed=False)
        out_message: dict[str, Any] = {
            "role": "assistant",
            "content": _text(message.get("content")),
            "refusal": message.get("refusal") if isinstance(message.get("refusal"), str) else None,
        }
        if calls:
            out_message["tool_calls"] = calls
        if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
            # Not OpenAI's, but what reasoning models behind OpenAI-protocol servers
            # (vLLM, DeepSeek, Together) send too, so kept alike for every backend.
            out_message["reasoning_content"] = message["reasoning_content"]
        index = choice.get("index")
        choices.append(
            {
                "index": index if type(index) is int else position,
                "message": out_message,
                "logprobs": _logprobs(choice.get("logprobs")),
                "finish_reason": finish_reason(choice.get("finish_reason"), bool(calls)) or "stop",
            }
        )
    body: dict[str, Any] = {
        "id": str(raw.get("id") or ""),
        "object": "chat.completion",
        "created": _count(raw.get("created")),
        "model": str(raw.get("model") or ""),
        "choices": choices,
        "usage": usage(raw.get("usage")),
    }
    _fingerprint(raw, body)
    if isinstance(raw.get("service_tier"), str):
        body["service_tier"] = raw["service_tier"]
    return body


def chunks(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One provider stream chunk → zero or more `chat.completion.chunk`s.

    Usage always travels alone in a chunk with `choices: []`, as OpenAI sends it (litellm
    attaches it to a chunk with an empty choice, and some providers put it on the last
    content chunk). Chunks that carry nothing are dropped.
    """
    head = {
        "id": str(raw.get("id") or ""),
        "object": "chat.completion.chunk",
        "created": _count(raw.get("created")),
        "model": str(raw.get("model") or ""),
    }
    _fingerprint(raw, head)
    out: list[dict[str, Any]] = []
    choices = []
    for position, choice in enumerate(raw.get("choices") or ()):
        if not isinstance(choice, Mapping):
            continue
        delta = choice.get("delta")
        delta = delta if isinstance(delta, Mapping) else {}
        calls = _tool_calls(delta.get("tool_calls"), streamed=True)
        out_delta: dict[str, Any] = {}
        if delta.get("role"):
            out_delta["role"] = "assistant"
        content = _text(delta.get("content"))
        if content or ("role" in out_delta and not calls):
            out_delta["content"] = content or ""
        if isinstance(delta.get("refusal"), str):
            out_delta["refusal"] = delta["refusal"]
        if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
            out_delta["reasoning_content"] = delta["reasoning_content"]
        if calls:
            out_delta["tool_calls"] = calls
        reason = finish_reason(choice.get("finish_reason"))
        if not out_delta and reason is None:
            continue
        index = choice.get("index")
        choices.append(
            {
                "index": index if type(index) is int else position,
                "delta": out_delta,
                "logprobs": _logprobs(choice.get("logprobs")),
                "finish_reason": reason,
            }
        )
    if choices:
        out.append({**head, "choices": choices})
    normalized = usage(raw.get("usage"))
    if normalized is not None:
        out.append({**head, "choices": [], "usage": normalized})
    return out


def fix_tool_finish(chunk: dict[str, Any], tool_call_seen: bool) -> None:
    """A stream that made tool calls ends with `tool_calls`, as OpenAI's do."""
    if not tool_call_seen:
        return
    for choice in chunk.get("choices", ()):
        if choice.get("finish_reason") == "stop":
            choice["finish_reason"] = "tool_calls"


def has_finish(chunk: Mapping[str, Any]) -> bool:
    return any(isinstance(c, Mapping) and c.get("finish_reason") for c in chunk.get("choices", ()))


def has_tool_calls(chunk: Mapping[str, Any]) -> bool:
    for choice in chunk.get("choices", ()):
        delta = choice.get("delta") if isinstance(choice, Mapping) else None
        if isinstance(delta, Mapping) and delta.get("tool_calls"):
            return True
    return False


# -- errors ------------------------------------------------------------------------------


def embedded_body(message: str) -> Any:
    """The provider's JSON error body that litellm embeds in its exception message."""
    start = message.find("{")
    end = message.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        return orjson.loads(message[start : end + 1])
    except orjson.JSONDecodeError:
        return None


def _provider_fields(body: Any) -> tuple[str | None, str | None, str | None]:
    """(error type, message, code) from any provider's error body."""
    if not isinstance(body, Mapping):
        return None, None, None
    error = body.get("error")
    if isinstance(error, Mapping):
        kind = error.get("type") or error.get("status")
        message = error.get("message")
        code = error.get("code")
        return (
            kind if isinstance(kind, str) else None,
            message if isinstance(message, str) else None,
            code if isinstance(code, str) else None,
        )
    if isinstance(error, str):
        return None, error, None
    message = body.get("message") or body.get("Message")
    kind = body.get("__type") or body.get("type")
    return (
        kind.rsplit("#", 1)[-1] if isinstance(kind, str) else None,
        message if isinstance(message, str) else None,
        None,
    )


def provider_status(status: int | None, error_type: str | None) -> int | None:
    """The provider's real status: its own when it is specific, else what its error type
    says (litellm reports an Anthropic 529 as 500 and a 413 as 400)."""
    implied = _ERROR_TYPE_STATUS.get(error_type or "")
    if implied is not None and status in (None, 400, 500):
        return implied
    return status


def error(
    status: int | None,
    message: str,
    *,
    error_type: str | None = None,
    code: str | None = None,
    context_exceeded: bool = False,
) -> tuple[int, dict[str, Any]]:
    """(status for the client, OpenAI error body) for one provider error."""
    body = embedded_body(message)
    found_type, found_message, found_code = _provider_fields(body)
    error_type = error_type or found_type
    real = provider_status(status, error_type) or 500
    client = _CLIENT_STATUS.get(real, real)
    text = found_message or message
    lowered = text.lower()
    if context_exceeded or (client == 400 and any(m in lowered for m in _CONTEXT_MARKERS)):
        code = "context_length_exceeded"
    elif real == 529:
        code = "overloaded"
    elif code is None:
        code = found_code or (error_type if error_type else None)
    return client, {
        "error": {
            "message": text,
            "type": _OPENAI_TYPE.get(client, "server_error"),
            "param": None,
            "code": code,
        }
    }
