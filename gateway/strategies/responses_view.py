"""Responses calls seen the way the strategies judge answers: as chat.

Gates, consensus votes and repairs read chat bodies (`choices[0].message`, the request's
`response_format` and `tools`). A Responses call is judged through the same eyes — its
request and Response object viewed as chat — so a gate or a vote means the same thing on
both APIs. Only the view is chat: the client still gets the Response object.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.providers.responses_translate import chat_request, chat_view
from routing.gates import GateResult, repair_message

RESPONSES = "responses"


def chat_views(
    endpoint: str, payload: dict[str, Any], data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request, answer) as chat bodies."""
    if endpoint != RESPONSES:
        return payload, data
    try:
        request = chat_request(payload)
    except GatewayError:  # a request only a native upstream can read: judge the answer alone
        request = {}
    return request, chat_view(data)


def answer_view(endpoint: str, data: dict[str, Any]) -> dict[str, Any]:
    return chat_view(data) if endpoint == RESPONSES else data


def responses_repair(payload: dict[str, Any], said: str, result: GateResult) -> dict[str, Any]:
    """The Responses request again, with the failed answer and what was wrong with it as
    the next two turns (as chat repairs do with messages)."""
    items = payload.get("input")
    conversation = (
        list(items)
        if isinstance(items, list)
        else [{"type": "message", "role": "user", "content": str(items or "")}]
    )
    conversation.append({"type": "message", "role": "assistant", "content": said or "(no answer)"})
    conversation.append({"type": "message", "role": "user", "content": repair_message(result)})
    return {**payload, "input": conversation}
