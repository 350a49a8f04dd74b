"""Cheap structural checks on request bodies, without pydantic on the hot path.

Only what the gateway itself depends on, or what an upstream would reject anyway, is
checked here; every other field passes through untouched.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from gateway.errors import GatewayError, bad_request, clip

MESSAGE_ROLES = frozenset({"developer", "system", "user", "assistant", "tool", "function"})
ENCODINGS = frozenset({"float", "base64"})


class JsonLimits(Protocol):
    """Structural limits on a request body (ServerConfig has these fields)."""

    @property
    def max_json_depth(self) -> int: ...

    @property
    def max_array_items(self) -> int: ...

    @property
    def max_object_keys(self) -> int: ...


def parse_object(body: bytes, limits: JsonLimits | None = None) -> dict[str, Any]:
    """Parse a request body that must be a JSON object, within `limits` when given.

    The limits bound the work every later step (token counting, routing features,
    translation, re-serialization) can be made to do by one request; the body size limit
    alone would let a 16 MB body hold millions of tiny nested containers.
    """
    if not body:
        raise bad_request("Request body is empty; expected a JSON object.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if text.startswith("depth limit exceeded"):
            # orjson's own recursion cap (1024) is far above any configured one.
            depth = limits.max_json_depth if limits is not None else 1024
            raise _too_deep(depth, None) from None
        reason = "is not valid UTF-8" if "UTF-8" in text else f"is not valid JSON ({clip(text)})"
        raise bad_request(f"Request body {reason}.") from None
    if not isinstance(payload, dict):
        raise bad_request(f"Request body must be a JSON object, not {_kind(payload)}.")
    if limits is not None:
        check_structure(body, payload, limits)
    return payload


# Bodies up to this size are pre-checked by counting bracket bytes (~0.3 µs for a short
# chat, ~3 µs at 4 KB); larger ones go straight to the walk, whose cost follows the number of
# containers and items rather than bytes (~1 µs for a 160 KB single-prompt body, where
# counting bytes would take ~150 µs). Measured in bench/validate_cost.py.
SCAN_BYTES = 4096
_CONTAINERS = frozenset({dict, list})


def check_structure(body: bytes, payload: dict[str, Any], limits: JsonLimits) -> None:
    """400 if `payload` nests deeper, or holds a longer array or bigger object, than allowed.

    A container needs a `{` or `[` byte, and n array items or object members need n - 1
    commas (so at least 2n - 1 bytes): a small body whose bracket count is within the depth
    limit cannot break any limit, and is not walked. Brackets inside strings only make the
    pre-check pessimistic, never wrong.
    """
    depth = limits.max_json_depth
    width = min(limits.max_array_items, limits.max_object_keys)
    size = len(body)
    if size <= SCAN_BYTES and size < 2 * width and body.count(b"{") + body.count(b"[") <= depth:
        return
    _walk(payload, depth, limits.max_array_items, limits.max_object_keys)


def _walk(payload: dict[str, Any], max_depth: int, max_items: int, max_keys: int) -> None:
    """Level by level (no recursion limit to hit, no per-node tuples); errors name the
    top-level field. orjson builds exact dicts and lists, so `type()` tests suffice."""
    if len(payload) > max_keys:
        raise _too_wide("The request body", "members", max_keys, None)
    for field, top in payload.items():
        if type(top) not in _CONTAINERS:
            continue
        level = [top]
        depth = 2  # the body itself is level 1
        while level:
            if depth > max_depth:
                raise _too_deep(max_depth, clip(field))
            below: list[Any] = []
            for node in level:
                if type(node) is list:
                    if len(node) > max_items:
                        name = clip(field)
                        raise _too_wide(f"An array in '{name}'", "items", max_items, name)
                    below += [c for c in node if type(c) in _CONTAINERS]
                else:
                    if len(node) > max_keys:
                        name = clip(field)
                        raise _too_wide(f"An object in '{name}'", "members", max_keys, name)
                    below += [c for c in node.values() if type(c) in _CONTAINERS]
            level = below
            depth += 1


def _too_deep(limit: int, param: str | None) -> GatewayError:
    where = f"'{param}'" if param is not None else "The request body"
    return bad_request(
        f"{where} is nested too deeply: this gateway allows at most {limit} levels of "
        "JSON objects and arrays.",
        param=param,
        code="json_too_deep",
    )


def _too_wide(where: str, unit: str, limit: int, param: str | None) -> GatewayError:
    return bad_request(
        f"{where} has more than {limit} {unit}, this gateway's limit.",
        param=param,
        code="json_too_large",
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _type_error(field: str, expected: str, value: Any) -> GatewayError:
    return bad_request(
        f"Invalid type for '{field}': expected {expected}, but got {_kind(value)}.",
        param=field,
        code="invalid_type",
    )


def require_model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if model is None:
        raise bad_request(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    return model


def _optional_bool(payload: dict[str, Any], field: str) -> bool:
    value = payload.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _type_error(field, "a boolean", value)
    return value


def _optional_int(payload: dict[str, Any], field: str, minimum: int) -> None:
    value = payload.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(field, "an integer", value)
    if value < minimum:
        raise bad_request(
            f"Invalid '{field}': {value} is less than the minimum of {minimum}.",
            param=field,
            code="invalid_value",
        )


def _optional_number(payload: dict[str, Any], field: str) -> None:
    value = payload.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _type_error(field, "a number", value)


def _optional_list(payload: dict[str, Any], field: str) -> None:
    value = payload.get(field)
    if value is not None and not isinstance(value, list):
        raise _type_error(field, "an array", value)


def _common_generation(payload: dict[str, Any]) -> tuple[bool, bool]:
    """Checks shared by chat and legacy completions; returns (stream, include_usage)."""
    stream = _optional_bool(payload, "stream")
    options = payload.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _type_error("stream_options", "an object", options)
        if not stream:
            raise bad_request(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        include_usage = _optional_bool(options, "include_usage")
    for field in ("max_tokens", "max_completion_tokens", "n"):
        _optional_int(payload, field, 1)
    for field in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _optional_number(payload, field)
    return stream, include_usage


def check_chat(payload: dict[str, Any]) -> tuple[str, bool, bool]:
    """Validate a chat completion body; returns (model, stream, include_usage)."""
    model = require_model(payload)
    messages = payload.get("messages")
    if messages is None:
        raise bad_request(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise bad_request(
            "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise bad_request(
                f"Invalid value for 'messages[{i}].role': expected one of "
                f"{', '.join(sorted(MESSAGE_ROLES))}.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _type_error(f"messages[{i}].content", "a string or an array of parts", content)
    _optional_list(payload, "tools")
    tools = payload.get("tools")
    if tools is not None and not all(isinstance(t, dict) for t in tools):
        raise _type_error("tools", "an array of objects", tools)
    response_format = payload.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise _type_error("response_format", "an object", response_format)
    stream, include_usage = _common_generation(payload)
    return model, stream, include_usage


def check_completion(payload: dict[str, Any]) -> tuple[str, bool, bool]:
    model = require_model(payload)
    prompt = payload.get("prompt")
    if prompt is None:
        raise bad_request(
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    if not isinstance(prompt, str | list):
        raise _type_error("prompt", "a string or an array", prompt)
    stream, include_usage = _common_generation(payload)
    return model, stream, include_usage


def check_embedding(payload: dict[str, Any]) -> str:
    model = require_model(payload)
    value = payload.get("input")
    if value is None:
        raise bad_request(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    if isinstance(value, str):
        if not value:
            raise bad_request("'input' must not be empty.", param="input", code="invalid_value")
    elif isinstance(value, list):
        if not value:
            raise bad_request(
                "'input' must not be an empty array.", param="input", code="empty_array"
            )
        if not all(isinstance(v, str | int | list) and not isinstance(v, bool) for v in value):
            raise _type_error("input", "strings or arrays of token ids", value)
    else:
        raise _type_error("input", "a string or an array", value)
    encoding = payload.get("encoding_format")
    # isinstance first: a list or object is unhashable, and `in` would raise (a 500).
    if encoding is not None and (not isinstance(encoding, str) or encoding not in ENCODINGS):
        raise bad_request(
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    _optional_int(payload, "dimensions", 1)
    return model
