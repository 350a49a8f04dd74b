"""OpenAI ``POST /v1/chat/completions`` in the real wire format (JSON and SSE).

Azure OpenAI's ``POST /openai/deployments/{deployment}/chat/completions?api-version=…``
is the same wire with ``api-key`` auth; the deployment in the path is the model, so
directives go after ``::`` in the deployment name (or in ``x-mock-behavior``).  Azure's
v1 API, ``POST /openai/v1/chat/completions`` (bearer auth, model in the body), is served
too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .behaviour import Behaviour, plan_tokens
from .content import chat_prompt_tokens, fragments, schema_instance, word, words
from .delivery import malformed_json, pace_non_stream, pump, truncated_json
from .errors import openai_error_body
from .openai_tools import pick_tools, prompt_texts, requested_logprobs, tool_deltas
from .prompt_cache import chat_prefix
from .runtime import Call, begin, gate, handler, new_id, now
from .spoil import spoil
from .structured import chat_logprobs, prompt_schema, token_logprob

__all__ = [
    "FINGERPRINT",
    "azure_chat_completions",
    "azure_v1_chat_completions",
    "chat_completions",
    "request_limit",
    "sse_error",
    "structured_text",
    "usage_block",
]

FINGERPRINT = "fp_sim"
_MAX_N = 128
#: A chunk whose JSON never closes: what a proxy mangling a stream looks like.
MALFORMED_EVENT = b'data: {"id":"chatcmpl-broken","object":"chat.completion.chunk","choices":[{\n\n'


def usage_block(
    prompt: int, cached: int, cache_write: int, completion: int, reasoning: int
) -> dict[str, Any]:
    """OpenAI ``usage``: cached inside prompt_tokens, reasoning inside completion_tokens."""
    prompt_details: dict[str, int] = {"cached_tokens": cached, "audio_tokens": 0}
    if cache_write:
        prompt_details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def sse_error(message: str) -> bytes:
    """The mid-stream error event both OpenAI SDKs turn into ``APIError``."""
    body = openai_error_body(500, message)
    return b"data: " + orjson.dumps(body) + b"\n\n"


def request_limit(call: Call, *names: str) -> int | None:
    """The first max-tokens field present in the body; raise 400 if it is not a count."""
    for name in names:
        value = call.body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise call.error(400, f"Invalid '{name}': expected a non-negative integer.", param=name)
        return value
    return None


def choice_count(call: Call) -> int:
    n = call.body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= _MAX_N:
        raise call.error(400, f"Invalid 'n': must be an integer in [1, {_MAX_N}].", param="n")
    return n


@dataclass(slots=True)
class _Answer:
    """One choice's output; every choice of a request gets the same one."""

    kind: str  # "text" | "json" | "tool"
    text: str
    #: Generated tokens: the content's, or every tool call's arguments in order.
    pieces: list[str]
    reasoning: int
    finish: str
    #: Tool answers: ``(function name, JSON arguments)`` per call, in order.
    calls: list[tuple[str, str]] = field(default_factory=list)

    @property
    def completion(self) -> int:
        return len(self.pieces) + self.reasoning


def structured_text(call: Call, document: Any, schema: Any) -> str:
    """Serialized structured output, spoiled per ``invalid_json_rate`` (see :mod:`.spoil`)."""
    rate = call.behaviour.invalid_json_rate
    if rate is not None and call.state.rng.random() < rate:
        stats = call.state.stats
        serial = stats.fault_count("invalid_json")
        stats.fault("invalid_json")
        return spoil(document, schema, serial)
    return orjson.dumps(document).decode()


def _answer(call: Call, b: Behaviour, request_max: int | None) -> _Answer:
    if b.content_filter:
        return _Answer("text", "", [], b.reasoning, "content_filter")
    tools = pick_tools(call)
    if tools:
        calls = [
            (
                name,
                b.reply
                if b.reply is not None
                else structured_text(call, schema_instance(params, variant), params),
            )
            for variant, (name, params) in enumerate(tools)
        ]
        pieces = [piece for _, arguments in calls for piece in fragments(arguments)]
        return _Answer("tool", calls[0][1], pieces, b.reasoning, "tool_calls", calls)
    fmt = call.body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        spec = fmt.get("json_schema")
        schema: Any = None
        if fmt["type"] == "json_schema" and isinstance(spec, dict):
            schema = spec.get("schema", {})
        else:  # JSON mode: follow the schema the prompt spells out, if it has one
            schema = prompt_schema(prompt_texts(call.body.get("messages")))
        document = schema_instance(schema) if schema is not None else {"result": "ok"}
        text = b.reply if b.reply is not None else structured_text(call, document, schema)
        return _Answer("json", text, fragments(text), b.reasoning, "stop")
    if b.empty_when is not None and _fails_here(call, b.empty_when, b.empty_rate):
        return _Answer("text", "", [], b.reasoning, "stop")
    if b.reply is not None:
        return _Answer("text", b.reply, fragments(b.reply), b.reasoning, "stop")
    if b.classifier is not None:
        prompt = "\n".join(prompt_texts(call.body.get("messages"))).lower()
        text = "unsafe\nS1" if b.classifier in prompt else "safe"
        return _Answer("text", text, fragments(text), b.reasoning, "stop")
    if b.echo:
        text = "\n".join(prompt_texts(call.body.get("messages")))
        return _Answer("text", text, fragments(text), b.reasoning, "stop")
    plan = plan_tokens(b, request_max)
    pieces = [word(i) for i in range(plan.visible)]
    finish = "length" if plan.truncated else "stop"
    return _Answer("text", words(plan.visible), pieces, plan.reasoning, finish)


def _message(answer: _Answer) -> dict[str, Any]:
    if answer.kind == "tool":
        return {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
            "tool_calls": [
                {
                    "id": new_id("call_"),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for name, arguments in answer.calls
            ],
        }
    return {"role": "assistant", "content": answer.text, "refusal": None, "annotations": []}


@handler
async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _chat(await begin(request, "chat", "openai"))


@handler
async def azure_chat_completions(request: web.Request) -> web.StreamResponse:
    deployment = request.match_info["deployment"]
    return await _chat(await begin(request, "azure_chat", "azure", model=deployment))


@handler
async def azure_v1_chat_completions(request: web.Request) -> web.StreamResponse:
    return await _chat(await begin(request, "azure_chat", "azure"))


async def _chat(call: Call) -> web.StreamResponse:
    messages = call.body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise call.error(400, "'messages' must be a non-empty array.", param="messages")
    n = choice_count(call)
    request_max = request_limit(call, "max_completion_tokens", "max_tokens")
    top = requested_logprobs(call)
    prompt = chat_prompt_tokens(messages)
    await gate(call, prompt)
    b = call.behaviour
    answer = _answer(call, b, request_max)
    prefix = chat_prefix(messages) if b.prompt_cache else None
    # OpenAI does not bill cache writes, so a miss reports nothing extra.
    cached, cache_write = call.prompt_cache(prompt, prefix, bills_writes=False)
    completion = answer.completion * n
    reasoning = answer.reasoning * n
    usage = usage_block(prompt, cached, cache_write, completion, reasoning)
    if call.stream:
        return await _stream(call, answer, n, usage, (prompt, cached, cache_write), top)
    # Log probabilities are the content's; a tool call's arguments have none.
    wants_logprobs = top is not None and answer.kind != "tool"
    logprobs = chat_logprobs(answer.pieces, top or 0) if wants_logprobs else None
    payload = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": now(),
        "model": call.model,
        "choices": [
            {
                "index": i,
                "message": _message(answer),
                "logprobs": logprobs,
                "finish_reason": answer.finish,
            }
            for i in range(n)
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    await pace_non_stream(call, answer.completion)
    if b.cut_after is not None:
        return await truncated_json(call, orjson.dumps(payload))
    if b.malformed:
        return malformed_json(call, orjson.dumps(payload))
    call.state.stats.usage(
        call.base,
        prompt=prompt,
        cached=cached,
        cache_write=cache_write,
        completion=completion,
        reasoning=reasoning,
    )
    return call.json(payload)


async def _stream(
    call: Call,
    answer: _Answer,
    n: int,
    usage: dict[str, Any],
    prompt_parts: tuple[int, int, int],
    top: int | None,
) -> web.StreamResponse:
    options = call.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    # Chunks share everything but their choices, so they are spliced from two byte
    # templates instead of serialising a whole dict per token.
    prefix = (
        b'data: {"id":"'
        + new_id("chatcmpl-").encode()
        + b'","object":"chat.completion.chunk","created":'
        + str(now()).encode()
        + b',"model":'
        + orjson.dumps(call.model)
        + b',"service_tier":"default","system_fingerprint":"'
        + FINGERPRINT.encode()
        + b'","choices":['
    )
    suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
    indexes = range(n)

    def chunk(choices: list[bytes]) -> bytes:
        return prefix + b",".join(choices) + suffix

    def delta(i: int, body: dict[str, Any], finish: str | None = None) -> bytes:
        return orjson.dumps({"index": i, "delta": body, "logprobs": None, "finish_reason": finish})

    if answer.kind == "tool":
        head, body = tool_deltas(answer.calls, indexes, chunk, delta)
    else:
        head = chunk(
            [delta(i, {"role": "assistant", "content": "", "refusal": None}) for i in indexes]
        )
        body = []
        for position, piece in enumerate(answer.pieces):
            encoded = orjson.dumps(piece)
            logprobs = b"null"
            if top is not None:
                entry = token_logprob(piece, position, top)
                logprobs = orjson.dumps({"content": [entry], "refusal": None})
            body.append(
                chunk(
                    [
                        b'{"index":%d,"delta":{"content":%b},"logprobs":%b,"finish_reason":null}'
                        % (i, encoded, logprobs)
                        for i in indexes
                    ]
                )
            )
    tail = chunk([delta(i, {}, answer.finish) for i in indexes])
    on_delivered: Callable[[], None] | None = None
    if include_usage:
        tail += prefix + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"
        prompt, cached, cache_write = prompt_parts
        stats = call.state.stats

        def record() -> None:
            stats.usage(
                call.base,
                prompt=prompt,
                cached=cached,
                cache_write=cache_write,
                completion=usage["completion_tokens"],
                reasoning=usage["completion_tokens_details"]["reasoning_tokens"],
            )

        on_delivered = record

    tail += b"data: [DONE]\n\n"
    return await pump(
        call,
        head,
        body,
        tail,
        error_event=sse_error(
            call.error_message("The server had an error while streaming (simulated).") or ""
        ),
        malformed_event=MALFORMED_EVENT,
        on_delivered=on_delivered,
        pre_content_tokens=answer.reasoning,
    )


def _fails_here(call: Call, marker: str, rate: float | None) -> bool:
    """`empty_when`: the prompt holds the marker, and (with a rate) its hash falls in the
    failing share — the same prompt fails every time."""
    prompt = "\n".join(prompt_texts(call.body.get("messages"))).lower()
    if marker not in prompt:
        return False
    if rate is None:
        return True
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64
