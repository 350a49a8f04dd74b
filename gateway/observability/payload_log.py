"""Opt-in payload logging: one redacted JSON line per request, for routes with `log_payloads`.

Farebox retains no prompt or completion by default: nothing on the request path logs
message text, and the ledger stores token counts, not content. A route that sets
`log_payloads: true` gets one line per request on the `farebox.payloads` logger, with the
request's messages (or prompt / input) and the answer's text, after `gateway.observability.redact`
removed emails, phone numbers, card numbers and credentials.

The handlers check the route flag once per request; routes without it pay one dict lookup.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.observability.redact import redact_json

log = logging.getLogger("farebox.payloads")
# Lines are written at INFO: the operator opted in per route, so they must not depend on
# the server's log level.
log.setLevel(logging.INFO)

# What of a request is logged: the conversation, not sampling knobs or tool schemas.
_REQUEST_FIELDS = ("messages", "prompt", "input", "system", "tools", "tool_choice")


def wanted(routes: Mapping[str, Any], route: str) -> bool:
    """Does `route` opt in? (The one check a request pays.)"""
    config = routes.get(route)
    return config is not None and config.log_payloads is True


def ensure_handler() -> None:
    """Give the logger a stderr handler when no logging is configured at all.

    Without one, Python's last-resort handler drops INFO lines: an opted-in route would
    silently log nothing.
    """
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)


def request_part(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {k: redact_json(payload[k]) for k in _REQUEST_FIELDS if k in payload}


def answer_part(body: bytes) -> dict[str, Any]:
    """The answer's text and tool calls from an OpenAI-format response body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"unparsed": True}
    if not isinstance(data, dict):
        return {"unparsed": True}
    choices = data.get("choices")
    if isinstance(choices, list):
        out = []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                part = {k: message[k] for k in ("content", "tool_calls") if message.get(k)}
            else:
                part = {"text": choice.get("text")}
            part["finish_reason"] = choice.get("finish_reason")
            out.append(redact_json(part))
        return {"choices": out}
    embeddings = data.get("data")
    if isinstance(embeddings, list):  # vectors are not content worth keeping
        return {"embeddings": len(embeddings)}
    return {}


def write(
    *,
    request_id: str,
    route: str,
    key: str | None,
    endpoint: str,
    payload: Mapping[str, Any],
    answer: dict[str, Any],
    status: int = 200,
) -> None:
    line = {
        "request_id": request_id,
        "route": route,
        "key": key,
        "endpoint": endpoint,
        "status": status,
        "request": request_part(payload),
        "answer": answer,
    }
    ensure_handler()
    log.info("%s", orjson.dumps(line).decode())


def stream_text(block: bytes, into: list[str]) -> None:
    """Collect the content deltas of one block of OpenAI SSE events."""
    for line in block.split(b"\n"):
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        try:
            event = orjson.loads(line[6:])
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        for choice in event.get("choices") or ():
            if isinstance(choice, dict):
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(text, str):
                    into.append(text)


async def tap(
    chunks: AsyncIterator[bytes],
    *,
    request_id: str,
    route: str,
    key: str | None,
    endpoint: str,
    payload: Mapping[str, Any],
) -> AsyncIterator[bytes]:
    """Relay a stream unchanged and log it, redacted, once it ends (or breaks)."""
    text: list[str] = []
    complete = False
    try:
        async for chunk in chunks:
            stream_text(chunk, text)
            # The relay stops iterating after the last chunk instead of exhausting us, so
            # completion is the [DONE] event, not the end of this loop.
            complete = complete or chunk.endswith(b"data: [DONE]\n\n")
            yield chunk
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
        write(
            request_id=request_id,
            route=route,
            key=key,
            endpoint=endpoint,
            payload=payload,
            answer={"text": redact_json("".join(text)), "complete": complete},
        )
