"""Anthropic Messages ↔ OpenAI chat translation: requests, answers, streams and errors."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.anthropic_reply import to_anthropic, tool_input, usage
from gateway.api.anthropic_stream import StreamTranslator
from gateway.api.anthropic_translate import error_body, error_type, to_openai
from gateway.errors import GatewayError

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def request(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "chat",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return base


# -- requests ---------------------------------------------------------------------------


def test_minimal_request_and_scalar_fields() -> None:
    payload = to_openai(
        request(
            system="Be brief.",
            stream=True,
            temperature=0.2,
            top_p=0.9,
            top_k=5,
            stop_sequences=["END", "STOP"],
            metadata={"user_id": "user-42"},
            service_tier="auto",  # no OpenAI equivalent: dropped
        )
    )
    assert payload == {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 64,
        "stream": True,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "stop": ["END", "STOP"],
        "user": "user-42",
    }


def test_system_blocks_keep_cache_control() -> None:
    cached = {"type": "text", "text": "long rules", "cache_control": {"type": "ephemeral"}}
    payload = to_openai(request(system=[{"type": "text", "text": "intro"}, cached]))
    assert payload["messages"][0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": "intro"},
            {"type": "text", "text": "long rules", "cache_control": {"type": "ephemeral"}},
        ],
    }
    plain = to_openai(request(system=[{"type": "text", "text": "only"}]))
    assert plain["messages"][0] == {"role": "system", "content": "only"}


def test_user_blocks_text_and_images() -> None:
    content = [
        {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
    ]
    payload = to_openai(request(messages=[{"role": "user", "content": content}]))
    assert payload["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            ],
        }
    ]


def test_documents_become_file_or_text_parts() -> None:
    content = [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
        },
    ]
    parts = to_openai(request(messages=[{"role": "user", "content": content}]))["messages"][0]
    assert parts["content"] == [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}},
        {"type": "text", "text": "notes"},
    ]


def test_tool_round_trip_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "21C"}],
                    "is_error": False,
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]
    out = to_openai(request(messages=messages))["messages"]
    assert out[1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "toolu_2",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
            },
        ],
    }
    # Tool messages first, in order, then what else the user said.
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "21C"},
        {"role": "user", "content": "Which is warmer?"},
    ]


def test_tool_only_turns_and_tool_result_images() -> None:
    messages = [
        {"role": "user", "content": "draw"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "draw", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [
                        {"type": "text", "text": "done"},
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    ],
                }
            ],
        },
    ]
    out = to_openai(request(messages=messages))["messages"]
    assert out[1]["content"] is None and out[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert out[2] == {"role": "tool", "tool_call_id": "t1", "content": "done"}
    # OpenAI tool messages are text only: the image follows as a user turn.
    assert out[3] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
    }


def test_tool_result_without_text_gives_no_user_message() -> None:
    messages = [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
    ]
    assert to_openai(request(messages=messages))["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": ""}
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
    ],
)
def test_tools_and_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    tools = [{"name": "weather", "description": "Current weather", "input_schema": WEATHER_SCHEMA}]
    payload = to_openai(request(tools=tools, tool_choice=choice))
    assert payload["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": WEATHER_SCHEMA,
                "description": "Current weather",
            },
        }
    ]
    assert payload["tool_choice"] == expected
    assert "parallel_tool_calls" not in payload


def test_disable_parallel_tool_use() -> None:
    tools = [{"name": "weather", "input_schema": WEATHER_SCHEMA}]
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    payload = to_openai(request(tools=tools, tool_choice=choice))
    assert payload["parallel_tool_calls"] is False
    # OpenAI rejects parallel_tool_calls without tools.
    assert "parallel_tool_calls" not in to_openai(request(tool_choice=choice))


def test_thinking_passes_through_with_thinking_blocks() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    signed = {"type": "thinking", "thinking": "hmm", "signature": "sig"}
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [signed, {"type": "text", "text": "a"}]},
        {"role": "user", "content": "more"},
    ]
    payload = to_openai(request(thinking=thinking, messages=messages))
    assert payload["thinking"] == thinking
    assert payload["messages"][1] == {
        "role": "assistant",
        "content": "a",
        "thinking_blocks": [signed],
    }


def test_count_tokens_style_request_needs_no_max_tokens() -> None:
    body = request()
    del body["max_tokens"]
    assert "max_tokens" not in to_openai(body, need_max_tokens=False)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": ["text"]}]}, "messages[0].content[0].type"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b"}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]},
            "messages[0].content[0].id",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "a", "name": "f", "input": [1]}],
                    }
                ]
            },
            "messages[0].content[0].input",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages[0].content[0].source",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "url", "url": "u"}}],
                    }
                ]
            },
            "messages[0].content[0].source",
        ),
        ({"system": 7}, "system"),
        ({"system": [{"type": "image"}]}, "system[0]"),
        ({"stream": "yes"}, "stream"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 1.5}, "top_k"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"metadata": "m"}, "metadata"),
        ({"thinking": True}, "thinking"),
        ({"tools": {"name": "x"}}, "tools"),
        ({"tools": [{"name": "x"}]}, "tools[0].input_schema"),
        ({"tools": [{"input_schema": {}}]}, "tools[0].name"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ],
)
def test_bad_requests_are_400_naming_the_field(change: dict[str, Any], param: str) -> None:
    body = request()
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    with pytest.raises(GatewayError) as info:
        to_openai(body)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.message.startswith(param.split("[")[0])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = st.sampled_from(
    [
        "model",
        "max_tokens",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "stop_sequences",
        "metadata",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_FIELDS, _JSON, max_size=6),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant", "x"]), "content": _JSON}
        ),
        max_size=3,
    ),
)
def test_arbitrary_bodies_give_a_payload_or_a_400(fields: dict[str, Any], messages: Any) -> None:
    body = {
        "model": "chat",
        "max_tokens": 5,
        "messages": messages or [{"role": "user", "content": "x"}],
    }
    body.update(fields)
    try:
        to_openai(body)
    except GatewayError as exc:
        assert exc.status == 400


# -- answers ----------------------------------------------------------------------------


def completion(
    message: dict[str, Any], finish: str | None = "stop", **usage_fields: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "model": "upstream-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage_fields or {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


def test_text_answer() -> None:
    message = to_anthropic(completion({"role": "assistant", "content": "Hello!"}), "chat", "req_1")
    assert message == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": "chat",  # the name the client asked for
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 4,
        },
    }


def test_usage_input_tokens_exclude_cache_reads_and_writes() -> None:
    openai_usage = {
        "prompt_tokens": 100,
        "completion_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 20},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    assert usage(openai_usage) == {
        "input_tokens": 50,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 30,
        "output_tokens": 9,  # reasoning stays inside, as Anthropic bills it
    }
    # litellm reports Anthropic upstreams' cache counts at the top level.
    litellm_style = {
        "prompt_tokens": 40,
        "completion_tokens": 1,
        "cache_read_input_tokens": 10,
        "cache_creation_input_tokens": 5,
    }
    assert usage(litellm_style)["input_tokens"] == 25
    assert usage(None) == {"input_tokens": 0, "output_tokens": 0}


def test_tool_calls_become_tool_use_blocks() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "weather", "arguments": "{broken"},
        },
    ]
    message = to_anthropic(
        completion({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"),
        "chat",
        "req_1",
    )
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"_raw": "{broken"}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("", {}),
        (None, {}),
        ("[1, 2]", {"_raw": "[1, 2]"}),
        ({"a": 1}, {"a": 1}),
        ('{"a": 1}', {"a": 1}),
    ],
)
def test_tool_input_parsing(arguments: Any, expected: dict[str, Any]) -> None:
    assert tool_input(arguments) == expected


@pytest.mark.parametrize(
    ("finish", "tools", "refusal", "expected"),
    [
        ("stop", False, None, "end_turn"),
        ("length", False, None, "max_tokens"),
        ("tool_calls", True, None, "tool_use"),
        ("content_filter", False, None, "refusal"),
        (None, True, None, "tool_use"),
        (None, False, None, "end_turn"),
        ("stop", False, "I can't help with that.", "refusal"),
    ],
)
def test_stop_reasons(finish: str | None, tools: bool, refusal: str | None, expected: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x", "refusal": refusal}
    if tools:
        message["tool_calls"] = [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]
    assert to_anthropic(completion(message, finish), "chat", "r")["stop_reason"] == expected


def test_reasoning_comes_first_as_thinking() -> None:
    message = {"role": "assistant", "content": "42", "reasoning_content": "let me think"}
    content = to_anthropic(completion(message), "chat", "r")["content"]
    assert content == [
        {"type": "thinking", "thinking": "let me think", "signature": ""},
        {"type": "text", "text": "42"},
    ]


def test_empty_answer_still_has_a_text_block_and_ids_fall_back() -> None:
    body = completion({"role": "assistant", "content": ""})
    del body["id"]
    message = to_anthropic(body, "chat", "req_9")
    assert message["content"] == [{"type": "text", "text": ""}]
    assert message["id"] == "msg_req_9"


@pytest.mark.parametrize("body", [{}, {"choices": []}, {"choices": [{"index": 0}]}, [1]])
def test_unusable_answer_is_502(body: Any) -> None:
    with pytest.raises(GatewayError) as info:
        to_anthropic(body, "chat", "r")
    assert info.value.status == 502


# -- streams ----------------------------------------------------------------------------


def sse(*chunks: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n\n"
        for c in chunks
    )


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": None,
    }


USAGE_CHUNK = {
    "id": "chatcmpl-s1",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {
        "prompt_tokens": 20,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 4},
    },
}


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data[6:])
        assert payload["type"] == name[7:]
        out.append((name[7:], payload))
    return out


def test_text_stream() -> None:
    translator = StreamTranslator("chat", "req_1")
    raw = translator.feed(
        sse(
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
        )
    )
    raw += translator.feed(sse(chunk({}, "stop"), USAGE_CHUNK, "[DONE]"))
    assert translator.ended
    got = events(raw)
    assert [name for name, _ in got] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = got[0][1]["message"]
    assert start["id"] == "msg_s1" and start["model"] == "chat" and start["content"] == []
    assert got[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert "".join(p["delta"]["text"] for n, p in got if n == "content_block_delta") == "Hello"
    assert got[5][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 8,
            "cache_creation_input_tokens": 4,
            "cache_read_input_tokens": 8,
            "output_tokens": 3,
        },
    }


def test_tool_call_arguments_split_across_chunks() -> None:
    translator = StreamTranslator("chat", "req_1")
    first = {
        "index": 0,
        "id": "call_A",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    pieces = ['{"ci', 'ty": "Pa', 'ris"}']
    raw = translator.feed(sse(chunk({"role": "assistant", "content": "Let me check."})))
    raw += translator.feed(sse(chunk({"tool_calls": [first]})))
    for piece in pieces:
        raw += translator.feed(
            sse(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        )
    raw += translator.feed(sse(chunk({}, "tool_calls"), USAGE_CHUNK, "[DONE]"))
    got = events(raw)
    names = [n for n, _ in got]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",  # the text block closes before the tool block opens
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert got[3][1]["index"] == 0
    assert got[4][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_A", "name": "weather", "input": {}},
    }
    partial = "".join(p["delta"]["partial_json"] for _, p in got[5:8])
    assert all(p["index"] == 1 and p["delta"]["type"] == "input_json_delta" for _, p in got[5:8])
    assert json.loads(partial) == {"city": "Paris"}
    assert got[9][1]["delta"]["stop_reason"] == "tool_use"


def test_parallel_tool_calls_get_their_own_blocks() -> None:
    translator = StreamTranslator("chat", "req_1")
    raw = b""
    for i, city in enumerate(["Paris", "Rome"]):
        head = {"index": i, "id": f"call_{i}", "function": {"name": "weather", "arguments": ""}}
        raw += translator.feed(sse(chunk({"tool_calls": [head]})))
        args = {"index": i, "function": {"arguments": json.dumps({"city": city})}}
        raw += translator.feed(sse(chunk({"tool_calls": [args]})))
    raw += translator.feed(sse(chunk({}, "tool_calls"), USAGE_CHUNK, "[DONE]"))
    starts = [p for n, p in events(raw) if n == "content_block_start"]
    assert [(s["index"], s["content_block"]["id"]) for s in starts] == [
        (0, "call_0"),
        (1, "call_1"),
    ]


def test_reasoning_stream_becomes_thinking_block() -> None:
    translator = StreamTranslator("chat", "req_1")
    raw = translator.feed(
        sse(
            chunk({"reasoning_content": "Hmm"}),
            chunk(
                {"thinking_blocks": [{"type": "thinking", "thinking": "Hmm", "signature": "sig1"}]}
            ),
            chunk({"content": "42"}, "stop"),
            USAGE_CHUNK,
            "[DONE]",
        )
    )
    got = events(raw)
    assert got[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert got[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Hmm"}
    assert got[3][1]["delta"] == {"type": "signature_delta", "signature": "sig1"}
    assert got[4][0] == "content_block_stop" and got[5][1]["content_block"]["type"] == "text"


def test_arbitrary_block_boundaries_give_the_same_events() -> None:
    whole = sse(chunk({"content": "a"}), chunk({"content": "b"}, "stop"), USAGE_CHUNK, "[DONE]")
    expected = StreamTranslator("chat", "r").feed(whole)
    split = StreamTranslator("chat", "r")
    raw = b"".join(split.feed(whole[i : i + 7]) for i in range(0, len(whole), 7))
    assert raw == expected and split.ended


def test_error_event_mid_stream() -> None:
    translator = StreamTranslator("chat", "req_1")
    raw = translator.feed(sse(chunk({"content": "partial"})))
    error = {
        "error": {"message": "upstream died", "type": "server_error", "param": None, "code": None}
    }
    raw += translator.feed(sse(error))
    assert translator.ended
    got = events(raw)
    assert got[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "upstream died"}},
    )
    assert "message_stop" not in [n for n, _ in got]
    assert translator.feed(sse(chunk({"content": "late"}), "[DONE]")) == b""


def test_stream_cut_without_done_ends_in_an_error() -> None:
    translator = StreamTranslator("chat", "req_1")
    translator.feed(sse(chunk({"content": "partial"})))
    assert not translator.ended
    tail = events(translator.finish())
    assert tail[-1][0] == "error" and translator.ended


def test_malformed_event_ends_in_an_error() -> None:
    translator = StreamTranslator("chat", "req_1")
    got = events(translator.feed(b'data: {"id": "x", "choices": [{\n\n'))
    assert got[-1][0] == "error" and translator.ended


def test_empty_stream_still_closes_properly() -> None:
    got = events(StreamTranslator("chat", "req_1").feed(sse(USAGE_CHUNK, "[DONE]")))
    assert [n for n, _ in got] == [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


_DELTA = st.fixed_dictionaries(
    {},
    optional={
        "content": _JSON,
        "refusal": _JSON,
        "reasoning_content": _JSON,
        "thinking_blocks": _JSON,
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": _JSON,
                    "id": _JSON,
                    "function": st.fixed_dictionaries(
                        {}, optional={"name": _JSON, "arguments": _JSON}
                    )
                    | _JSON,
                },
            )
            | _JSON,
            max_size=2,
        )
        | _JSON,
    },
)
_CHUNK = st.fixed_dictionaries(
    {
        "id": _JSON,
        "choices": st.lists(
            st.fixed_dictionaries({"index": _JSON, "delta": _DELTA, "finish_reason": _JSON}),
            max_size=2,
        )
        | _JSON,
    },
    optional={"usage": _JSON, "error": _JSON},
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_CHUNK, max_size=6), st.booleans())
def test_arbitrary_chunks_never_break_the_translator(chunks: list[Any], done: bool) -> None:
    """Whatever an upstream streams, the client gets events, never an exception."""
    translator = StreamTranslator("chat", "r")
    raw = b"".join(translator.feed(sse(c)) for c in chunks)
    raw += translator.feed(sse("[DONE]")) if done else translator.finish()
    assert translator.ended
    names = [n for n, _ in events(raw)]
    assert names[-1] in ("message_stop", "error")


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_types_by_status(status: int, kind: str) -> None:
    assert error_type(status) == kind


def test_error_body_shape() -> None:
    error = GatewayError(
        429, "Slow down.", error_type="rate_limit_error", code="rate_limit_exceeded"
    )
    assert orjson.loads(error_body(error)) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Slow down."},
    }
