"""The texts of a request body that guard checks read, and rewriting them in place (pure).

Every place a client's words travel upstream: chat messages (string content, text parts,
tool call arguments), Responses `instructions` and input items (message text parts,
function call arguments and outputs), Anthropic `system` and message blocks (text, tool
inputs' strings, tool results), completion prompts and embedding inputs. `visit` calls a
function on each such string and stores what it returns, so one walk serves both reading
(`texts`) and masking (`rewrite`); images, audio and ids are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Visit = Callable[[str], str]


def texts(endpoint: str, payload: dict[str, Any]) -> list[str]:
    if endpoint == "chat/completions":
        plain = _plain_chat(payload.get("messages"))
        if plain is not None:
            return plain
    found: list[str] = []

    def keep(text: str) -> str:
        found.append(text)
        return text

    visit(endpoint, payload, keep)
    return found


def rewrite(endpoint: str, payload: dict[str, Any], change: Visit) -> None:
    """Replace each text of `payload` (changed in place) by `change(text)`."""
    visit(endpoint, payload, change)


def visit(endpoint: str, payload: dict[str, Any], fn: Visit) -> None:
    if endpoint == "chat/completions":
        for message in _dicts(payload.get("messages")):
            _content(message, "content", fn)
            for call in _dicts(message.get("tool_calls")):
                function = call.get("function")
                if isinstance(function, dict):
                    _string(function, "arguments", fn)
    elif endpoint == "responses":
        _content(payload, "instructions", fn)
        if isinstance(payload.get("input"), str):
            _string(payload, "input", fn)
        for item in _dicts(payload.get("input")):
            _content(item, "content", fn)
            _string(item, "arguments", fn)
            _content(item, "output", fn)
    elif endpoint == "messages":
        _content(payload, "system", fn)
        for message in _dicts(payload.get("messages")):
            _content(message, "content", fn)
    elif endpoint in ("completions", "embeddings"):
        key = "prompt" if endpoint == "completions" else "input"
        value = payload.get(key)
        if isinstance(value, str):
            payload[key] = fn(value)
        elif isinstance(value, list):
            payload[key] = [fn(v) if isinstance(v, str) else v for v in value]


def _plain_chat(messages: Any) -> list[str] | None:
    """The texts of the usual chat body (each message's content one string, no tool calls)
    without the general walk, which costs several times more; None for any other body."""
    if not isinstance(messages, list):
        return None
    out: list[str] = []
    for message in messages:
        if type(message) is not dict or "tool_calls" in message:
            return None
        content = message.get("content")
        if type(content) is not str:
            return None
        if content:
            out.append(content)
    return out


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _string(holder: dict[str, Any], key: str, fn: Visit) -> None:
    value = holder.get(key)
    if isinstance(value, str) and value:
        holder[key] = fn(value)


def _content(holder: dict[str, Any], key: str, fn: Visit) -> None:
    """A content field: a string, or a list of blocks whose text is under `text` (chat,
    Responses and Anthropic text parts), `input` (an Anthropic tool call's arguments,
    strings at any depth) or nested `content` (an Anthropic tool result)."""
    value = holder.get(key)
    if isinstance(value, str):
        if value:
            holder[key] = fn(value)
        return
    for block in _dicts(value):
        _string(block, "text", fn)
        if isinstance(block.get("input"), dict):
            block["input"] = _strings_in(block["input"], fn)
        if "content" in block:
            _content(block, "content", fn)


def _strings_in(value: Any, fn: Visit) -> Any:
    if isinstance(value, str):
        return fn(value) if value else value
    if isinstance(value, list):
        return [_strings_in(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _strings_in(v, fn) for k, v in value.items()}
    return value
