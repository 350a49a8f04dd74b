"""`text_answer_json` writes the bytes `orjson.dumps(response_from_chat(…))` writes, for
every answer and request it takes, and hands back (None) every one it does not."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers import responses_output
from gateway.providers.base import UpstreamReply
from gateway.providers.responses_answer import text_answer_json
from gateway.providers.responses_output import response_from_chat
from tests.openapi import check

HELLO = [{"role": "user", "content": "hello"}]
_USAGES: list[Any] = [
    {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    {
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 5},
        "cost_usd": 0.000125,
    },
    {"prompt_tokens": -1, "completion_tokens": "2", "total_tokens": None},
    None,
    "not usage",
]
_PLAIN: list[dict[str, Any]] = [
    {"model": "m", "input": HELLO, "store": False, "max_output_tokens": 16},
    {"model": "m", "input": "hi", "stream": False, "store": True},
    {"model": "m", "input": HELLO, "max_output_tokens": None},
    {"model": 7, "input": HELLO},
]
_NOT_PLAIN: list[dict[str, Any]] = [
    {"model": "m", "input": HELLO, "instructions": "Be brief."},
    {"model": "m", "input": HELLO, "temperature": 0.5},
    {"model": "m", "input": HELLO, "tools": [{"type": "function", "name": "f"}]},
    # Refused before a request gets here, and would share an int cap's cached pieces.
    {"model": "m", "input": HELLO, "max_output_tokens": True},
    {"model": "m", "input": HELLO, "max_output_tokens": 16.0},
]
_TEXT = "Hello there."
_TAKEN_MESSAGES: list[dict[str, Any]] = [
    {"role": "assistant", "content": _TEXT},
    {"role": "assistant", "content": _TEXT, "refusal": None, "tool_calls": []},
    {"role": "assistant", "content": _TEXT, "reasoning_content": None, "reasoning": ""},
    {"role": "assistant", "content": 'quotes " \\ \n\t \u2028 é 😀 </script>'},
]
_OTHER_MESSAGES: list[Any] = [
    {"role": "assistant", "content": "Hi", "reasoning_content": "thinking"},
    {"role": "assistant", "content": "Hi", "reasoning": "thinking"},
    {"role": "assistant", "content": "Hi", "refusal": "no"},
    {"role": "assistant", "content": "", "refusal": None},
    {"role": "assistant", "content": None},
    {"role": "assistant", "content": ["parts"]},
    {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    },
    None,
    "text",
]


def _chat(message: Any, finish: Any, usage: Any, model: Any = "served") -> dict[str, Any]:
    chat: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage is not None:
        chat["usage"] = usage
    return chat


def _both(chat: dict[str, Any], request: dict[str, Any]) -> tuple[bytes | None, bytes]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(responses_output, "new_id", lambda prefix: prefix + "1")
        fast = text_answer_json(copy.deepcopy(chat), copy.deepcopy(request), "resp_1", 7)
        general = response_from_chat(
            copy.deepcopy(chat), copy.deepcopy(request), response_id="resp_1", created_at=7
        )
    return fast, orjson.dumps(general)


@pytest.mark.parametrize("model", ["served", None, 3])
@pytest.mark.parametrize("usage", _USAGES)
@pytest.mark.parametrize("finish", ["stop", "length", "content_filter", "tool_calls", None, 1])
@pytest.mark.parametrize("message", _TAKEN_MESSAGES)
@pytest.mark.parametrize("request_body", _PLAIN)
def test_the_usual_answer_is_the_dumped_response(
    request_body: dict[str, Any], message: dict[str, Any], finish: Any, usage: Any, model: Any
) -> None:
    fast, general = _both(_chat(message, finish, usage, model), request_body)
    assert fast == general
    check("Response", orjson.loads(general))


@pytest.mark.parametrize("message", _OTHER_MESSAGES)
@pytest.mark.parametrize("request_body", _PLAIN)
def test_other_answers_are_handed_back(request_body: dict[str, Any], message: Any) -> None:
    assert _both(_chat(message, "stop", _USAGES[0]), request_body)[0] is None


@pytest.mark.parametrize("request_body", _NOT_PLAIN)
def test_other_requests_are_handed_back(request_body: dict[str, Any]) -> None:
    assert _both(_chat(_TAKEN_MESSAGES[0], "stop", _USAGES[0]), request_body)[0] is None


@pytest.mark.parametrize("choices", [[], None, "x", [None], ["x"]])
def test_answers_without_a_choice_are_handed_back(choices: Any) -> None:
    chat = {"model": "m", "choices": choices}
    assert text_answer_json(chat, _PLAIN[0], "resp_1", 7) is None


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1), st.sampled_from(["stop", "length", None]))
def test_any_text_is_the_dumped_response(text: str, finish: str | None) -> None:
    fast, general = _both(_chat({"content": text}, finish, _USAGES[0]), _PLAIN[0])
    assert fast == general


def test_a_rewritten_reply_decodes_its_body_when_read_and_meters_the_given_usage() -> None:
    chat_usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    reply = UpstreamReply(200, b"{}", {"usage": chat_usage}, "req-1")
    assert reply.usage() is chat_usage  # read from data until rewritten
    raw = text_answer_json(_chat({"content": "hi"}, "stop", chat_usage), _PLAIN[0], "resp_1", 7)
    assert raw is not None
    reply.rewrite(raw, chat_usage)
    assert reply.usage() is chat_usage
    assert reply.data == orjson.loads(raw)
    assert reply.data["usage"]["input_tokens"] == 3
