"""OpenAI legacy completions, embeddings and the model list."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

from .behaviour import plan_tokens, split_prompt_cache
from .content import (
    completion_prompts,
    embedding_inputs,
    embedding_vector,
    encode_base64_floats,
    word,
    words,
)
from .delivery import malformed_json, pace_non_stream, pump, truncated_json
from .errors import openai_error_body
from .openai_wire import FINGERPRINT, choice_count, request_limit, sse_error, usage_block
from .runtime import STATE, Call, begin, gate, handler, new_id, now
from .structured import MAX_COMPLETION_LOGPROBS, completion_logprobs

__all__ = ["MODELS", "completions", "embeddings", "list_models", "retrieve_model"]

#: Advertised by ``GET /v1/models``; any model name is accepted by the other endpoints.
MODELS = ("sim-small", "sim-medium", "sim-large", "sim-reasoning", "sim-embed")
DEFAULT_DIMENSIONS = 8
MAX_DIMENSIONS = 8192
_MODELS_CREATED = 1_700_000_000
_MALFORMED_EVENT = b'data: {"id":"cmpl-broken","object":"text_completion","choices":[{\n\n'


@handler
async def completions(request: web.Request) -> web.StreamResponse:
    call = await begin(request, "completions", "openai")
    counted = completion_prompts(call.body.get("prompt"))
    if counted is None:
        raise call.error(
            400, "'prompt' must be a string, array of strings or token arrays.", param="prompt"
        )
    prompt, prompt_count = counted
    n = choice_count(call)
    # Legacy completions default max_tokens to 16 upstream, which plan_tokens mirrors.
    request_max = request_limit(call, "max_tokens")
    top = _logprobs(call)
    await gate(call, prompt)
    b = call.behaviour
    plan = plan_tokens(b, request_max)
    choices = n * prompt_count
    finish = "length" if plan.truncated else "stop"
    cached, cache_write = split_prompt_cache(b, prompt)
    completion = plan.completion * choices
    reasoning = plan.reasoning * choices
    usage = usage_block(prompt, cached, cache_write, completion, reasoning)
    cid = new_id("cmpl-")
    created = now()

    def record() -> None:
        call.state.stats.usage(
            call.base,
            prompt=prompt,
            cached=cached,
            cache_write=cache_write,
            completion=completion,
            reasoning=reasoning,
        )

    if call.stream:
        options = call.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        prefix = (
            b'data: {"id":"'
            + cid.encode()
            + b'","object":"text_completion","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(call.model)
            + b',"system_fingerprint":"'
            + FINGERPRINT.encode()
            + b'","choices":['
        )
        suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

        def chunk(text: str, finish: str | None, position: int = 0, offset: int = 0) -> bytes:
            logprobs = None
            if top is not None and text:
                logprobs = completion_logprobs([text], top, position, offset)
            parts = [
                orjson.dumps(
                    {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}
                )
                for i in range(choices)
            ]
            return prefix + b",".join(parts) + suffix

        body = []
        offset = 0
        for position in range(plan.visible):
            body.append(chunk(word(position), None, position, offset))
            offset += len(word(position))
        tail = chunk("", finish)
        if include_usage:
            tail += prefix + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"
        tail += b"data: [DONE]\n\n"
        return await pump(
            call,
            b"",
            body,
            tail,
            error_event=sse_error(
                call.error_message("The server had an error while streaming (simulated).") or ""
            ),
            malformed_event=_MALFORMED_EVENT,
            on_delivered=record if include_usage else None,
            pre_content_tokens=plan.reasoning,
        )
    text = words(plan.visible)
    logprobs = None
    if top is not None:
        logprobs = completion_logprobs([word(i) for i in range(plan.visible)], top, 0, 0)
    payload = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": call.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}
            for i in range(choices)
        ],
        "usage": usage,
    }
    return await _finish_json(call, payload, plan.completion, record)


def _logprobs(call: Call) -> int | None:
    """Legacy ``logprobs``: how many alternatives per token (0-5), or None."""
    value = call.body.get("logprobs")
    if value is None:
        return None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_COMPLETION_LOGPROBS
    ):
        raise call.error(
            400,
            f"Invalid 'logprobs': must be an integer in [0, {MAX_COMPLETION_LOGPROBS}].",
            param="logprobs",
        )
    return value


async def _finish_json(
    call: Call, payload: dict[str, Any], tokens: int, record: Callable[[], None]
) -> web.StreamResponse:
    await pace_non_stream(call, tokens)
    if call.behaviour.cut_after is not None:
        return await truncated_json(call, orjson.dumps(payload))
    if call.behaviour.malformed:
        return malformed_json(call, orjson.dumps(payload))
    record()
    return call.json(payload)


@lru_cache(maxsize=4096)
def _vector(identity: bytes, dimensions: int) -> tuple[float, ...]:
    return tuple(embedding_vector(identity, dimensions))


@lru_cache(maxsize=4096)
def _vector_b64(identity: bytes, dimensions: int) -> str:
    return encode_base64_floats(list(_vector(identity, dimensions)))


@handler
async def embeddings(request: web.Request) -> web.StreamResponse:
    call = await begin(request, "embeddings", "openai")
    inputs = embedding_inputs(call.body.get("input"))
    if inputs is None:
        raise call.error(
            400, "'input' must be a string, array of strings or token arrays.", param="input"
        )
    fmt = call.body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise call.error(
            400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    dimensions = call.body.get("dimensions", DEFAULT_DIMENSIONS)
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise call.error(
            400, f"'dimensions' must be an integer in [1, {MAX_DIMENSIONS}].", param="dimensions"
        )
    prompt = max(1, sum(tokens for _, tokens in inputs))
    await gate(call, prompt)
    encode: Callable[[bytes, int], Any] = _vector_b64 if fmt == "base64" else _vector
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(identity, dimensions)}
            for i, (identity, _) in enumerate(inputs)
        ],
        "model": call.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }

    def record() -> None:
        call.state.stats.usage(call.base, prompt=prompt)

    return await _finish_json(call, payload, 0, record)


def _unauthorised(request: web.Request) -> web.Response | None:
    bearer = request.app[STATE].bearer
    if bearer is None or request.headers.get("Authorization") == bearer:
        return None
    return web.Response(
        status=401,
        body=orjson.dumps(openai_error_body(401, code="invalid_api_key")),
        content_type="application/json",
        headers={"x-request-id": new_id("req_")},
    )


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _MODELS_CREATED, "owned_by": "farebox-sim"}


async def list_models(request: web.Request) -> web.Response:
    denied = _unauthorised(request)
    if denied is not None:
        return denied
    payload = {"object": "list", "data": [_model(name) for name in MODELS]}
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    """Any model id exists: the simulator serves whatever name it is asked for."""
    denied = _unauthorised(request)
    if denied is not None:
        return denied
    payload = _model(request.match_info["model"])
    return web.Response(body=orjson.dumps(payload), content_type="application/json")
