"""gateway.providers.normalize: every provider's answer in exactly the OpenAI shape."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.providers import normalize
from routing.cost import Usage, usage_from_openai


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", "stop"),
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("MAX_TOKENS", "length"),
        ("tool_use", "tool_calls"),
        ("function_call", "tool_calls"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("refusal", "content_filter"),
        ("STOP", "stop"),
        ("something_new", "stop"),
        (None, None),
        ("", None),
    ],
)
def test_finish_reasons(raw: Any, expected: str | None) -> None:
    assert normalize.finish_reason(raw) == expected


def test_stop_with_tool_calls_becomes_tool_calls() -> None:
    assert normalize.finish_reason("stop", has_tool_calls=True) == "tool_calls"
    assert normalize.finish_reason("length", has_tool_calls=True) == "length"


def test_anthropic_usage_puts_cache_inside_prompt_tokens() -> None:
    raw = {
        "input_tokens": 100,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 500,
        "output_tokens": 40,
    }
    usage = normalize.usage(raw)
    assert usage == {
        "prompt_tokens": 630,
        "completion_tokens": 40,
        "total_tokens": 670,
        "prompt_tokens_details": {"cached_tokens": 500, "cache_write_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    # ...which the ledger splits back into the classes each is billed at, once each.
    assert usage_from_openai(usage) == Usage(100, 500, 30, 40, 0)


def test_litellm_usage_keeps_its_totals_and_drops_its_extras() -> None:
    raw = {
        "completion_tokens": 12,
        "prompt_tokens": 253,
        "total_tokens": 265,
        "completion_tokens_details": {"reasoning_tokens": 4, "text_tokens": 8},
        "prompt_tokens_details": {
            "audio_tokens": None,
            "cache_write_tokens": 50,
            "cached_tokens": 100,
            "text_tokens": 103,
            "cache_creation_tokens": 50,
        },
        "cache_creation_input_tokens": 50,
        "cache_read_input_tokens": 100,
        "iterations": None,
    }
    usage = normalize.usage(raw)
    assert usage == {
        "prompt_tokens": 253,
        "completion_tokens": 12,
        "total_tokens": 265,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 50},
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    assert usage_from_openai(usage) == Usage(103, 100, 50, 12, 4)


def test_usage_whose_prompt_leaves_the_cache_out_is_never_negative() -> None:
    usage = normalize.usage(
        {"prompt_tokens": 10, "completion_tokens": 1, "cache_read_input_tokens": 50}
    )
    assert usage is not None and usage["prompt_tokens"] == 50
    assert usage_from_openai(usage).input_uncached == 0


def test_usage_garbage() -> None:
    assert normalize.usage(None) is None
    assert normalize.usage("x") is None
    usage = normalize.usage(
        {
            "prompt_tokens": "7",
            "completion_tokens": -3,
            "completion_tokens_details": {"reasoning_tokens": 9},
        }
    )
    assert usage is not None
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (0, 0)
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0  # never above output


def litellm_response(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "created": 1700000000,
        "model": "claude-x",
        "object": "chat.completion",
        "system_fingerprint": None,
        "choices": [
            {
                "finish_reason": message.pop("finish_reason", "end_turn"),
                "index": 0,
                "message": {
                    "role": "assistant",
                    "function_call": None,
                    "provider_specific_fields": {"citations": None, "thinking_blocks": None},
                    **message,
                },
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def test_response_has_exactly_the_openai_fields() -> None:
    body = normalize.response(litellm_response(content="Hi there"))
    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi there", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }  # no `system_fingerprint: null`: the OpenAPI spec types it string
    with_fingerprint = {**litellm_response(content="Hi"), "system_fingerprint": "fp_1"}
    assert normalize.response(with_fingerprint)["system_fingerprint"] == "fp_1"


def test_response_tool_calls_have_string_arguments() -> None:
    body = normalize.response(
        litellm_response(
            content=None,
            finish_reason="tool_use",
            tool_calls=[
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": {"a": 1}},
                }
            ],
        )
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]


def test_content_parts_become_text() -> None:
    body = normalize.response(
        litellm_response(content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    )
    assert body["choices"][0]["message"]["content"] == "ab"


def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": "c1",
        "created": 1,
        "model": "m",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        "provider_specific_fields": None,
    }
    if usage is not None:
        raw["usage"] = usage
    return raw


def test_stream_chunks_drop_empty_ones_and_extras() -> None:
    assert normalize.chunks(chunk({"content": None, "role": None, "function_call": None})) == []
    [first] = normalize.chunks(chunk({"content": "", "role": "assistant", "audio": None}))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert set(first) == {"id", "object", "created", "model", "choices"}  # fingerprint was None
    [last] = normalize.chunks(chunk({}, finish="end_turn"))
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_usage_travels_alone_with_no_choices() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    out = normalize.chunks(chunk({"content": "end"}, finish="stop", usage=usage))
    assert [c["choices"] != [] for c in out] == [True, False]
    assert out[1]["usage"]["total_tokens"] == 5 and "usage" not in out[0]
    # litellm's own usage chunk carries an empty choice: only the usage survives.
    [only] = normalize.chunks(chunk({"content": None}, usage=usage))
    assert only["choices"] == [] and only["usage"]["prompt_tokens"] == 3


def test_streamed_tool_call_deltas() -> None:
    [start] = normalize.chunks(
        chunk(
            {
                "content": "",
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "index": 0,
                        "function": {"name": "f", "arguments": ""},
                    }
                ],
            }
        )
    )
    assert start["choices"][0]["delta"] == {
        "role": "assistant",
        "tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "f"}}],
    }
    [more] = normalize.chunks(
        chunk(
            {
                "tool_calls": [
                    {"id": None, "index": 0, "function": {"arguments": '{"a"', "name": None}}
                ]
            }
        )
    )
    assert more["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]
    }
    assert normalize.has_tool_calls(more)
    [end] = normalize.chunks(chunk({}, finish="stop"))
    normalize.fix_tool_finish(end, tool_call_seen=True)
    assert end["choices"][0]["finish_reason"] == "tool_calls"


OVERLOADED = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'


@pytest.mark.parametrize(
    ("status", "message", "kwargs", "client", "code"),
    [
        (
            529,
            '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            {},
            503,
            "overloaded",
        ),
        # litellm flattens 529 to 500 and 413 to 400; the error type says what it was.
        (
            500,
            "AnthropicError - " + OVERLOADED,
            {},
            503,
            "overloaded",
        ),
        (
            400,
            '{"type":"error","error":{"type":"request_too_large","message":"too big"}}',
            {},
            413,
            "request_too_large",
        ),
        (
            429,
            '{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
            {},
            429,
            "rate_limit_error",
        ),
        (
            400,
            '{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}',
            {},
            400,
            "INVALID_ARGUMENT",
        ),
        (
            None,
            '{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}',
            {},
            429,
            "RESOURCE_EXHAUSTED",
        ),
        (
            400,
            '{"message":"Too many requests"}',
            {"error_type": "ThrottlingException"},
            429,
            "ThrottlingException",
        ),
        (
            400,
            '{"type":"error","error":{"type":"invalid_request_error",'
            '"message":"prompt is too long: 300 tokens > 200 maximum"}}',
            {},
            400,
            "context_length_exceeded",
        ),
        (400, "anything", {"context_exceeded": True}, 400, "context_length_exceeded"),
        (500, "not json at all", {}, 500, None),
    ],
)
def test_provider_errors_become_openai_errors(
    status: int | None, message: str, kwargs: dict[str, Any], client: int, code: str | None
) -> None:
    got_status, body = normalize.error(status, message, **kwargs)
    assert got_status == client
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("rate_limit_error" if client == 429 else error["type"])


def test_provider_message_is_unwrapped() -> None:
    _, body = normalize.error(
        429,
        "RateLimitError: AnthropicException - "
        '{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
    )
    assert body["error"]["message"] == "slow down"
    assert body["error"]["type"] == "rate_limit_error"
