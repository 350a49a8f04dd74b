"""Responses ⇄ Chat Completions translation (JSON): requests, answers, usage, the chat view."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response

from gateway.errors import InvalidRequest
from gateway.providers.responses_translate import (
    built_in_tools,
    chat_request,
    chat_view,
    response_from_chat,
    responses_usage,
)
from tests.openapi import CHAT, check

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"temp": {"type": "number"}},
    "required": ["temp"],
    "additionalProperties": False,
}


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "chat", "input": "hi", **fields}


# -- requests ---------------------------------------------------------------------------


def test_a_whole_agent_turn_becomes_the_chat_request_expected() -> None:
    payload = {
        "model": "agent-model",
        "instructions": "You are terse.",
        "previous_response_id": "resp_ignored",  # already resolved into `input` by the caller
        "input": [
            {"role": "developer", "content": "Answer in Celsius."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather where this photo was taken?"},
                    {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "…"}]},
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [
                    {
                        "type": "output_text",
                        "text": "Looking it up.",
                        "annotations": [],
                        "logprobs": [],
                    }
                ],
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_a",
                "name": "weather",
                "arguments": '{"city":"Paris"}',
                "status": "completed",
            },
            {
                "type": "function_call",
                "call_id": "call_b",
                "name": "weather",
                "arguments": '{"city":"Lyon"}',
            },
            {"type": "function_call_output", "call_id": "call_a", "output": '{"temp":21}'},
            {
                "type": "function_call_output",
                "call_id": "call_b",
                "output": [
                    {"type": "input_text", "text": "temp"},
                    {"type": "input_text", "text": "19"},
                ],
            },
        ],
        "tools": [
            {
                "type": "function",
                "name": "weather",
                "description": "Current weather",
                "parameters": WEATHER,
                "strict": True,
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "text": {
            "format": {
                "type": "json_schema",
                "name": "answer",
                "schema": ANSWER_SCHEMA,
                "strict": True,
                "description": "The reply",
            }
        },
        "reasoning": {"effort": "low", "summary": "auto"},
        "max_output_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-1",
        "metadata": {"workflow_id": "w1"},
        "store": True,
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "service_tier": "flex",
        "prompt_cache_key": "k",
        "stream": True,
    }
    original = copy.deepcopy(payload)
    body = chat_request(payload)
    check("CreateChatCompletionRequest", body)
    assert body == {
        "model": "agent-model",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "system", "content": "Answer in Celsius."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather where this photo was taken?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x.test/a.png", "detail": "low"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": "Looking it up.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Lyon"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": '{"temp":21}'},
            {"role": "tool", "tool_call_id": "call_b", "content": "temp\n19"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Current weather",
                    "parameters": WEATHER,
                    "strict": True,
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": ANSWER_SCHEMA,
                "strict": True,
                "description": "The reply",
            },
        },
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 300,
        "user": "u-1",
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert payload == original  # the caller's body is not touched


def test_string_input_and_the_short_message_form() -> None:
    assert chat_request(request()) == {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
    }
    body = chat_request(
        request(
            input=[
                {
                    "role": "system",
                    "content": [
                        {"type": "input_text", "text": "a"},
                        {"type": "input_text", "text": "b"},
                    ],
                },
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            ],
            instructions="",  # empty instructions add no message
            seed=7,
            stream=False,
        )
    )
    assert body == {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "a\nb"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "no"},
        ],
        "seed": 7,
    }


def test_function_calls_without_an_assistant_message_open_their_own_turn() -> None:
    body = chat_request(
        request(
            input=[
                {"role": "user", "content": "go"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "ok"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": ""},
                {"type": "function_call", "call_id": "c3", "name": "g", "arguments": "{}"},
            ]
        )
    )
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    assert [c["id"] for c in body["messages"][3]["tool_calls"]] == ["c2", "c3"]


def test_images_files_and_details() -> None:
    body = chat_request(
        request(
            input=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_image",
                            "image_url": "data:image/png;base64,AAAA",
                            "detail": "original",
                        },
                        {
                            "type": "input_image",
                            "image_url": "https://x.test/b.png",
                            "detail": "auto",
                        },
                        {
                            "type": "input_file",
                            "file_data": "data:application/pdf;base64,AA",
                            "filename": "a.pdf",
                        },
                    ],
                }
            ]
        )
    )
    check("CreateChatCompletionRequest", body)
    assert body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/b.png", "detail": "auto"}},
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,AA", "filename": "a.pdf"},
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected_choice", "names"),
    [
        ("none", "none", ["a", "b"]),
        ("required", "required", ["a", "b"]),
        (
            {"type": "function", "name": "b"},
            {"type": "function", "function": {"name": "b"}},
            ["a", "b"],
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "b"}],
            },
            "required",
            ["b"],
        ),
    ],
)
def test_tool_choice(choice: Any, expected_choice: Any, names: list[str]) -> None:
    tools = [{"type": "function", "name": n, "parameters": None} for n in ("a", "b")]
    body = chat_request(request(tools=tools, tool_choice=choice, parallel_tool_calls=False))
    assert body["tool_choice"] == expected_choice
    assert [t["function"]["name"] for t in body["tools"]] == names
    assert body["tools"][0]["function"] == {"name": names[0]}  # parameters null: omitted
    assert body["parallel_tool_calls"] is False


def test_tool_fields_go_only_with_tools() -> None:
    body = chat_request(request(tools=[], tool_choice="auto", parallel_tool_calls=True))
    assert body == {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "x", "schema": ANSWER_SCHEMA},
            {"type": "json_schema", "json_schema": {"name": "x", "schema": ANSWER_SCHEMA}},
        ),
    ],
)
def test_text_format(form: dict[str, Any], expected: dict[str, Any] | None) -> None:
    body = chat_request(request(text={"format": form, "verbosity": "low"}))
    assert body.get("response_format") == expected


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {
            "type": "computer_use_preview",
            "display_width": 1,
            "display_height": 1,
            "environment": "linux",
        },
        {"type": "image_generation"},
        {"type": "mcp", "server_label": "x", "server_url": "https://x.test"},
    ],
)
def test_a_built_in_tool_is_refused_by_name(tool: dict[str, Any]) -> None:
    payload = request(tools=[{"type": "function", "name": "f"}, tool])
    assert built_in_tools(payload) == {tool["type"]}
    with pytest.raises(InvalidRequest) as caught:
        chat_request(payload)
    assert caught.value.param == "tools"
    assert tool["type"] in caught.value.message
    assert caught.value.status == 400


def test_built_in_tools_of_plain_requests() -> None:
    assert built_in_tools(request()) == frozenset()
    assert built_in_tools(request(tools="nope")) == frozenset()
    assert built_in_tools(request(tools=[{"type": "function", "name": "f"}, 3])) == frozenset()


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (
            request(input=[{"role": "user", "content": "a"}] * 3 + [{"type": "web_search_call"}]),
            "input[3].type",
        ),
        (request(input=[{"type": "item_reference", "id": "msg_1"}]), "input[0].type"),
        (request(input=[{"content": "no role, no type"}]), "input[0].type"),
        (
            request(
                input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]
            ),
            "input[0].content[0].file_id",
        ),
        (
            request(input=[{"role": "user", "content": [{"type": "input_image"}]}]),
            "input[0].content[0].image_url",
        ),
        (
            request(input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]),
            "input[0].content[0].file_data",
        ),
        (
            request(input=[{"role": "user", "content": [{"type": "input_audio"}]}]),
            "input[0].content[0].type",
        ),
        (
            request(
                input=[
                    {
                        "role": "system",
                        "content": [{"type": "input_image", "image_url": "https://x"}],
                    }
                ]
            ),
            "input[0].content[0].type",
        ),
        (request(input=[{"role": "tool", "content": "x"}]), "input[0].role"),
        (request(input=[{"role": "user", "content": 3}]), "input[0].content"),
        (
            request(input=[{"role": "user", "content": [{"type": "input_text", "text": 3}]}]),
            "input[0].content[0].text",
        ),
        (
            request(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]),
            "input[0].call_id",
        ),
        (
            request(
                input=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]
            ),
            "input[0].arguments",
        ),
        (
            request(input=[{"type": "function_call_output", "call_id": "c", "output": 3}]),
            "input[0].output",
        ),
        (
            request(
                input=[
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": "u"}],
                    }
                ]
            ),
            "input[0].output[0]",
        ),
        (request(input=["text"]), "input[0]"),
        (request(input=None), "input"),
        (request(input=[]), "input"),
        (request(input=[{"type": "reasoning", "summary": []}]), "input"),
        (request(input=3), "input"),
        (request(model=None), "model"),
        (request(instructions=["x"]), "instructions"),
        (request(tools={"type": "function"}), "tools"),
        (request(tools=[{"type": "function"}]), "tools[0].name"),
        (request(tools=[{"type": "function", "name": "f", "parameters": "x"}]), "tools"),
        (
            request(tools=[{"type": "function", "name": "f"}], tool_choice={"type": "web_search"}),
            "tool_choice",
        ),
        (request(tools=[{"type": "function", "name": "f"}], tool_choice="always"), "tool_choice"),
        (request(parallel_tool_calls="yes"), "parallel_tool_calls"),
        (request(text="json"), "text"),
        (request(text={"format": {"type": "xml"}}), "text.format.type"),
        (request(text={"format": {"type": "json_schema", "name": "x"}}), "text.format.schema"),
        (request(text={"format": {"type": "json_schema", "schema": {}}}), "text.format.name"),
        (request(temperature="hot"), "temperature"),
        (request(top_p=True), "top_p"),
        (request(max_output_tokens=1.5), "max_output_tokens"),
        (request(user=1), "user"),
        (request(reasoning="high"), "reasoning"),
        (request(stream="yes"), "stream"),
        (request(prompt={"id": "pmpt_1"}), "prompt"),
        (request(conversation="conv_1"), "conversation"),
    ],
)
def test_wrong_or_untranslatable_requests_are_400s_naming_the_field(
    payload: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_request(payload)
    assert caught.value.param == param


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
_keys = st.sampled_from(
    [
        "type",
        "role",
        "content",
        "text",
        "call_id",
        "name",
        "arguments",
        "output",
        "image_url",
        "tools",
        "format",
    ]
)
_item = st.dictionaries(
    _keys, _json | st.sampled_from(["message", "user", "function_call", "input_text"]), max_size=5
)


@settings(max_examples=300, deadline=None)
@given(
    input_=st.one_of(_json, st.lists(_item, max_size=4)),
    tools=st.one_of(st.none(), _json, st.lists(_item, max_size=2)),
    text=st.one_of(st.none(), _json, st.fixed_dictionaries({"format": _item})),
    tool_choice=_json,
)
def test_any_body_is_translated_or_refused_with_a_400(
    input_: Any, tools: Any, text: Any, tool_choice: Any
) -> None:
    payload = request(input=input_, tools=tools, text=text, tool_choice=tool_choice)
    try:
        body = chat_request(payload)
    except InvalidRequest:
        return
    assert isinstance(body["messages"], list)


# -- answers ----------------------------------------------------------------------------


def chat_body(message: dict[str, Any], finish: str = "stop", **usage: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
    }
    body["usage"] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, **usage}
    return body


def as_response(chat: dict[str, Any], req: dict[str, Any] | None = None) -> dict[str, Any]:
    response = response_from_chat(chat, req or request(), response_id="resp_1", created_at=100)
    check("Response", response)
    Response.model_validate(response)  # the OpenAI SDK reads it too
    assert "output_text" not in response  # an SDK convenience, not on the wire
    return response


def test_a_text_answer() -> None:
    response = as_response(chat_body({"content": "Hello"}))
    assert response["object"] == "response"
    assert response["id"] == "resp_1"
    assert response["created_at"] == 100
    assert response["model"] == "upstream-model"
    assert response["status"] == "completed"
    assert response["error"] is None
    assert response["incomplete_details"] is None
    [message] = response["output"]
    assert message["id"].startswith("msg_")
    assert message == {
        "id": message["id"],
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}],
    }
    assert Response.model_validate(response).output_text == "Hello"
    # Echoed settings with the API's defaults.
    assert response["tools"] == []
    assert response["tool_choice"] == "auto"
    assert response["parallel_tool_calls"] is True
    assert response["metadata"] == {}
    assert response["text"] == {"format": {"type": "text"}}
    assert response["truncation"] == "disabled"
    assert response["store"] is True
    assert response["temperature"] is None and response["top_p"] is None
    assert response["max_output_tokens"] is None
    assert response["previous_response_id"] is None
    assert response["instructions"] is None
    assert response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }


def test_reasoning_text_and_tool_calls_in_order_with_the_request_echoed() -> None:
    req = request(
        instructions="Be brief.",
        tools=[{"type": "function", "name": "weather", "parameters": WEATHER}],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0.5,
        top_p=1,
        max_output_tokens=99,
        metadata={"k": "v"},
        previous_response_id="resp_0",
        reasoning={"effort": "high"},
        text={"format": {"type": "json_object"}},
        truncation="auto",
        store=False,
        user="u-2",
    )
    chat = chat_body(
        {
            "content": "Checking.",
            "reasoning": "The user wants weather.",  # vLLM's newer field name
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": {"city": "Rome"}},
                },
            ],
        },
        "tool_calls",
    )
    response = as_response(chat, req)
    assert [item["type"] for item in response["output"]] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    reasoning, _, first, second = response["output"]
    assert reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == [{"type": "summary_text", "text": "The user wants weather."}]
    assert first["id"].startswith("fc_") and first["id"] != second["id"]
    assert first == {
        "id": first["id"],
        "type": "function_call",
        "call_id": "call_1",
        "name": "weather",
        "arguments": '{"city":"Oslo"}',
        "status": "completed",
    }
    assert second["arguments"] == '{"city":"Rome"}'  # an object from a lenient server, as JSON text
    assert response["tools"] == [
        {"type": "function", "name": "weather", "parameters": WEATHER, "strict": None}
    ]
    for field in (
        "instructions",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "metadata",
        "previous_response_id",
        "reasoning",
        "text",
        "truncation",
        "user",
    ):
        assert response[field] == req[field], field
    assert response["max_output_tokens"] == 99
    assert response["store"] is False


def test_tool_calls_only_have_no_message_and_a_refusal_is_a_refusal_part() -> None:
    calls = as_response(
        chat_body(
            {
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            "tool_calls",
        )
    )
    assert [item["type"] for item in calls["output"]] == ["function_call"]
    refused = as_response(chat_body({"content": None, "refusal": "I can't help with that."}))
    assert refused["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help with that."}
    ]
    empty = as_response(chat_body({"content": ""}))
    assert empty["output"][0]["content"][0]["text"] == ""


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_cut_answers_are_incomplete(finish: str, reason: str) -> None:
    response = as_response(
        chat_body({"content": "Once upon", "reasoning_content": "story"}, finish)
    )
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": reason}
    assert response["output"][-1]["status"] == "incomplete"


def test_usage_names_details_cost_and_absence() -> None:
    assert responses_usage(None) is None
    assert responses_usage(
        {
            "prompt_tokens": 100,
            "completion_tokens": 40,
            "total_tokens": 140,
            "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10},
            "completion_tokens_details": {"reasoning_tokens": 30},
            "cost_usd": 0.0012,
        }
    ) == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10},
        "output_tokens": 40,
        "output_tokens_details": {"reasoning_tokens": 30},
        "total_tokens": 140,
        "cost_usd": 0.0012,
    }
    partial = responses_usage(
        {"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": None}
    )
    assert partial is not None
    assert partial["total_tokens"] == 7
    assert partial["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    chat = chat_body({"content": "x"})
    del chat["usage"]
    assert "usage" not in as_response(chat)


def test_completed_at_when_given() -> None:
    chat = chat_body({"content": "x"})
    response = response_from_chat(
        chat, request(), response_id="resp_1", created_at=100, completed_at=101
    )
    assert response["completed_at"] == 101
    check("Response", response)


# -- the chat view ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "finish"),
    [
        ({"content": "Hello", "refusal": None}, "stop"),
        ({"content": "Part", "refusal": None}, "length"),
        ({"content": None, "refusal": "No."}, "stop"),
        (
            {
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            "tool_calls",
        ),
        ({"content": "Hi", "refusal": None, "reasoning_content": "hmm"}, "stop"),
        ({"content": "", "refusal": None}, "content_filter"),
    ],
)
def test_chat_view_gives_back_the_chat_answer(message: dict[str, Any], finish: str) -> None:
    chat = chat_body(message, finish, prompt_tokens_details={"cached_tokens": 4}, cost_usd=0.5)
    view = chat_view(as_response(chat))
    check(CHAT, view)
    assert view["id"] == "resp_1"
    assert view["model"] == "upstream-model"
    assert view["choices"][0]["finish_reason"] == finish
    assert view["choices"][0]["message"] == {"role": "assistant", **message}
    assert view["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 0},
        "cost_usd": 0.5,
    }
