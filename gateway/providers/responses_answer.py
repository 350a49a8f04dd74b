"""The usual translated answer's Response JSON, joined from cached pieces.

Most chat answers a translated Responses request gets are one message of text, and most
requests are `plain_echo`'s (model, input, store, a token cap). Their Response JSON is then
constant but for five values — the response id, created_at, the message id, the text and
the usage — once its model name, token cap, store flag and status are known: the bytes
around those five are cut from `responses_opening.joined_terminal`'s template once per such
combination (`_pieces`) and joined around the values per answer. The same bytes
`orjson.dumps(response_from_chat(…))` writes (tests/unit/test_responses_answer.py), at about
half its cost: this runs once per translated request. Pure, no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.responses_frames import message_json, text_part
from gateway.providers.responses_opening import PLAIN_ECHO, joined_terminal
from gateway.providers.responses_output import INCOMPLETE, responses_usage, text_alone

_HOLE = b"\0"  # where a value goes in `_pieces`' template (orjson escapes a NUL in JSON)
_USAGE = (
    b',"usage":{"input_tokens":%d,"input_tokens_details":{"cached_tokens":%d,'
    b'"cache_write_tokens":%d},"output_tokens":%d,"output_tokens_details":'
    b'{"reasoning_tokens":%d},"total_tokens":%d}}'
)
_PIECES: dict[tuple[str, int | None, bool, str | None], list[bytes]] = {}
_MOST_PIECES = 256  # distinct (model, cap, store, reason) kept; then the cache starts over


def text_answer_json(
    chat: dict[str, Any], request: dict[str, Any], response_id: str, created_at: int
) -> bytes | None:
    """`orjson.dumps(response_from_chat(chat, request, response_id=…, created_at=…))`
    when `request` is `plain_echo`'s and the answer non-empty text alone, its message id
    `msg_` and `response_id`'s tail; else None (the caller builds the Response the general
    way). `response_id` is one `new_id` made (`resp_` and letters and digits: JSON as it is),
    so the message's id is as unique as the response's."""
    if not request.keys() <= PLAIN_ECHO:
        return None
    choices = chat.get("choices")
    choice = choices[0] if choices.__class__ is list and choices else None
    if choice.__class__ is not dict:
        return None
    message = choice.get("message")
    if message.__class__ is not dict:
        return None
    content = text_alone(message)
    if content is None:
        return None
    finish = choice.get("finish_reason")
    reason = INCOMPLETE.get(finish) if finish.__class__ is str else None
    model = chat.get("model")
    if model.__class__ is not str:
        model = request.get("model")
        model = model if model.__class__ is str else str(model or "")
    get = request.get
    limit = get("max_output_tokens")
    if limit is not None and limit.__class__ is not int:
        return None  # (a bool or a float would share an int's key)
    key = (model, limit, get("store") is False, reason)
    pieces = _PIECES.get(key)
    if pieces is None:
        pieces = _pieces(*key)
    ident = response_id[5:].encode()  # what follows `resp_`
    return b"".join(
        (
            pieces[0],
            ident,
            pieces[1],
            b"%d" % created_at if created_at.__class__ is int else orjson.dumps(created_at),
            pieces[2],
            ident,
            pieces[3],
            orjson.dumps(content),
            pieces[4],
            _usage_tail(chat.get("usage")),
        )
    )


def _pieces(model: str, limit: int | None, store_false: bool, reason: str | None) -> list[bytes]:
    """The Response's bytes around its five values (`_HOLE`s in the template)."""
    if len(_PIECES) >= _MOST_PIECES:
        _PIECES.clear()
    limit_json = b"null" if limit is None else b"%d" % limit
    state = b"incomplete" if reason else b"completed"
    values = (b'"resp_' + _HOLE + b'"', _HOLE, limit_json, orjson.dumps(model))
    store = b"false" if store_false else b"true"
    details = orjson.dumps({"reason": reason}) if reason else b"null"
    item = message_json(b"msg_" + _HOLE, state, text_part(_HOLE))
    pieces = joined_terminal((*values, store), state, details, item, b"").split(_HOLE)
    _PIECES[(model, limit, store_false, reason)] = pieces
    return pieces


def _usage_tail(chat_usage: Any) -> bytes:
    """`,"usage":…}` of `responses_usage(chat_usage)` (or the Response's closing brace
    when there is none), formatted from the counts without the dict."""
    if chat_usage.__class__ is not dict or "cost_usd" in chat_usage:
        usage = responses_usage(chat_usage)
        return b"}" if usage is None else b',"usage":' + orjson.dumps(usage) + b"}"
    get = chat_usage.get
    inputs = get("prompt_tokens_details")
    outputs = get("completion_tokens_details")
    if inputs.__class__ is dict:
        cached = inputs.get("cached_tokens")
        written = inputs.get("cache_write_tokens")
    else:
        cached = written = 0
    reasoning = outputs.get("reasoning_tokens") if outputs.__class__ is dict else 0
    prompt = get("prompt_tokens")
    completion = get("completion_tokens")
    total = get("total_tokens")
    prompt = prompt if prompt.__class__ is int and prompt > 0 else 0
    completion = completion if completion.__class__ is int and completion > 0 else 0
    return _USAGE % (
        prompt,
        cached if cached.__class__ is int and cached > 0 else 0,
        written if written.__class__ is int and written > 0 else 0,
        completion,
        reasoning if reasoning.__class__ is int and reasoning > 0 else 0,
        total if total.__class__ is int and total > 0 else prompt + completion,
    )
