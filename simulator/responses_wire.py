"""OpenAI ``POST /v1/responses`` (the Responses API) in the real wire format, JSON and SSE.

Also served as Azure's ``POST /openai/v1/responses`` and ``/openai/responses`` (``api-key``
or bearer auth).  The simulator keeps no state: ``previous_response_id``, ``conversation``
and ``background`` are a 400, so a gateway must send the whole conversation every time.
Request reading and validation live in :mod:`.responses_input`, the stream in
:mod:`.responses_events`.

What the answer is (directives in :mod:`.behaviour` apply as on chat):

* **function calls** when the request offers function tools, ``tool_choice`` is not
  ``none``, and the model is not answering a tool result (``tool_choice`` ``auto`` and the
  last input item a ``function_call_output``): one ``function_call`` item (``tool_calls=N``
  for more, cycling through the functions; one with ``parallel_tool_calls: false``;
  ``tool_choice`` ``{"type": "function", "name": …}`` or ``tool=NAME`` picks one) whose
  ``arguments`` are a small instance of the tool's ``parameters`` schema (or ``reply=``);
* otherwise **text**: ``tokens=N`` words ``tok0 tok1 …`` (default 16), or with
  ``text.format`` ``json_schema`` an instance of the schema (``json_object``: of the schema
  the prompt spells out, else ``{"result":"ok"}``), or exactly ``reply=TEXT``.  With a
  ``web_search`` tool (``builtin=web_search`` directive) a completed ``web_search_call``
  item (action ``search``, query = the last user message's text) comes first;
* reasoning tokens (``reasoning=N``, else by ``reasoning.effort``: minimal 8, low 16,
  medium 32, high 64, xhigh 128, none 0) make a leading ``reasoning`` item with a
  one-part summary and count in ``output_tokens_details.reasoning_tokens``;
* ``max_output_tokens`` (at least 16, as OpenAI requires) caps visible + reasoning tokens:
  reaching it gives status ``incomplete``, reason ``max_output_tokens``;
  ``content_filter`` gives status ``incomplete``, reason ``content_filter``, no message;
* ``include: ["message.output_text.logprobs"]`` (+ ``top_logprobs``) fills ``logprobs``
  (values as in :mod:`.structured`); ``include: ["reasoning.encrypted_content"]`` adds an
  opaque ``encrypted_content`` to the reasoning item.

Usage is counted as chat counts it (prompt formula in :mod:`.responses_input`;
``cached_tokens`` from ``cached=`` / ``prompt_cache``; ``cache_write_tokens`` only from
``cache_write=``) and recorded in ``/_stats`` and ``/_invoice`` like chat usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

from .behaviour import Behaviour, plan_tokens
from .content import fragments, schema_instance, word, words
from .delivery import malformed_json, pace_non_stream, truncated_json
from .openai_wire import structured_text
from .prompt_cache import chat_prefix
from .responses_events import stream_response
from .responses_input import Conversation, Tools, plan_calls, read_input, read_tools
from .runtime import Call, begin, gate, handler, new_id, now
from .structured import MAX_TOP_LOGPROBS, chat_logprobs, prompt_schema

__all__ = [
    "EFFORT_TOKENS",
    "MIN_OUTPUT_TOKENS",
    "Answer",
    "azure_responses",
    "responses",
    "usage_block",
]

#: Reasoning tokens per ``reasoning.effort`` when no ``reasoning=N`` directive is given.
EFFORT_TOKENS = {"none": 0, "minimal": 8, "low": 16, "medium": 32, "high": 64, "xhigh": 128}
#: OpenAI refuses a smaller ``max_output_tokens``.
MIN_OUTPUT_TOKENS = 16
_SUMMARIES = frozenset({"auto", "concise", "detailed"})
_LOGPROBS = "message.output_text.logprobs"
_ENCRYPTED = "reasoning.encrypted_content"


@handler
async def responses(request: web.Request) -> web.StreamResponse:
    return await _respond(await begin(request, "responses", "openai"))


@handler
async def azure_responses(request: web.Request) -> web.StreamResponse:
    return await _respond(await begin(request, "azure_responses", "azure"))


@dataclass(slots=True)
class Answer:
    """The generated output before it is laid out as items."""

    kind: str  # "text" | "json" | "tool" | "filtered"
    text: str = ""
    #: Generated visible tokens: the text's, or every call's arguments in order.
    pieces: list[str] = field(default_factory=list)
    reasoning: int = 0
    truncated: bool = False
    #: ``(function name, JSON arguments)`` per call.
    calls: list[tuple[str, str]] = field(default_factory=list)
    web_query: str | None = None

    @property
    def completion(self) -> int:
        return len(self.pieces) + self.reasoning


def _refuse_state(call: Call) -> None:
    for name in ("previous_response_id", "conversation"):
        if call.body.get(name) is not None:
            raise call.error(
                400,
                f"'{name}' is not supported: the simulator keeps no state, so send the "
                "whole conversation in 'input'.",
                code="unsupported_parameter",
                param=name,
            )
    if call.body.get("background") is True:
        raise call.error(400, "'background' is not supported by the simulator.", param="background")


def _text_format(call: Call) -> dict[str, Any]:
    text = call.body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_schema", "json_object"):
        raise call.error(400, f"Invalid value: {kind!r} for 'text.format.type'.", param="text")
    assert isinstance(fmt, dict)
    if kind == "json_schema":
        for name in ("name", "schema"):
            if fmt.get(name) is None:
                raise call.error(
                    400,
                    f"Missing required parameter: 'text.format.{name}'.",
                    param=f"text.format.{name}",
                )
    return fmt


def _reasoning(call: Call) -> dict[str, Any]:
    raw = call.body.get("reasoning")
    if raw is None:
        return {"effort": None, "summary": None}
    effort = raw.get("effort") if isinstance(raw, dict) else None
    summary = raw.get("summary") if isinstance(raw, dict) else None
    if effort is not None and effort not in EFFORT_TOKENS:
        raise call.error(400, f"Invalid value: {effort!r}.", param="reasoning.effort")
    if summary is not None and summary not in _SUMMARIES:
        raise call.error(400, f"Invalid value: {summary!r}.", param="reasoning.summary")
    return {"effort": effort, "summary": summary}


def _max_output(call: Call) -> int | None:
    value = call.body.get("max_output_tokens")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise call.error(400, "Invalid type for 'max_output_tokens'.", param="max_output_tokens")
    if value < MIN_OUTPUT_TOKENS:
        raise call.error(
            400,
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {value} instead.",
            code="integer_below_min_value",
            param="max_output_tokens",
        )
    return value


def _includes(call: Call) -> tuple[int | None, bool]:
    """``(top_logprobs if logprobs are included, whether encrypted reasoning is)``."""
    include = call.body.get("include") or []
    if not isinstance(include, list):
        raise call.error(400, "Invalid type for 'include': expected an array.", param="include")
    top = call.body.get("top_logprobs")
    if top is not None and (
        not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS
    ):
        raise call.error(
            400,
            f"Invalid 'top_logprobs': must be an integer in [0, {MAX_TOP_LOGPROBS}].",
            param="top_logprobs",
        )
    return (top or 0) if _LOGPROBS in include else None, _ENCRYPTED in include


def _answer(
    call: Call,
    b: Behaviour,
    conversation: Conversation,
    calls: list[tuple[str, Any]],
    fmt: dict[str, Any],
    request_max: int | None,
) -> Answer:
    if b.content_filter:
        return Answer("filtered", reasoning=b.reasoning, truncated=True)
    if calls:
        made = [
            (
                name,
                b.reply
                if b.reply is not None
                else structured_text(call, schema_instance(params, variant), params),
            )
            for variant, (name, params) in enumerate(calls)
        ]
        pieces = [piece for _, arguments in made for piece in fragments(arguments)]
        return Answer("tool", made[0][1], pieces, b.reasoning, calls=made)
    kind = fmt["type"]
    if kind != "text":
        schema = fmt.get("schema") if kind == "json_schema" else prompt_schema(conversation.texts)
        document = schema_instance(schema) if schema is not None else {"result": "ok"}
        text = b.reply if b.reply is not None else structured_text(call, document, schema)
        return Answer("json", text, fragments(text), b.reasoning)
    if b.reply is not None:
        return Answer("text", b.reply, fragments(b.reply), b.reasoning)
    # max_output_tokens is a cap, as on real models: the answer is its natural length.
    plan = plan_tokens(b, request_max, limit_is_cap=True)
    pieces = [word(i) for i in range(plan.visible)]
    return Answer("text", words(plan.visible), pieces, plan.reasoning, plan.truncated)


def _output(answer: Answer, top: int | None, encrypted: bool) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if answer.reasoning:
        reasoning: dict[str, Any] = {
            "id": new_id("rs_"),
            "type": "reasoning",
            "summary": [
                {"type": "summary_text", "text": f"Reasoned for {answer.reasoning} tokens."}
            ],
        }
        if encrypted:
            reasoning["encrypted_content"] = "gAAAAsim" + new_id("")
        items.append(reasoning)
    if answer.web_query is not None:
        items.append(
            {
                "id": new_id("ws_"),
                "type": "web_search_call",
                "status": "completed",
                "action": {"type": "search", "query": answer.web_query},
            }
        )
    if answer.kind == "tool":
        for name, arguments in answer.calls:
            items.append(
                {
                    "id": new_id("fc_"),
                    "type": "function_call",
                    "status": "completed",
                    "arguments": arguments,
                    "call_id": new_id("call_"),
                    "name": name,
                }
            )
    elif answer.kind != "filtered":
        logprobs = chat_logprobs(answer.pieces, top)["content"] if top is not None else []
        items.append(
            {
                "id": new_id("msg_"),
                "type": "message",
                "status": "incomplete" if answer.truncated else "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": answer.text,
                        "annotations": [],
                        "logprobs": logprobs,
                    }
                ],
            }
        )
    return items


def _echo(
    call: Call, tools: Tools, fmt: dict[str, Any], reasoning: dict[str, Any]
) -> dict[str, Any]:
    """The request's settings as the Response object repeats them."""
    body = call.body
    text = body.get("text")
    verbosity = text.get("verbosity") if isinstance(text, dict) else None

    def number(name: str) -> Any:
        value = body.get(name)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else 1.0

    echo: dict[str, Any] = {
        "background": False,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": call.model,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": reasoning,
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": number("temperature"),
        "text": {"format": fmt, "verbosity": verbosity or "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": tools.echo,
        "top_logprobs": body.get("top_logprobs") or 0,
        "top_p": number("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "metadata": body.get("metadata") or {},
    }
    user = body.get("user")
    if isinstance(user, str):  # the spec has no null for it
        echo["user"] = user
    return echo


def usage_block(
    prompt: int, cached: int, cache_write: int, completion: int, reasoning: int
) -> dict[str, Any]:
    """Responses ``usage``: cached inside input_tokens, reasoning inside output_tokens."""
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


async def _respond(call: Call) -> web.StreamResponse:
    _refuse_state(call)
    conversation = read_input(call)
    tools = read_tools(call)
    fmt = _text_format(call)
    reasoning = _reasoning(call)
    request_max = _max_output(call)
    top, encrypted = _includes(call)
    plan = plan_calls(call, conversation, tools)
    prompt = conversation.prompt_tokens
    await gate(call, prompt)
    b = call.behaviour
    if not b.reasoning and reasoning["effort"]:
        b = replace(b, reasoning=EFFORT_TOKENS[reasoning["effort"]])
    answer = _answer(call, b, conversation, plan.calls, fmt, request_max)
    if plan.web_search and answer.kind != "filtered":
        answer.web_query = conversation.query or "simulated search"
    prefix = chat_prefix(conversation.prefix) if b.prompt_cache and conversation.prefix else None
    cached, cache_write = call.prompt_cache(prompt, prefix, bills_writes=False)
    completion = answer.completion
    usage = usage_block(prompt, cached, cache_write, completion, answer.reasoning)
    reason = None
    if answer.truncated:
        reason = "content_filter" if answer.kind == "filtered" else "max_output_tokens"
    created = now()
    payload: dict[str, Any] = {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": created,
        "status": "incomplete" if reason else "completed",
        "completed_at": None if reason else created,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        **_echo(call, tools, fmt, reasoning),
        "output": _output(answer, top, encrypted),
        "usage": usage,
    }

    def record() -> None:
        call.state.stats.usage(
            call.base,
            prompt=prompt,
            cached=cached,
            cache_write=cache_write,
            completion=completion,
            reasoning=answer.reasoning,
        )

    if call.stream:
        return await stream_response(call, payload, answer.pieces, record)
    await pace_non_stream(call, completion)
    if b.cut_after is not None:
        return await truncated_json(call, orjson.dumps(payload))
    if b.malformed:
        return malformed_json(call, orjson.dumps(payload))
    record()
    return call.json(payload)
