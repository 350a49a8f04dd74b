"""OpenAI Responses requests → Chat Completions requests, and chat answers → Response objects.

Pure functions over plain dicts (no I/O), used for every target that speaks only Chat
Completions (open-weights vLLM/SGLang, serverless, the litellm providers). `chat_request`
turns a Responses body whose `input` already holds the whole conversation into a chat body;
`built_in_tools` names the tools only a native target can run. The way back
(`response_from_chat`, `responses_usage`, `chat_view`) lives in `responses_output`, beside
the builders the stream translator shares, and is re-exported here.

What a chat target cannot do is refused with a 400 naming the field (a built-in tool, an
image by file id, a stored prompt), never dropped silently; fields that only steer OpenAI's
own platform (storage, service tier, cache keys) are dropped, each with the reason below.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest
from gateway.providers.responses_chat_view import chat_view
from gateway.providers.responses_output import response_from_chat, responses_usage
from gateway.providers.responses_plain import ROLES as _ROLES
from gateway.providers.responses_plain import plain_chat_request
from routing.responses_tools import built_in_tools

__all__ = [
    "built_in_tools",
    "chat_request",
    "chat_view",
    "response_from_chat",
    "responses_usage",
]

_TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})
# Chat's image `detail` enum; Responses adds `original` (no downscaling): `high` is closest.
_DETAILS = {"auto": "auto", "low": "low", "high": "high", "original": "high"}


# -- request ------------------------------------------------------------------------------


def chat_request(payload: dict[str, Any]) -> dict[str, Any]:
    """A Responses request body as a Chat Completions request body.

    `payload["input"]` must already be the whole conversation: the caller resolves
    `previous_response_id` first (the field itself is ignored here).
    """
    plain = plain_chat_request(payload)
    if plain is not None:
        return plain
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` must be a non-empty string.", param="model")
    for field, why in (
        ("prompt", "stored prompt templates live on OpenAI's platform"),
        ("conversation", "use previous_response_id to continue a conversation"),
    ):
        if payload.get(field) is not None:
            raise InvalidRequest(f"`{field}` is not supported here: {why}.", param=field)
    messages: list[dict[str, Any]] = []
    instructions = payload.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
    elif instructions is not None:
        raise InvalidRequest("`instructions` must be a string.", param="instructions")
    _input_messages(payload.get("input"), messages)
    if not messages:
        raise InvalidRequest("`input` holds no message to answer.", param="input")
    chat: dict[str, Any] = {"model": model, "messages": messages}
    _tools_into(payload, chat)
    _text_format_into(payload.get("text"), chat)
    _scalars_into(payload, chat)
    return chat


def _input_messages(value: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(value, str):
        out.append({"role": "user", "content": value})
        return
    if not isinstance(value, list):
        raise InvalidRequest("`input` must be a string or a list of input items.", param="input")
    for position, item in enumerate(value):
        where = f"input[{position}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"`{where}` must be an object.", param=where)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"  # the short form {"role", "content"}
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            _function_call(item, where, out)
        elif kind == "function_call_output":
            out.append(_tool_output(item, where))
        elif kind == "reasoning":
            # Chat has no input slot for reasoning: servers rebuild it (or not) from the
            # messages, and an encrypted reasoning blob only means something to OpenAI.
            continue
        elif isinstance(kind, str):
            raise InvalidRequest(
                f"Input items of type {kind!r} are not supported on this route's targets.",
                param=f"{where}.type",
            )
        else:
            raise InvalidRequest(f"`{where}` has no `type`.", param=f"{where}.type")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    chat_role = _ROLES.get(role) if isinstance(role, str) else None
    if chat_role is None:
        raise InvalidRequest(
            f"`{where}.role` must be one of user, assistant, system, developer.",
            param=f"{where}.role",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(
            f"`{where}.content` must be a string or a list of content parts.",
            param=f"{where}.content",
        )
    parts = [_part(part, f"{where}.content[{index}]") for index, part in enumerate(content)]
    if chat_role == "user":
        return {"role": "user", "content": parts}
    texts = []
    for index, part in enumerate(parts):
        if part["type"] != "text":
            raise InvalidRequest(
                f"Only user messages may carry {content[index]['type']} parts.",
                param=f"{where}.content[{index}].type",
            )
        texts.append(part["text"])
    # Strings, not part lists: many chat templates only accept string system/assistant
    # content. Assistant parts are pieces of one answer (the SDKs join output_text with "");
    # separate system parts are separate paragraphs.
    return {"role": chat_role, "content": ("\n" if chat_role == "system" else "").join(texts)}


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequest(f"`{where}` must be an object.", param=where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "refusal"):
        # A refusal the model gave earlier is, to the next turn, just what it said.
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            field = "refusal" if kind == "refusal" else "text"
            raise InvalidRequest(f"`{where}.{field}` must be a string.", param=f"{where}.{field}")
        return {"type": "text", "text": text}
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise InvalidRequest(
                "Images by `file_id` are not supported on this route's targets; "
                "send `image_url` (an https or data: URL).",
                param=f"{where}.file_id",
            )
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(
                f"`{where}.image_url` must be a URL string.", param=f"{where}.image_url"
            )
        image: dict[str, Any] = {"url": url}
        detail = _DETAILS.get(str(part.get("detail")))
        if detail is not None:
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise InvalidRequest(
                "Files are supported here only inline, as `file_data` (not by id or URL).",
                param=f"{where}.file_data",
            )
        file: dict[str, Any] = {"file_data": data}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    label = repr(kind) if isinstance(kind, str) else "without a type"
    raise InvalidRequest(f"Content part {label} is not supported.", param=f"{where}.type")


def _string(item: dict[str, Any], field: str, where: str, *, empty: bool = False) -> str:
    value = item.get(field)
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidRequest(
            f"`{where}.{field}` must be a non-empty string.", param=f"{where}.{field}"
        )
    return value


def _function_call(item: dict[str, Any], where: str, out: list[dict[str, Any]]) -> None:
    call = {
        "id": _string(item, "call_id", where),
        "type": "function",
        "function": {
            "name": _string(item, "name", where),
            "arguments": _string(item, "arguments", where, empty=True),
        },
    }
    # One chat assistant turn holds all its calls: consecutive function_call items, and the
    # assistant message just before them (reasoning items in between are dropped anyway).
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _tool_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = _string(item, "call_id", where)
    output = item.get("output")
    if isinstance(output, list):
        texts = []
        for index, part in enumerate(output):
            text = part.get("text") if isinstance(part, dict) else None
            if (
                not isinstance(part, dict)
                or part.get("type") != "input_text"
                or not isinstance(text, str)
            ):
                raise InvalidRequest(
                    "Function call outputs may only hold text on this route's targets "
                    "(chat tool messages carry no images or files).",
                    param=f"{where}.output[{index}]",
                )
            texts.append(text)
        # A plain string: every chat server accepts one for a tool message.
        output = "\n".join(texts)
    elif not isinstance(output, str):
        raise InvalidRequest(
            f"`{where}.output` must be a string or a list of input_text parts.",
            param=f"{where}.output",
        )
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def _tools_into(payload: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = payload.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise InvalidRequest("`tools` must be a list.", param="tools")
    functions: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"`{where}` must be an object.", param="tools")
        kind = tool.get("type")
        if kind != "function":
            # The planner keeps requests with built-in tools off chat targets; this is the
            # safety net, so the tool is never silently dropped.
            raise InvalidRequest(
                f"The tool {kind!r} is a built-in tool that none of this route's available "
                "targets can run (only function tools can be served here).",
                param="tools",
            )
        function: dict[str, Any] = {"name": _string(tool, "name", where)}
        description = tool.get("description")
        if isinstance(description, str):
            function["description"] = description
        parameters = tool.get("parameters")
        if isinstance(parameters, dict):
            function["parameters"] = parameters
        elif parameters is not None:
            raise InvalidRequest(f"`{where}.parameters` must be an object.", param="tools")
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        functions.append({"type": "function", "function": function})
    choice = payload.get("tool_choice")
    if choice is not None:
        functions, choice = _tool_choice(choice, functions)
    parallel = payload.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest(
            "`parallel_tool_calls` must be a boolean.", param="parallel_tool_calls"
        )
    # OpenAI's chat API refuses tool_choice / parallel_tool_calls without tools, and an empty
    # `tools` list trips some servers: all three go only with at least one tool.
    if functions:
        chat["tools"] = functions
        if choice is not None:
            chat["tool_choice"] = choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel


def _tool_choice(choice: Any, functions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return functions, choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function" and isinstance(choice.get("name"), str):
        return functions, {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
        # Chat servers outside OpenAI rarely know `allowed_tools`; offering only the allowed
        # functions with the same mode means the same to the model.
        listed = choice.get("tools")
        allowed = {
            tool.get("name")
            for tool in (listed if isinstance(listed, list) else ())
            if isinstance(tool, dict) and tool.get("type") == "function"
        }
        kept = [tool for tool in functions if tool["function"]["name"] in allowed]
        return kept, choice["mode"]
    raise InvalidRequest(
        "`tool_choice` must be auto, none, required, a function or allowed function tools "
        "on this route's targets.",
        param="tool_choice",
    )


def _text_format_into(text: Any, chat: dict[str, Any]) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise InvalidRequest("`text` must be an object.", param="text")
    # `text.verbosity` is dropped: only OpenAI's own models read it.
    form = text.get("format")
    if form is None:
        return
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "text":
        return  # the default; omitted, as some chat servers reject an explicit text format
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
        return
    if kind == "json_schema":
        where = "text.format"
        schema = form.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "`text.format.schema` must be an object.", param="text.format.schema"
            )
        spec: dict[str, Any] = {"name": _string(form, "name", where), "schema": schema}
        for field, kinds in (("strict", bool), ("description", str)):
            if isinstance(form.get(field), kinds):
                spec[field] = form[field]
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
        return
    raise InvalidRequest(
        "`text.format.type` must be text, json_object or json_schema.", param="text.format.type"
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalars_into(payload: dict[str, Any], chat: dict[str, Any]) -> None:
    for field in ("temperature", "top_p"):
        value = payload.get(field)
        if value is not None:
            if not _number(value):
                raise InvalidRequest(f"`{field}` must be a number.", param=field)
            chat[field] = value
    for field, target in (("max_output_tokens", "max_tokens"), ("seed", "seed")):
        value = payload.get(field)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRequest(f"`{field}` must be an integer.", param=field)
            # `max_tokens`, not `max_completion_tokens`: every open-weights server and litellm
            # provider reads it, and a translated target is never OpenAI (whose reasoning
            # models refuse it) — those speak Responses natively.
            chat[target] = value
    user = payload.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise InvalidRequest("`user` must be a string.", param="user")
        chat["user"] = user
    reasoning = payload.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise InvalidRequest("`reasoning` must be an object.", param="reasoning")
        effort = reasoning.get("effort")
        if isinstance(effort, str):
            chat["reasoning_effort"] = effort
        # `reasoning.summary` has no chat equivalent: the summary we return is whatever
        # reasoning text the server sends.
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean.", param="stream")
    if stream:
        # Usage only comes in a last chunk when asked for; response.completed must carry it.
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    # Dropped on purpose:
    # - metadata: chat forwards it only with `store`, and it is Farebox's to keep;
    # - store, previous_response_id, conversation state: Farebox stores responses itself;
    # - include: reasoning.encrypted_content and output logprobs have no chat source;
    # - truncation: chat servers have no `auto` truncation, so an oversized input fails
    #   upstream as with `disabled` (the default);
    # - service_tier, prompt_cache_key, prompt_cache_retention, safety_identifier,
    #   max_tool_calls, background, top_logprobs: OpenAI platform knobs (or built-in-tool
    #   limits) a chat target cannot honour; the endpoint decides about `background`.
