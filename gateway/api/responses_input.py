"""What a `POST /v1/responses` body must be before it is routed, and the conversation it
continues.

The body is checked here (types, the fields Farebox acts on), then `previous_response_id`
is resolved from the conversation store into one `input` list — the previous turn's input
and output, then this turn's — so whichever deployment serves this turn (native or
translated, after a failover or on another replica) sees the whole conversation. The
previous turn's `instructions` are not carried over, as the Responses API specifies.
"""

from __future__ import annotations

from typing import Any

from gateway.api.validate import require_model
from gateway.errors import InvalidRequest

_BOOLS = ("stream", "store", "parallel_tool_calls", "background")
_NUMBERS = ("temperature", "top_p")


def bad(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "an array" if isinstance(value, list) else "an object"
    )


def _type_error(field: str, expected: str, value: Any) -> InvalidRequest:
    return bad(
        f"Invalid type for '{field}': expected {expected}, but got {_kind(value)} instead.",
        field,
        "invalid_type",
    )


# The fields of the usual request whose values `_plain` checks by their exact class.
_PLAIN_FIELDS = frozenset({"model", "input", "stream", "store", "max_output_tokens"})


def _plain(payload: dict[str, Any]) -> bool:
    """Whether the body is the usual request — a model, input as a string or a list of
    objects, and at most stream / store / a positive max_output_tokens, every value of its
    exact type — which `check_responses` would accept: its checks are then skipped. A
    parsed body's classes are exact, so `__class__` tells them apart without calls."""
    if not payload.keys() <= _PLAIN_FIELDS:
        return False
    get = payload.get
    model = get("model")
    given = get("input")
    limit = get("max_output_tokens")
    if (
        model.__class__ is not str
        or not model
        or get("stream", False).__class__ is not bool
        or get("store", False).__class__ is not bool
        or (limit is not None and (limit.__class__ is not int or limit < 1))
    ):
        return False
    if given.__class__ is list:
        for item in given:  # noqa: SIM110 (a loop, not a generator: no frame per item)
            if item.__class__ is not dict:
                return False
        return True
    return given.__class__ is str


def check_responses(payload: dict[str, Any]) -> tuple[str, bool]:
    """Validate a Responses create body; returns (model, stream)."""
    if _plain(payload):
        return payload["model"], payload.get("stream") is True
    model = require_model(payload)
    given = payload.get("input")
    previous = payload.get("previous_response_id")
    if given is None and previous is None and payload.get("prompt") is None:
        raise bad("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if given is not None and not isinstance(given, str | list):
        raise _type_error("input", "a string or an array of items", given)
    if isinstance(given, list):
        for i, item in enumerate(given):
            if not isinstance(item, dict):
                raise _type_error(f"input[{i}]", "an object", item)
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise _type_error("previous_response_id", "a non-empty string", previous)
    instructions = payload.get("instructions")
    if instructions is not None and not isinstance(instructions, str | list):
        raise _type_error("instructions", "a string", instructions)
    for field in _BOOLS:
        value = payload.get(field)
        if value is not None and not isinstance(value, bool):
            raise _type_error(field, "a boolean", value)
    for field in _NUMBERS:
        value = payload.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _type_error(field, "a number", value)
    limit = payload.get("max_output_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _type_error("max_output_tokens", "a positive integer", limit)
    for field in ("text", "reasoning", "metadata"):
        value = payload.get(field)
        if value is not None and not isinstance(value, dict):
            raise _type_error(field, "an object", value)
    tools = payload.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)
    ):
        raise _type_error("tools", "an array of objects", tools)
    if payload.get("background") is True:
        raise bad(
            "background mode is not supported by this gateway; call without 'background'.",
            "background",
            "unsupported_parameter",
        )
    return model, payload.get("stream") is True


def as_items(given: Any) -> list[dict[str, Any]]:
    """A Responses `input` as a list of items (a string is one user message)."""
    if given is None:
        return []
    if isinstance(given, str):
        return [{"type": "message", "role": "user", "content": given}]
    return [item for item in given if isinstance(item, dict)]
