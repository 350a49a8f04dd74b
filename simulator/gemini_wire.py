"""Gemini ``generateContent`` / ``streamGenerateContent`` in the real wire format.

Two path forms share this module:

* Google AI Studio: ``POST /{v1beta|v1|v1alpha}/models/{model}:{method}`` with
  ``x-goog-api-key`` (what litellm's ``gemini/`` provider builds from ``api_base``);
* Vertex AI: ``POST /{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/
  {model}:{method}`` with an OAuth bearer token (litellm's ``vertex_ai/`` provider).

The model comes from the path, so directives go after ``::`` in it (litellm sends the name
unquoted, other clients may percent-encode it; both work) or in ``x-mock-behavior``.
Streams are always SSE (``data: {json}\\r\\n\\r\\n``, what ``?alt=sse`` asks for).

Mapping of the directives: ``cached=N`` or a ``prompt_cache`` hit on
``systemInstruction`` → ``cachedContentTokenCount`` (inside ``promptTokenCount``, as
Gemini counts it; a miss reports nothing, like implicit caching); ``reasoning=N`` →
``thoughtsTokenCount`` (outside ``candidatesTokenCount``; ``totalTokenCount`` includes it)
plus a ``thought`` part when ``thinkingConfig.includeThoughts`` is set; ``cache_write``
has no Gemini field and is ignored.  Declared functions → a ``functionCall`` part (first
declaration, or the first ``allowedFunctionNames`` entry; ``mode: NONE`` disables it);
``tool_calls=N`` → ``N`` ``functionCall`` parts (parallel calls); ``responseMimeType:
application/json`` → a JSON instance of ``responseSchema`` / ``responseJsonSchema``, or
without one of the JSON schema the prompt spells out (``{"result": "ok"}`` if none).
Field names are accepted in camelCase and snake_case, as Google's JSON parser does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .behaviour import plan_tokens
from .content import (
    fragments,
    gemini_prompt_tokens,
    schema_instance,
    text_segments,
    word,
    words,
)
from .delivery import malformed_json, pace_non_stream, pump, truncated_json
from .errors import google_error_body
from .prompt_cache import gemini_prefix
from .runtime import JSON_TYPE, STATE, Call, Flavor, begin, gate, handler, new_id
from .structured import prompt_schema

__all__ = ["gemini_generate", "oauth_token", "vertex_generate"]

_METHODS = {"generateContent": False, "streamGenerateContent": True}
_MAX_CANDIDATES = 8
_MALFORMED_EVENT = b'data: {"candidates": [{"content": {"parts": [{"text": \r\n\r\n'
_EVENT_END = b"\r\n\r\n"
_BLOCKED = {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
_GRANTS = frozenset({"urn:ietf:params:oauth:grant-type:jwt-bearer", "refresh_token"})
_TOKEN_TTL_S = 3599


def _get(mapping: Any, camel: str, snake: str) -> Any:
    """A field under its camelCase or snake_case name (Google accepts both)."""
    if not isinstance(mapping, dict):
        return None
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


def _lower_types(schema: Any) -> Any:
    """Gemini's OpenAPI-style schemas may spell types ``"OBJECT"``; JSON Schema wants lower."""
    if isinstance(schema, dict):
        out = {k: _lower_types(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = out["type"].lower()
        return out
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


@dataclass(slots=True)
class _Answer:
    """One candidate's output; every candidate of a request gets the same one."""

    parts: list[dict[str, Any]]
    #: Stream: one list of parts per chunk (a function call arrives whole, in the tail).
    chunks: list[list[dict[str, Any]]]
    visible: int
    reasoning: int
    finish: str
    thought: list[dict[str, Any]] = field(default_factory=list)


def _answers_function(contents: Any) -> bool:
    last = contents[-1] if isinstance(contents, list) and contents else None
    parts = last.get("parts") if isinstance(last, dict) else None
    return isinstance(parts, list) and any(
        isinstance(p, dict) and ("functionResponse" in p or "function_response" in p) for p in parts
    )


def _pick_tools(call: Call) -> list[tuple[str, Any]]:
    """``(name, schema)`` per ``functionCall`` part to answer with (``tool_calls=N`` of
    them: Gemini calls functions in parallel with no switch to stop it), or none."""
    config = _get(
        _get(call.body, "toolConfig", "tool_config"),
        "functionCallingConfig",
        "function_calling_config",
    )
    mode = str(_get(config, "mode", "mode") or "AUTO").upper()
    declarations: list[dict[str, Any]] = []
    tools = call.body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        found = _get(tool, "functionDeclarations", "function_declarations")
        if isinstance(found, list):
            declarations += [d for d in found if isinstance(d, dict) and d.get("name")]
    if not declarations or mode == "NONE":
        return []
    if mode == "AUTO" and _answers_function(call.body.get("contents")):
        return []  # a model given its function's result answers rather than calling again
    allowed = _get(config, "allowedFunctionNames", "allowed_function_names")
    wanted = allowed[0] if isinstance(allowed, list) and allowed and mode == "ANY" else None
    candidates = [d for d in declarations if wanted is None or d["name"] == wanted]
    if not candidates:
        raise call.error(400, f"Function {wanted!r} in allowed_function_names is not declared.")
    out = []
    for i in range(call.behaviour.tool_calls):
        declaration = candidates[i % len(candidates)]
        schema = _get(declaration, "parametersJsonSchema", "parameters_json_schema")
        if schema is None:
            schema = _lower_types(declaration.get("parameters"))
        out.append((str(declaration["name"]), schema))
    return out


def _count(call: Call, config: Any, camel: str, snake: str, low: int, high: int) -> int | None:
    value = _get(config, camel, snake)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise call.error(
            400, f"Invalid value at 'generation_config.{snake}' ({value!r}): out of range."
        )
    return value


def _prompt_texts(call: Call) -> list[str]:
    system = _get(call.body, "systemInstruction", "system_instruction")
    texts = text_segments(system.get("parts")) if isinstance(system, dict) else []
    contents = call.body.get("contents")
    for content in contents if isinstance(contents, list) else ():
        if isinstance(content, dict):
            texts += text_segments(content.get("parts"))
    return texts


def _answer(call: Call, config: Any, tools: list[tuple[str, Any]], limit: int | None) -> _Answer:
    b = call.behaviour
    if b.content_filter:
        return _Answer([], [], 0, b.reasoning, "SAFETY")
    if tools:
        parts = []
        visible = 0
        for variant, (name, schema) in enumerate(tools):
            args = schema_instance(schema, variant)
            parts.append({"functionCall": {"name": name, "args": args}})
            visible += len(fragments(orjson.dumps(args).decode()))
        answer = _Answer(parts, [], visible, b.reasoning, "STOP")
    elif _get(config, "responseMimeType", "response_mime_type") == "application/json":
        schema = _get(config, "responseJsonSchema", "response_json_schema")
        if schema is None:
            schema = _lower_types(_get(config, "responseSchema", "response_schema"))
        if schema is None:  # JSON mode: follow the schema the prompt spells out, if any
            schema = prompt_schema(_prompt_texts(call))
        document = schema_instance(schema) if schema is not None else {"result": "ok"}
        text = orjson.dumps(document).decode()
        pieces = fragments(text)
        answer = _Answer(
            [{"text": text}], [[{"text": p}] for p in pieces], len(pieces), b.reasoning, "STOP"
        )
    else:
        plan = plan_tokens(b, limit)
        chunks = [[{"text": word(i)}] for i in range(plan.visible)]
        finish = "MAX_TOKENS" if plan.truncated else "STOP"
        answer = _Answer(
            [{"text": words(plan.visible)}], chunks, plan.visible, plan.reasoning, finish
        )
    thinking = _get(config, "thinkingConfig", "thinking_config")
    if answer.reasoning and _get(thinking, "includeThoughts", "include_thoughts") is True:
        answer.thought = [
            {"text": f"Simulated reasoning ({answer.reasoning} tokens).", "thought": True}
        ]
    return answer


def _usage(
    flavor: Flavor, prompt: int, cached: int, visible: int | None, reasoning: int
) -> dict[str, Any]:
    """``usageMetadata``; ``visible=None`` is the partial form of a mid-stream chunk."""
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    total = prompt
    if visible is not None:
        usage["candidatesTokenCount"] = visible
        total += visible + reasoning
    usage["totalTokenCount"] = total
    if cached:
        usage["cachedContentTokenCount"] = cached
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if cached:
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if visible is not None and reasoning:
        usage["thoughtsTokenCount"] = reasoning
    if flavor == "vertex":
        usage["trafficType"] = "ON_DEMAND"
    return usage


@handler
async def gemini_generate(request: web.Request) -> web.StreamResponse:
    """Google AI Studio: ``/{version}/models/{model}:{method}``."""
    return await _generate(request, "gemini", "gemini")


@handler
async def vertex_generate(request: web.Request) -> web.StreamResponse:
    """Vertex AI: ``/{version}/projects/{p}/locations/{l}/publishers/google/models/…``."""
    return await _generate(request, "vertex", "vertex")


def _not_found(target: str) -> web.Response:
    body = google_error_body(404, f"Method not found for '{target}'.")
    return web.Response(status=404, body=orjson.dumps(body), content_type=JSON_TYPE)


async def _generate(request: web.Request, endpoint: str, flavor: Flavor) -> web.StreamResponse:
    target = request.match_info["target"]
    model, _, method = target.rpartition(":")
    if not model or method not in _METHODS:
        return _not_found(target)
    call = await begin(request, endpoint, flavor, model=model, stream=_METHODS[method])
    contents = call.body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise call.error(400, "* GenerateContentRequest.contents: contents is not specified\n")
    config = _get(call.body, "generationConfig", "generation_config")
    limit = _count(call, config, "maxOutputTokens", "max_output_tokens", 1, 1 << 20)
    n = _count(call, config, "candidateCount", "candidate_count", 1, _MAX_CANDIDATES) or 1
    system = _get(call.body, "systemInstruction", "system_instruction")
    prompt = gemini_prompt_tokens(system, contents)
    tools = _pick_tools(call)
    await gate(call, prompt)
    answer = _answer(call, config, tools, limit)
    prefix = gemini_prefix(system) if call.behaviour.prompt_cache else None
    # Implicit caching: hits are discounted, writes are free and have no usage field.
    cached, _ = call.prompt_cache(prompt, prefix, bills_writes=False)
    visible, reasoning = answer.visible * n, answer.reasoning * n
    usage = _usage(flavor, prompt, cached, visible, reasoning)
    envelope: dict[str, Any] = {"modelVersion": call.base, "responseId": new_id("")[:22]}

    def record() -> None:
        call.state.stats.usage(
            call.base,
            prompt=prompt,
            cached=cached,
            completion=visible + reasoning,
            reasoning=reasoning,
        )

    def candidates(parts: list[dict[str, Any]], finish: str | None) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            # A candidate the safety filter stopped has no content, only blocked ratings.
            candidate: dict[str, Any] = (
                {"content": {"parts": parts, "role": "model"}} if parts else {}
            )
            if finish is not None:
                candidate["finishReason"] = finish
            candidate["index"] = i
            if finish == "SAFETY":
                candidate["safetyRatings"] = [_BLOCKED]
            out.append(candidate)
        return out

    if call.stream:
        partial = _usage(flavor, prompt, cached, None, 0)

        def event(parts: list[dict[str, Any]], finish: str | None, meta: dict[str, Any]) -> bytes:
            chunk = {"candidates": candidates(parts, finish), "usageMetadata": meta, **envelope}
            return b"data: " + orjson.dumps(chunk) + _EVENT_END

        head = event(answer.thought, None, partial) if answer.thought else b""
        body = [event(parts, None, partial) for parts in answer.chunks]
        # A function call arrives whole, with the finish reason; text ends on an empty part.
        last = [{"text": ""}] if answer.chunks else answer.parts
        tail = event(last, answer.finish, usage)
        error = google_error_body(500)
        return await pump(
            call,
            head,
            body,
            tail,
            error_event=b"data: " + orjson.dumps(error) + _EVENT_END,
            malformed_event=_MALFORMED_EVENT,
            on_delivered=record,
            pre_content_tokens=answer.reasoning,
        )
    payload = {
        "candidates": candidates(answer.thought + answer.parts, answer.finish),
        "usageMetadata": usage,
        **envelope,
    }
    await pace_non_stream(call, answer.visible + answer.reasoning)
    if call.behaviour.cut_after is not None:
        return await truncated_json(call, orjson.dumps(payload))
    if call.behaviour.malformed:
        return malformed_json(call, orjson.dumps(payload))
    record()
    return call.json(payload)


async def oauth_token(request: web.Request) -> web.Response:
    """Google's OAuth token endpoint, for ``token_uri`` in a fake service-account file.

    Accepts the JWT-bearer grant (service accounts; the assertion's signature is not
    checked) and the refresh-token grant (``authorized_user`` files).  Issued tokens are
    what Vertex routes accept when the simulator requires a key.
    """
    form = await request.post()
    if form.get("grant_type") not in _GRANTS:
        body = {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}
        return web.Response(status=400, body=orjson.dumps(body), content_type=JSON_TYPE)
    token = "ya29.sim-" + os.urandom(16).hex()
    request.app[STATE].issued_tokens.add(token)
    payload = {"access_token": token, "expires_in": _TOKEN_TTL_S, "token_type": "Bearer"}
    return web.Response(body=orjson.dumps(payload), content_type=JSON_TYPE)
