"""The usual Responses request, translated to a chat body with fewer calls.

Most translated requests are a model, a string or a few `{role, content: str}` messages and
a token cap: `plain_chat_request` turns those into exactly the chat body
`responses_translate.chat_request` builds (which calls it first), and hands anything else
(tools, content parts, text formats, reasoning, a badly typed field) back to the general
path, which translates it or refuses it with the field named.
"""

from __future__ import annotations

from typing import Any

# Chat has no `developer` role outside OpenAI's own API (vLLM's chat templates and litellm's
# non-OpenAI providers only know `system`), and a translated target is never OpenAI itself.
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}

# The fields of the usual request `plain_chat_request` translates by itself; the others it
# knows to drop are dropped by the general path too (see the end of `_scalars_into`).
_PLAIN_FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "store",
        "max_output_tokens",
        "temperature",
        "top_p",
        "user",
        "metadata",
        "previous_response_id",
        "truncation",
    }
)
# The fields of the most usual request of all (`plain_chat_request` skips the others').
_CORE_FIELDS = frozenset({"model", "input", "stream", "store", "max_output_tokens"})
_FLOATS = (int, float)


def plain_chat_request(payload: Any) -> dict[str, Any] | None:
    """`chat_request` of the usual request — input a string or a list of text messages
    ({role, content: str}, typed `message` or not), no tools, text format or reasoning,
    well-typed scalars — with fewer calls; None for anything else (the general path then
    answers, or refuses it). The same chat body, key for key and in the same order
    (tests/unit/test_responses_fast_paths.py). Types are told by `__class__`: a parsed
    body's are exact, and a subclass just takes the general path."""
    if payload.__class__ is not dict:
        return None
    keys = payload.keys()
    # The core fields alone (the most usual request): the others' lookups are skipped.
    core = keys <= _CORE_FIELDS
    if not core and not keys <= _PLAIN_FIELDS:
        return None
    get = payload.get
    model = get("model")
    if model.__class__ is not str or not model:
        return None
    messages: list[dict[str, Any]] = []
    instructions = None if core else get("instructions")
    if instructions is not None:
        if instructions.__class__ is not str:
            return None
        if instructions:
            messages.append({"role": "system", "content": instructions})
    given = get("input")
    if given.__class__ is str:
        messages.append({"role": "user", "content": given})
    elif given.__class__ is list:
        for item in given:
            if item.__class__ is not dict:
                return None
            kind = item.get("type")
            role = item.get("role")
            content = item.get("content")
            if (
                (kind is not None and kind != "message")
                or role.__class__ is not str
                or content.__class__ is not str
            ):
                return None
            chat_role = ROLES.get(role)
            if chat_role is None:
                return None
            messages.append({"role": chat_role, "content": content})
    else:
        return None
    if not messages:
        return None
    chat: dict[str, Any] = {"model": model, "messages": messages}
    if not core:
        for field in ("temperature", "top_p"):
            value = get(field)
            if value is not None:
                if value.__class__ not in _FLOATS:
                    return None
                chat[field] = value
    limit = get("max_output_tokens")
    if limit is not None:
        if limit.__class__ is not int:
            return None
        chat["max_tokens"] = limit
    user = None if core else get("user")
    if user is not None:
        if user.__class__ is not str:
            return None
        chat["user"] = user
    stream = get("stream")
    if stream is not None and stream.__class__ is not bool:
        return None
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat
