"""Conversation items as they are stored and listed: ids, the item shapes the input_items
list returns, the conversation behind a stored response, and paging. Pure: no I/O.

A client may send items without ids (`{"role": "user", "content": "hi"}`, a
`function_call_output` it built itself), but `GET /v1/responses/{id}/input_items` lists
items by id and pages on them, so every stored item gets one, prefixed by its type as
OpenAI's are (`msg_…`, `fc_…`), with 48 random hex digits.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from gateway.errors import InvalidRequest

Item = dict[str, Any]

# The id prefix of each item type OpenAI gives one to; other types get `item_`.
PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "web_search_call": "ws",
    "file_search_call": "fs",
    "computer_call": "cu",
    "computer_call_output": "cuo",
    "code_interpreter_call": "ci",
    "image_generation_call": "ig",
    "local_shell_call": "lsh",
    "local_shell_call_output": "lsho",
    "mcp_call": "mcp",
    "mcp_list_tools": "mcpl",
    "mcp_approval_request": "mcpr",
    "mcp_approval_response": "mcpa",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
}
# Items the list API returns with a status; one sent without gets `completed`.
_WITH_STATUS = frozenset({"function_call", "function_call_output"})
MAX_PAGE = 100


def new_item_id(item_type: str | None) -> str:
    return f"{PREFIXES.get(item_type or '', 'item')}_{secrets.token_hex(24)}"


def stored_item(item: Item) -> Item:
    """`item` as it is stored and listed (a new dict; `item` is not changed): with an id, an
    explicit `type: message` on the role-and-content shorthand, a message's string content
    as one text part, and a status where the list API requires one. The model is sent the
    same conversation either way."""
    out = dict(item)
    kind = out.get("type")
    if kind is None and "role" in out:
        kind = out["type"] = "message"
    if kind == "message":
        assistant = out.get("role") == "assistant"
        content = out.get("content")
        if isinstance(content, str):
            part: Item = {"type": "output_text" if assistant else "input_text", "text": content}
            if assistant:  # an output_text part as the API returns one
                part["annotations"] = []
                part["logprobs"] = []
            out["content"] = [part]
        if assistant:
            out.setdefault("status", "completed")
    elif kind in _WITH_STATUS:
        out.setdefault("status", "completed")
    if not out.get("id"):
        out["id"] = new_item_id(kind)
    return out


def stored_items(items: Iterable[Item]) -> list[Item]:
    return [stored_item(item) for item in items]


def conversation(input_items: Sequence[Item], response: Item) -> list[Item]:
    """The context a turn chained to this response continues from: what was sent to the
    model, then what it answered (the response's `output` items)."""
    output = response.get("output")
    return [*input_items, *(output if isinstance(output, list) else ())]


def page_input_items(
    items: Sequence[Item],
    *,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> tuple[list[Item], bool]:
    """One page of `items` (oldest first as stored) for the input_items list: in `order`
    (`desc`, the API's default, is newest first), starting after the item whose id is
    `after`, at most `limit` (1..100) of them; and whether more follow.

    Raises InvalidRequest (400) for a limit or order out of range, or an `after` that is
    not an item of this response."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    start = 0
    if after is not None:
        for index, item in enumerate(ordered):
            if item.get("id") == after:
                start = index + 1
                break
        else:
            raise InvalidRequest(f"no input item {after!r} in this response", param="after")
    page = ordered[start : start + limit]
    return page, start + limit < len(ordered)
