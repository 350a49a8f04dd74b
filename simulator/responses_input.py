"""Reading an OpenAI Responses API request: ``input`` items, ``instructions``, ``tools`` and
``tool_choice``, validated as OpenAI validates them (a 400 naming the field), so that a
gateway forwarding a malformed or chat-shaped body to a Responses upstream fails its tests.
As OpenAI does without stored state, every ``function_call`` in ``input`` needs its
``function_call_output`` after it, and every output a call before it.

Prompt tokens follow the chat formula ``ceil(C / 4) + 3 * M`` (at least 1), where ``M``
counts ``instructions`` (one message) and every input item except ``reasoning`` and
``web_search_call`` items (model-side history chat has no counterpart for), and ``C`` the
characters of ``instructions``, of message text (a string ``content``, or the ``text`` of
``input_text`` / ``output_text`` parts) and of ``function_call_output`` outputs.  A string
``input`` is one user message: ``input="Say hello"`` counts exactly as chat's
``[{"role": "user", "content": "Say hello"}]``.  ``function_call`` arguments, images and
files add nothing, as in chat.

The cacheable prefix for ``prompt_cache`` is ``instructions`` (as a system message) plus the
leading ``system`` / ``developer`` message items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .content import message_tokens, text_segments
from .openai_tools import choose_calls
from .runtime import Call, Reply

__all__ = ["Conversation", "Plan", "Tools", "plan_calls", "read_input", "read_tools"]

_ROLES = frozenset({"user", "assistant", "system", "developer"})
_INPUT_PARTS = frozenset({"input_text", "input_image", "input_file", "input_audio"})
_OUTPUT_PARTS = frozenset({"output_text", "refusal"})
#: Item types accepted in ``input``; ``item_reference`` needs stored state, so it is refused.
_ITEMS = frozenset(
    {"message", "function_call", "function_call_output", "reasoning", "web_search_call"}
)
_UNCOUNTED = frozenset({"reasoning", "web_search_call"})
WEB_SEARCH = frozenset(
    {"web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11"}
)
#: The web search names ``tool_choice`` accepts (the spec's ``ToolChoiceTypes``).
_FORCED_SEARCH = frozenset({"web_search_preview", "web_search_preview_2025_03_11"})
_BUILTIN = frozenset(
    {
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer_use_preview",
        "computer",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "custom",
    }
)
_QUERY_CHARS = 200


@dataclass(slots=True)
class Conversation:
    """What the answer depends on in ``instructions`` + ``input``."""

    prompt_tokens: int
    #: Every text piece in order (JSON mode looks for a schema in it).
    texts: list[str]
    #: ``type`` of the last item (``message`` items by their role).
    last: str
    #: Text of the last user message (the simulated web search's query).
    query: str
    #: Chat-shaped leading system messages: the prompt-cache prefix.
    prefix: list[dict[str, Any]]


def _bad(call: Call, message: str, param: str) -> Reply:
    return call.error(400, message, param=param)


def _parts(call: Call, content: Any, role: str, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(call, f"Invalid type for '{where}': expected a string or an array.", where)
    allowed = _OUTPUT_PARTS if role == "assistant" else _INPUT_PARTS
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            names = ", ".join(f"'{k}'" for k in sorted(allowed))
            raise _bad(
                call,
                f"Invalid value: {kind!r}. Supported values are: {names}.",
                f"{where}[{j}].type",
            )


def read_input(call: Call) -> Conversation:
    """Validate ``instructions`` and ``input``; count the prompt (formula above)."""
    body = call.body
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad(call, "Invalid type for 'instructions': expected a string.", "instructions")
    raw = body.get("input")
    if raw is None:
        raise _bad(call, "Missing required parameter: 'input'.", "input")
    items: list[Any] = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise _bad(call, "Invalid 'input': expected a string or a non-empty array.", "input")
    texts: list[str] = [instructions] if instructions else []
    prefix: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if texts else []
    leading = True
    messages = 1 if instructions else 0
    last = query = ""
    calls: set[str] = set()
    answered: set[str] = set()
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(call, f"Invalid type for '{where}': expected an object.", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _bad(
                    call,
                    f"Invalid value: {role!r}. Supported values are: 'assistant', 'system', "
                    "'developer', and 'user'.",
                    f"{where}.role",
                )
            content = item.get("content")
            _parts(call, content, role, f"{where}.content")
            pieces = text_segments(content)
            if leading and role in ("system", "developer"):
                prefix.append({"role": role, "content": pieces})
            else:
                leading = False
            if role == "user":
                query = " ".join(pieces)
            last = role
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise _bad(
                        call, f"Missing required parameter: '{where}.{name}'.", f"{where}.{name}"
                    )
            calls.add(item["call_id"])
            pieces, last, leading = [], kind, False
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if call_id not in calls:
                # What OpenAI answers when the call is neither in `input` nor stored.
                raise _bad(
                    call,
                    f"No tool call found for function call output with call_id {call_id}.",
                    "input",
                )
            answered.add(call_id)
            output = item.get("output")
            if not isinstance(output, str | list):
                raise _bad(
                    call, f"Missing required parameter: '{where}.output'.", f"{where}.output"
                )
            pieces, last, leading = text_segments(output), kind, False
        elif kind in _UNCOUNTED:
            last = kind
            continue
        else:
            if kind == "item_reference":
                message = "The simulator keeps no state: 'item_reference' items are not supported."
            else:
                message = f"Invalid value: {kind!r}. Supported values are: " + ", ".join(
                    f"'{k}'" for k in sorted(_ITEMS)
                )
            raise _bad(call, message, f"{where}.type")
        messages += 1
        texts += pieces
    unanswered = sorted(calls - answered)
    if unanswered:
        # OpenAI's answer to a call whose output was dropped from the history.
        raise _bad(call, f"No tool output found for function call {unanswered[0]}.", "input")
    chars = sum(len(text) for text in texts)
    tokens = max(1, message_tokens(chars, messages))
    return Conversation(tokens, texts, last, query[:_QUERY_CHARS], prefix)


@dataclass(slots=True)
class Tools:
    """The request's tools: functions (``name``, ``parameters``) and built-ins."""

    functions: list[dict[str, Any]] = field(default_factory=list)
    web_search: bool = False
    #: As the Response object echoes them.
    echo: list[dict[str, Any]] = field(default_factory=list)


def read_tools(call: Call) -> Tools:
    """Validate ``tools``: flat function tools, and ``web_search`` only with the
    ``builtin=web_search`` directive; any other built-in tool is a 400 naming it."""
    raw = call.body.get("tools")
    tools = Tools()
    if raw is None:
        return tools
    if not isinstance(raw, list):
        raise _bad(call, "Invalid type for 'tools': expected an array.", "tools")
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            assert isinstance(tool, dict)
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                # Also what a chat-shaped tool ({"type", "function": {...}}) gets.
                raise _bad(call, f"Missing required parameter: '{where}.name'.", f"{where}.name")
            tools.functions.append(tool)
            strict = tool.get("strict")
            tools.echo.append(
                {
                    "type": "function",
                    "name": name,
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": strict if isinstance(strict, bool) else True,
                }
            )
        elif kind in WEB_SEARCH:
            assert isinstance(tool, dict)
            if call.behaviour.builtin != "web_search":
                raise _bad(
                    call,
                    f"The built-in tool {kind!r} ({where}) is off on this simulated model; "
                    "enable it with the 'builtin=web_search' directive.",
                    f"{where}.type",
                )
            tools.web_search = True
            tools.echo.append(
                {
                    "type": kind,
                    "search_context_size": tool.get("search_context_size", "medium"),
                    "user_location": tool.get("user_location"),
                }
            )
        elif kind in _BUILTIN:
            raise _bad(
                call,
                f"The simulator does not support the built-in tool {kind!r} ({where}).",
                f"{where}.type",
            )
        else:
            raise _bad(call, f"Invalid value: {kind!r} for '{where}.type'.", f"{where}.type")
    return tools


@dataclass(slots=True)
class Plan:
    """What kind of answer ``tool_choice`` and the conversation call for."""

    #: ``(name, parameters)`` per function call to make; empty for a text answer.
    calls: list[tuple[str, Any]]
    #: Search the web (a ``web_search_call`` item) before a text answer.
    web_search: bool


def plan_calls(call: Call, conversation: Conversation, tools: Tools) -> Plan:
    """Function calls when function tools are offered, ``tool_choice`` is not ``none``
    and the model is not answering a tool result (``auto`` after a
    ``function_call_output``); otherwise text, after a web search if one is offered."""
    choice = call.body.get("tool_choice", "auto")
    functions = tools.functions
    web = tools.web_search
    mode = choice
    wanted: str | None = None
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            wanted = choice.get("name")
            if not isinstance(wanted, str):
                raise _bad(call, "Missing required parameter: 'tool_choice.name'.", "tool_choice")
            mode = "required"
        elif kind == "allowed_tools":
            allowed = choice.get("tools")
            mode = choice.get("mode", "auto")
            if not isinstance(allowed, list) or mode not in ("auto", "required"):
                raise _bad(call, "Invalid 'tool_choice' of type 'allowed_tools'.", "tool_choice")
            names = {t.get("name") for t in allowed if isinstance(t, dict)}
            kinds = {t.get("type") for t in allowed if isinstance(t, dict)}
            functions = [f for f in functions if f["name"] in names]
            web = web and bool(kinds & WEB_SEARCH)
        elif kind in _FORCED_SEARCH:
            if not web:
                raise _bad(call, f"Tool choice {kind!r} is not in 'tools'.", "tool_choice")
            return Plan([], True)
        else:
            raise _bad(call, f"Invalid value: {kind!r} for 'tool_choice.type'.", "tool_choice")
    elif choice not in ("auto", "none", "required"):
        raise _bad(
            call,
            f"Invalid value: {choice!r}. Supported values are: 'none', 'auto', and 'required'.",
            "tool_choice",
        )
    if mode == "none":
        return Plan([], False)
    if mode == "required" and not functions and not web:
        raise _bad(
            call, "Tool choice 'required' must be specified with 'tools' parameter.", "tool_choice"
        )
    answering = mode == "auto" and conversation.last == "function_call_output"
    if (functions or wanted is not None) and not answering:
        return Plan(choose_calls(call, functions, wanted), False)
    return Plan([], web)
