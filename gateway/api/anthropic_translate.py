"""Anthropic Messages requests → OpenAI chat payloads, and errors → Anthropic error bodies.

Pure functions, no I/O. The gateway routes, meters and fails over OpenAI chat requests;
the Anthropic ingress is a translation at the edge, so the service never knows. Only
fields that have an OpenAI chat meaning are carried over; the rest (`service_tier`,
`container`, `mcp_servers`, `context_management`, …) are dropped rather than forwarded,
since Anthropic-shaped fields would only make OpenAI-protocol upstreams reject the call.
The answer side lives in `anthropic_reply`.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError, anthropic_error_type, bad_request, clip

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})


def error_body(error: GatewayError) -> bytes:
    """`{"type":"error","error":{"type","message"}}` for the same status as `error`."""
    return error.anthropic_body()


def error_type(status: int) -> str:
    return anthropic_error_type(status)


def to_openai(request: dict[str, Any], *, need_max_tokens: bool = True) -> dict[str, Any]:
    """Validate an Anthropic Messages body and build the equivalent chat payload.

    Raises a 400 GatewayError naming the offending field for anything malformed.
    """
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "a non-empty string" if "model" in request else None)
    payload: dict[str, Any] = {"model": model}
    messages: list[dict[str, Any]] = []
    system = request.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _system(system)})
    raw = request.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages", "a non-empty array" if "messages" in request else None)
    for i, message in enumerate(raw):
        messages.extend(_message(message, f"messages[{i}]"))
    payload["messages"] = messages
    max_tokens = request.get("max_tokens")
    if max_tokens is not None or need_max_tokens:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _invalid("max_tokens", "a positive integer" if "max_tokens" in request else None)
        payload["max_tokens"] = max_tokens
    stream = request.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _invalid("stream", "a boolean")
        payload["stream"] = stream
    for field in ("temperature", "top_p"):
        value = request.get(field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _invalid(field, "a number")
            payload[field] = value
    top_k = request.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise _invalid("top_k", "an integer")
        # Not in OpenAI's schema, but litellm maps it for Anthropic/Gemini and vLLM,
        # SGLang, Together and Fireworks accept it.
        payload["top_k"] = top_k
    stops = request.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid("stop_sequences", "an array of strings")
        if stops:
            payload["stop"] = stops
    metadata = request.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _invalid("metadata", "an object")
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and user_id:
            payload["user"] = user_id
    thinking = request.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise _invalid("thinking", "an object")
        # Passed through as is: litellm's Anthropic (and Bedrock/Vertex) translation takes
        # `thinking` verbatim; mapping it to `reasoning_effort` would lose budget_tokens.
        payload["thinking"] = thinking
    _tools(request, payload)
    return payload


# -- messages ---------------------------------------------------------------------------


def _system(system: Any) -> str | list[dict[str, Any]]:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _invalid("system", "a string or an array of text blocks")
    parts = []
    for i, block in enumerate(system):
        where = f"system[{i}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _invalid(where, "a text block")
        parts.append(_text_part(block, where))
    return _collapse(parts)


def _message(message: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise _invalid(where, "an object")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise bad_request(
            f"{where}.role: expected 'user' or 'assistant'.",
            param=f"{where}.role",
            code="invalid_value",
        )
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _invalid(f"{where}.content", "a string or an array of content blocks")
    if not content and role == "user":
        raise _invalid(f"{where}.content", "a non-empty string or array of content blocks")
    known = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str) or kind not in known:
            raise bad_request(
                f"{where}.content[{j}]: block type {_shown(kind)} is not supported in a {role} "
                f"message here (supported: {', '.join(sorted(known))}).",
                param=f"{where}.content[{j}].type",
                code="invalid_value",
            )
    if role == "user":
        return _user(content, where)
    return [_assistant(content, where)]


def _user(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Tool results become `tool` messages, first (OpenAI wants them right after the
    assistant's tool calls); the remaining blocks follow as one user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = block["type"]
        if kind == "tool_result":
            tool_message, images = _tool_result(block, at)
            out.append(tool_message)
            # OpenAI tool messages carry text only: a tool's images go to the user turn.
            parts.extend(images)
        elif kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image":
            parts.append(_image_part(block, at))
        else:
            parts.append(_document_part(block, at))
    if parts or not out:
        out.append({"role": "user", "content": _collapse(parts)})
    return out


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{where}.tool_use_id", "a non-empty string")
    content = block.get("content")
    images: list[dict[str, Any]] = []
    text: str | list[dict[str, Any]]
    if content is None or isinstance(content, str):
        text = content or ""
    elif isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            at = f"{where}.content[{k}]"
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "text":
                texts.append(_text_part(inner, at))
            elif kind == "image":
                images.append(_image_part(inner, at))
            else:
                raise _invalid(at, "a text or image block")
        text = _collapse(texts) if texts else ""
    else:
        raise _invalid(f"{where}.content", "a string or an array of blocks")
    # `is_error` has no OpenAI field; the result's own text usually says what failed.
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _assistant(blocks: list[dict[str, Any]], where: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = block["type"]
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id:
                raise _invalid(f"{at}.id", "a non-empty string")
            if not isinstance(name, str) or not name:
                raise _invalid(f"{at}.name", "a non-empty string")
            if not isinstance(arguments, dict):
                raise _invalid(f"{at}.input", "an object")
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
                }
            )
        else:
            # litellm sends `thinking_blocks` back to Anthropic (signatures included), which
            # extended thinking with tool use requires; other upstreams ignore it.
            thinking.append(block)
    message: dict[str, Any] = {"role": "assistant", "content": _collapse(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    elif not parts:
        message["content"] = ""
    if thinking:
        message["thinking_blocks"] = thinking
    return message


# -- content parts ----------------------------------------------------------------------


def _text_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    text = block.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{where}.text", "a string")
    part: dict[str, Any] = {"type": "text", "text": text}
    if "cache_control" in block:
        # litellm turns it back into Anthropic prompt caching; OpenAI upstreams cache
        # automatically and ignore it.
        part["cache_control"] = block["cache_control"]
    return part


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _invalid(f"{where}.source", "base64 image data with a media_type")
        url = f"data:{media};base64,{data}"
    elif kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _invalid(f"{where}.source", "a base64 or url image source")
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    if "cache_control" in block:
        part["cache_control"] = block["cache_control"]
    return part


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _invalid(f"{where}.source", "base64 document data with a media_type")
        return {"type": "file", "file": {"file_data": f"data:{media};base64,{data}"}}
    if kind == "text" and isinstance(source, dict) and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    raise bad_request(
        f"{where}.source: only base64 and text document sources are supported here.",
        param=f"{where}.source",
        code="invalid_value",
    )


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone plain text part as a string: the form every OpenAI-compatible server takes."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        return str(parts[0]["text"])
    return parts


# -- tools ------------------------------------------------------------------------------


def _tools(request: dict[str, Any], payload: dict[str, Any]) -> None:
    tools = request.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools", "an array")
        functions = []
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            if not isinstance(tool, dict):
                raise _invalid(where, "an object")
            if tool.get("type", "custom") != "custom":
                raise bad_request(
                    f"{where}: server tool {_shown(tool.get('type'))} is not supported here; "
                    "only client tools (name, description, input_schema) are.",
                    param=f"{where}.type",
                    code="invalid_value",
                )
            name, schema = tool.get("name"), tool.get("input_schema")
            if not isinstance(name, str) or not name:
                raise _invalid(f"{where}.name", "a non-empty string")
            if not isinstance(schema, dict):
                raise _invalid(f"{where}.input_schema", "an object")
            function: dict[str, Any] = {"name": name, "parameters": schema}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            functions.append({"type": "function", "function": function})
        if functions:
            payload["tools"] = functions
    choice = request.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(kind, str) or (kind not in _TOOL_CHOICES and kind != "tool"):
        raise _invalid("tool_choice", "an object of type auto, any, tool or none")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("tool_choice.name", "a non-empty string")
        payload["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        payload["tool_choice"] = _TOOL_CHOICES[str(kind)]
    # OpenAI rejects parallel_tool_calls without tools.
    if choice.get("disable_parallel_tool_use") is True and "tools" in payload:
        payload["parallel_tool_calls"] = False


def _invalid(field: str, expected: str | None) -> GatewayError:
    """400 for a missing field (expected=None) or one of the wrong type/value."""
    if expected is None:
        return bad_request(
            f"{field}: Field required", param=field, code="missing_required_parameter"
        )
    return bad_request(f"{field}: expected {expected}.", param=field, code="invalid_value")


def _shown(value: Any) -> str:
    """A client's value quoted in an error, bounded: a 1 MB block type comes back short."""
    if isinstance(value, str):
        return repr(clip(value))
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    return repr(value)
