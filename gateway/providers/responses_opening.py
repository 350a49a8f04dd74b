"""The usual Responses request's Response, made with fewer calls.

A request of `PLAIN_ECHO`'s fields alone (model, input, stream, store, max_output_tokens:
`plain_echo`) echoes the defaults for every other setting, so its Response has five values of
its own — id, created_at, max_output_tokens, model, store. Its in-progress skeleton is a copy
of a constant dict with those set (`plain_skeleton`, `responses_output.response_skeleton`'s
plain case), and a translated stream's opening and terminal Response JSON are joined from
constant pieces around their JSON (`plain_values`, `joined_opening`, `joined_terminal`):
the bytes `orjson.dumps` writes for the same dicts (tests/unit/test_responses_fast_paths*.py).
Pure, no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

# A request of these fields alone echoes the defaults for every other setting.
PLAIN_ECHO = frozenset({"model", "input", "stream", "store", "max_output_tokens"})


def plain_skeleton(
    request: dict[str, Any], response_id: str, created_at: int, model: Any
) -> dict[str, Any]:
    """`response_skeleton` of a request with `PLAIN_ECHO`'s fields only: the same dict
    (tests/unit/test_responses_fast_paths.py), a copy of `_PLAIN_BASE` (one C call; a dict
    display of 21 computed members costs several times more) with the request's values and
    fresh containers set in it (the copy is shallow: no two Responses share a list or dict)."""
    get = request.get
    response = _PLAIN_BASE.copy()
    response["id"] = response_id
    response["created_at"] = created_at
    maximum = get("max_output_tokens")
    if maximum.__class__ in (int, bool):
        response["max_output_tokens"] = maximum
    response["model"] = model if model.__class__ is str else str(get("model") or "")
    response["output"] = []
    if get("store") is False:
        response["store"] = False
    response["text"] = {"format": {"type": "text"}}
    response["tools"] = []
    response["metadata"] = {}
    return response


# `plain_skeleton`'s members in `response_skeleton`'s order; the None of output, text, tools
# and metadata are replaced by fresh containers in every copy.
_PLAIN_BASE: dict[str, Any] = {
    "id": "",
    "object": "response",
    "created_at": 0,
    "status": "in_progress",
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "model": "",
    "output": None,
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": None,
    "store": True,
    "temperature": None,
    "text": None,
    "tool_choice": "auto",
    "tools": None,
    "top_p": None,
    "truncation": "disabled",
    "metadata": None,
}


def plain_echo(request: dict[str, Any]) -> bool:
    """Whether `response_skeleton` of `request` is `plain_skeleton`'s (`plain_opening`)."""
    return request.keys() <= PLAIN_ECHO


# `orjson.dumps(plain_skeleton(…))` around its five values (`plain_opening`). Joined, not
# `%`-formatted: bytes formatting scans its whole template for conversions on every call.
_OPENING_ID = b'{"id":'
_OPENING_CREATED = b',"object":"response","created_at":'
_OPENING_LIMIT = (
    b',"status":"in_progress","error":null,"incomplete_details":null,"instructions":null,'
    b'"max_output_tokens":'
)
_OPENING_MODEL = b',"model":'
_OPENING_STORE = (
    b',"output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":null,"store":'
)
_OPENING_END = (
    b',"temperature":null,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],'
    b'"top_p":null,"truncation":"disabled","metadata":{}}'
)
_JSON_BOOLS = {True: b"true", False: b"false"}


def plain_opening(request: dict[str, Any], response_id: str, created_at: int, model: Any) -> bytes:
    """`orjson.dumps(response_skeleton(request, …))` for a `plain_echo` request, without
    the dict: the same bytes (tests/unit/test_responses_fast_paths_stream.py)."""
    return joined_opening(plain_values(request, response_id, created_at, model))


def plain_values(
    request: dict[str, Any], response_id: str, created_at: int, model: Any
) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """The JSON of the five values a `plain_echo` request's Response has of its own: id,
    created_at, max_output_tokens, model and store (`joined_opening`, `joined_terminal`)."""
    get = request.get
    maximum = get("max_output_tokens")
    if maximum.__class__ is int:
        limit = b"%d" % maximum
    else:
        limit = _JSON_BOOLS[maximum] if maximum.__class__ is bool else b"null"
    name = model if model.__class__ is str else str(get("model") or "")
    return (
        orjson.dumps(response_id),
        b"%d" % created_at if created_at.__class__ is int else orjson.dumps(created_at),
        limit,
        orjson.dumps(name),
        b"false" if get("store") is False else b"true",
    )


def joined_opening(values: tuple[bytes, bytes, bytes, bytes, bytes]) -> bytes:
    """The in-progress Response of `plain_values`, as `orjson.dumps` writes it."""
    ident, created, limit, name, store = values
    return b"".join(
        (
            _OPENING_ID,
            ident,
            _OPENING_CREATED,
            created,
            _OPENING_LIMIT,
            limit,
            _OPENING_MODEL,
            name,
            _OPENING_STORE,
            store,
            _OPENING_END,
        )
    )


# The terminal Response's bytes around the values and state (`joined_terminal`).
_TERMINAL_STATUS = b',"status":"'
_TERMINAL_DETAILS = b'","error":null,"incomplete_details":'
_TERMINAL_LIMIT = b',"instructions":null,"max_output_tokens":'
_TERMINAL_OUTPUT = b',"output":['
_TERMINAL_STORE = (
    b'],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":null,"store":'
)
_TERMINAL_END = _OPENING_END[:-1]


def joined_terminal(
    values: tuple[bytes, bytes, bytes, bytes, bytes],
    status: bytes,
    details: bytes,
    items: bytes,
    tail: bytes,
) -> bytes:
    """The Response of `plain_values` with its status, incomplete_details and output items
    (JSON, joined by commas) set, then `tail` (its usage member and closing brace), as
    `orjson.dumps` writes it (tests/unit/test_responses_fast_paths.py)."""
    ident, created, limit, name, store = values
    return b"".join(
        (
            _OPENING_ID,
            ident,
            _OPENING_CREATED,
            created,
            _TERMINAL_STATUS,
            status,
            _TERMINAL_DETAILS,
            details,
            _TERMINAL_LIMIT,
            limit,
            _OPENING_MODEL,
            name,
            _TERMINAL_OUTPUT,
            items,
            _TERMINAL_STORE,
            store,
            _TERMINAL_END,
            tail,
        )
    )
