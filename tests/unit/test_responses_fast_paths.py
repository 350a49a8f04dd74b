"""The Responses fast paths give exactly what the general paths give.

`plain_chat_request` (the usual request's chat body), `check_responses`' plain-body
shortcut (`_plain`), `response_skeleton`'s plain request, `response_from_chat`'s
text-alone answer and the stream's terminal Response made from the opening one's bytes
(`ItemStream._terminal`) are each compared with the general path they skip, on inputs they take
and on inputs they must hand back: same body key for key and in the same order (compared
as JSON bytes), same (model, stream), same error.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api import responses_input
from gateway.api.responses_input import check_responses
from gateway.core.responses_relay import usage_at_end
from gateway.errors import InvalidRequest
from gateway.providers import (
    responses_items,
    responses_output,
    responses_stream,
    responses_translate,
)
from gateway.providers.responses_output import response_from_chat, response_skeleton
from gateway.providers.responses_plain import plain_chat_request
from gateway.providers.responses_stream import StreamTranslator
from gateway.providers.responses_translate import chat_request
from tests.openapi import check

HELLO = [{"role": "user", "content": "hello"}]
TAKEN: list[dict[str, Any]] = [
    {"model": "m", "input": "hello"},
    {"model": "m", "input": HELLO, "max_output_tokens": 16, "store": False},
    {"model": "m", "input": HELLO, "max_output_tokens": 16, "stream": True},
    {"model": "m", "input": HELLO, "stream": False},
    {"model": "m", "input": HELLO, "stream": None},
    {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"type": "message", "role": "developer", "content": "Use metric units."},
            {"role": "user", "content": "Weather?"},
            {"type": "message", "role": "assistant", "content": "Where?", "id": "msg_1"},
            {"role": "system", "content": ""},
            {"role": "user", "content": 'Paris "FR"\n'},
        ],
        "temperature": 0.2,
        "top_p": 1,
        "user": "u-1",
        "metadata": {"workflow_id": "wf"},
        "previous_response_id": "resp_1",
        "truncation": "auto",
        "store": True,
        "stream": True,
    },
    {"model": "m", "instructions": "", "input": "hi", "temperature": 0},
]
HANDED_BACK: list[dict[str, Any]] = [
    {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}]}]},
    {"model": "m", "input": HELLO, "tools": [{"type": "function", "name": "f"}]},
    {"model": "m", "input": HELLO, "text": {"format": {"type": "json_object"}}},
    {"model": "m", "input": HELLO, "reasoning": {"effort": "low"}},
    {"model": "m", "input": HELLO, "seed": 3},
    {"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]},
    {"model": "m", "input": [{"role": "tool", "content": "x"}]},
    {"model": "m", "input": [{"role": ["user"], "content": "x"}]},
    {"model": "m", "input": ["hello"]},
    {"model": "m", "input": []},
    {"model": "m", "input": None},
    {"model": "m", "input": HELLO, "max_output_tokens": True},
    {"model": "m", "input": HELLO, "temperature": True},
    {"model": "m", "input": HELLO, "temperature": "0.2"},
    {"model": "m", "input": HELLO, "stream": "yes"},
    {"model": "m", "input": HELLO, "user": 7},
    {"model": "m", "input": HELLO, "instructions": ["x"]},
    {"model": "", "input": HELLO},
    {"model": 3, "input": HELLO},
    {"input": HELLO},
    {"model": "m", "input": HELLO, "prompt": {"id": "p"}},
    {"model": "m", "input": HELLO, "background": True},
]
# Refused by check_responses, but translated as they are by chat_request (never sent it).
CHECK_ONLY: list[dict[str, Any]] = [
    {"model": "m", "input": HELLO, "max_output_tokens": 0},
    {"model": "m", "input": HELLO, "max_output_tokens": -1, "stream": True},
    {"model": "m", "input": HELLO, "store": 1},
]


def _general_chat(payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(responses_translate, "plain_chat_request", lambda _payload: None)
        return _outcome(chat_request, payload)


def _general_check(payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(responses_input, "_plain", lambda _payload: False)
        return _outcome(check_responses, payload)


def _outcome(fn: Any, payload: dict[str, Any]) -> Any:
    """What `fn` gives, as bytes (key order counts), or the error it raises."""
    try:
        return orjson.dumps(fn(copy.deepcopy(payload)))
    except InvalidRequest as error:
        return (type(error), str(error), error.param)


@pytest.mark.parametrize("payload", TAKEN)
def test_plain_chat_request_is_the_general_translation(
    payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plain_chat_request(copy.deepcopy(payload)) is not None, "the fast path must take it"
    assert _outcome(chat_request, payload) == _general_chat(payload, monkeypatch)


@pytest.mark.parametrize("payload", HANDED_BACK)
def test_plain_chat_request_hands_back_the_rest(
    payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plain_chat_request(copy.deepcopy(payload)) is None
    assert _outcome(chat_request, payload) == _general_chat(payload, monkeypatch)


@pytest.mark.parametrize("payload", TAKEN + HANDED_BACK + CHECK_ONLY)
def test_check_responses_shortcut_agrees(
    payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _outcome(check_responses, payload) == _general_check(payload, monkeypatch)


def test_check_responses_shortcut_takes_the_usual_body() -> None:
    assert responses_input._plain({"model": "m", "input": HELLO, "max_output_tokens": 16})
    assert responses_input._plain({"model": "m", "input": "hi", "stream": True, "store": False})
    assert not responses_input._plain({"model": "m", "input": HELLO, "temperature": 0.2})


_TEXT = st.text(max_size=8)
_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2, 64), st.floats(0, 2), _TEXT)
_ITEM = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "x"])},
    optional={
        "type": st.sampled_from(["message", "function_call", None]),
        "content": st.one_of(_TEXT, st.none(), st.integers()),
        "id": _TEXT,
    },
)
_REQUEST = st.fixed_dictionaries(
    {"model": st.one_of(st.just("m"), st.just(""), st.integers())},
    optional={
        "input": st.one_of(_TEXT, st.lists(_ITEM, max_size=3), st.none()),
        "instructions": st.one_of(_TEXT, st.none(), st.integers()),
        "stream": _SCALAR,
        "store": _SCALAR,
        "max_output_tokens": _SCALAR,
        "temperature": _SCALAR,
        "top_p": _SCALAR,
        "user": _SCALAR,
        "metadata": st.one_of(st.none(), st.just({"a": "b"})),
        "seed": _SCALAR,
    },
)


@settings(max_examples=300, deadline=None)
@given(_REQUEST)
def test_fast_paths_agree_on_any_request(payload: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert _outcome(chat_request, payload) == _general_chat(payload, monkeypatch)
        assert _outcome(check_responses, payload) == _general_check(payload, monkeypatch)


_MESSAGES: list[dict[str, Any]] = [
    {"role": "assistant", "content": "Hello there."},
    {"role": "assistant", "content": "Hi", "refusal": None, "tool_calls": []},
    {"role": "assistant", "content": "Hi", "reasoning_content": None, "reasoning": ""},
    {"role": "assistant", "content": "Hi", "reasoning_content": "thinking"},
    {"role": "assistant", "content": "Hi", "reasoning": "thinking"},
    {"role": "assistant", "content": "Hi", "refusal": "no"},
    {"role": "assistant", "content": "", "refusal": None},
    {"role": "assistant", "content": None},
    {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    },
]
_REQUESTS: list[dict[str, Any]] = [
    {"model": "m", "input": HELLO, "store": False, "max_output_tokens": 16},
    {"model": "m", "input": "hi", "stream": True, "store": True},
    {"model": "m", "input": HELLO, "max_output_tokens": None},
    {"model": "m", "input": HELLO, "instructions": "Be brief.", "temperature": 0.5},
    {"model": "m", "input": HELLO, "tools": [{"type": "function", "name": "f"}], "user": "u"},
    {"model": "m", "input": HELLO, "text": {"verbosity": "low"}, "metadata": {"a": "b"}},
]


def _general_response(chat: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(responses_output, "_PLAIN_ECHO", frozenset())
        patch.setattr(responses_output, "_NO_TEXT", ())  # `in ()`: never the text fast path
        return _response(chat, request)


def _response(chat: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(responses_output, "new_id", lambda prefix: prefix + "1")
        return response_from_chat(
            copy.deepcopy(chat),
            copy.deepcopy(request),
            response_id="resp_1",
            created_at=7,
            completed_at=9,
        )


@pytest.mark.parametrize("finish", ["stop", "length", "content_filter", None])
@pytest.mark.parametrize("message", _MESSAGES)
@pytest.mark.parametrize("request_body", _REQUESTS)
def test_response_fast_paths_give_the_general_response(
    finish: str | None, message: dict[str, Any], request_body: dict[str, Any]
) -> None:
    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "served-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    fast = _response(chat, request_body)
    assert orjson.dumps(fast) == orjson.dumps(_general_response(chat, request_body))
    check("Response", fast)


def test_plain_skeleton_is_the_general_skeleton() -> None:
    for request_body in _REQUESTS:
        fast = response_skeleton(request_body, response_id="resp_1", created_at=7, model=None)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(responses_output, "_PLAIN_ECHO", frozenset())
            general = response_skeleton(
                request_body, response_id="resp_1", created_at=7, model=None
            )
        assert orjson.dumps(fast) == orjson.dumps(general)


def _chat_stream(finish: str, usage: bool, model: str = "served") -> list[bytes]:
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model}

    def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in ("Hel", 'lo "x"', ",\n", " there")]
    events.append(chunk({}, finish))
    if usage:
        counts = {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
        events.append({**head, "choices": [], "usage": counts})
    return [b"data: " + orjson.dumps(event) + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]


_TRICKY = 'a ,"output":[], and ,"status":"in_progress","error":null,"incomplete_details":null,'
_STREAM_REQUESTS: list[dict[str, Any]] = [
    {"model": "m", "input": HELLO, "store": False, "max_output_tokens": 16, "stream": True},
    {
        "model": "m",
        "input": HELLO,
        "instructions": _TRICKY,
        "tools": [{"type": "function", "name": "f", "description": _TRICKY}],
        "metadata": {"output": _TRICKY},
        "user": _TRICKY,
        "stream": True,
    },
    {"model": "m", "input": HELLO, "instructions": [{"role": "system", "content": _TRICKY}]},
]


def _terminal_bytes(request: dict[str, Any], blocks: list[bytes], *, general: bool) -> bytes:
    translator = StreamTranslator(request, response_id="resp_1", created_at=7)
    out = b""
    for block in blocks:
        out += translator.feed(block)
        if general:
            translator._opening = (b"", None)  # `_terminal`'s general way: a dict dumped
    out += translator.finish()
    assert translator.done
    last = out.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    data = last.split(b"\ndata: ", 1)[1]
    event = orjson.loads(data)
    check("Response", event["response"])
    return data


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("usage", [True, False])
@pytest.mark.parametrize("finish", ["stop", "length"])
@pytest.mark.parametrize("request_body", _STREAM_REQUESTS)
def test_terminal_event_from_the_opening_bytes_is_the_dumped_response(
    request_body: dict[str, Any], finish: str, usage: bool, split: bool
) -> None:
    blocks = _chat_stream(finish, usage)
    if not split:
        blocks = [b"".join(blocks)]  # one read: the fast path's runs
    with pytest.MonkeyPatch.context() as patch:
        for module in (responses_stream, responses_items):
            patch.setattr(module, "new_id", lambda prefix: prefix + "1")
        fast = _terminal_bytes(request_body, blocks, general=False)
        general = _terminal_bytes(request_body, blocks, general=True)
    assert fast == general


def test_terminal_event_after_the_model_changed() -> None:
    """A model named only after the response started: the opening bytes are not reused."""
    first = _chat_stream("stop", True, model="early")[:1]
    rest = _chat_stream("stop", True, model="late")[1:]
    translator = StreamTranslator(_STREAM_REQUESTS[0], response_id="resp_1", created_at=7)
    out = b"".join(translator.feed(block) for block in first + rest) + translator.finish()
    final = orjson.loads(out.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].split(b"\ndata: ", 1)[1])
    assert final["response"]["model"] == translator.response["model"]
    assert orjson.dumps(final["response"]) == orjson.dumps(translator.response)


_RESPONSE_USAGE = {
    "input_tokens": 4,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 9,
}
_TOOLS = [{"type": "function", "name": "f", "parameters": {"properties": {"usage": {}}}}]


def _terminal_data(response: dict[str, Any], sequence_first: bool) -> bytes:
    kind = "response.completed"
    if sequence_first:
        return orjson.dumps({"type": kind, "sequence_number": 9, "response": response})
    return orjson.dumps({"type": kind, "response": response, "sequence_number": 9})


@pytest.mark.parametrize("sequence_first", [False, True])
@pytest.mark.parametrize(
    "response",
    [
        {"id": "resp_1", "tools": _TOOLS, "usage": _RESPONSE_USAGE},
        {"id": "resp_1", "usage": _RESPONSE_USAGE, "tools": _TOOLS},
        {"id": "resp_1", "metadata": {"k": '"usage":{"x":1}}'}, "usage": _RESPONSE_USAGE},
        {"id": "resp_1", "usage": None},
        {"id": "resp_1", "text": {"format": {"type": "json_schema", "schema": {"usage": {}}}}},
        {"id": "resp_1", "usage": {"nested": {"sequence_number": 3}}},
    ],
)
def test_usage_at_end_is_the_parsed_responses_usage(
    response: dict[str, Any], sequence_first: bool
) -> None:
    """The native relay's shortcut to a terminal event's usage: the parsed Response's, or
    None when it cannot tell (the relay then parses the whole event)."""
    data = _terminal_data(response, sequence_first)
    found = usage_at_end(data)
    if found is not None:
        assert found == orjson.loads(data)["response"]["usage"]
    last = list(response)[-1]
    if last == "usage" and isinstance(response["usage"], dict):
        assert found == response["usage"], "the usual event's usage is found without a parse"
