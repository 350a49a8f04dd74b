"""Input-token estimates: pinned tiktoken counts, the byte formula, and no crash on junk."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ledger import tokens
from gateway.ledger.tokens import encoding_name_for, estimate_input_tokens

CHAT = "chat/completions"


def chat(*contents: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": c} for c in contents], **extra}


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("openai/gpt-oss-120b", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002::latency=5", "cl100k_base"),
        ("deepseek-ai/DeepSeek-V3", None),
        ("meta-llama/Llama-3.3-70B-Instruct", None),
        ("claude-sonnet-4-5", None),
        ("o2-model", None),
        ("oops", None),
    ],
)
def test_encoding_choice(model: str, encoding: str | None) -> None:
    assert encoding_name_for(model) == encoding


def test_bundled_encodings_load_offline() -> None:
    tokens.preload_encodings()
    for name in ("cl100k_base", "o200k_base"):
        enc = tokens._encoding(name)
        assert enc is not None, f"{name} is not loadable from litellm's bundled cache"
        assert len(enc.encode_ordinary("hello world")) == 2


def test_tiktoken_counts_are_pinned() -> None:
    # 3 per message + "user" (1) + content + 3 reply priming.
    assert estimate_input_tokens(CHAT, chat("hello world"), "gpt-4o") == 3 + 1 + 2 + 3
    sentence = "Farebox reconciles the ledger against provider invoices."
    assert estimate_input_tokens(CHAT, chat(sentence), "gpt-4o") == 3 + 1 + 10 + 3
    assert estimate_input_tokens(CHAT, chat(sentence), "gpt-4") == 3 + 1 + 11 + 3
    assert estimate_input_tokens(CHAT, chat("日本語のテキスト"), "gpt-4o") == 3 + 1 + 6 + 3
    # A name costs its tokens plus one; text parts count, images a fixed 85.
    named = {"messages": [{"role": "user", "name": "bob", "content": "hello world"}]}
    assert estimate_input_tokens(CHAT, named, "gpt-4o") == 9 + 1 + 1
    parts = [{"type": "text", "text": "hello world"}, {"type": "image_url", "image_url": {}}]
    assert estimate_input_tokens(CHAT, chat(parts), "gpt-4o") == 9 + 85
    # Special-token text is counted as text, not rejected.
    assert estimate_input_tokens(CHAT, chat("<|endoftext|>"), "gpt-4o") > 3 + 1 + 3


def test_embeddings_and_completions_have_no_message_overhead() -> None:
    assert (
        estimate_input_tokens("embeddings", {"input": "hello world"}, "text-embedding-3-small") == 2
    )
    arrays = {"input": [[1, 2, 3], [4, 5]]}
    assert estimate_input_tokens("embeddings", arrays, "text-embedding-3-small") == 5
    assert estimate_input_tokens("/v1/completions", {"prompt": [7, 8, 9]}, "gpt-3.5-turbo") == 3
    two = {"prompt": ["hello world", "hello world"]}
    assert estimate_input_tokens("completions", two, "gpt-3.5-turbo-instruct") == 4


def test_tool_definitions_and_calls_are_counted() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    base = estimate_input_tokens(CHAT, chat("hi"), "gpt-4o")
    assert estimate_input_tokens(CHAT, chat("hi", tools=tools), "gpt-4o") > base + 5
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"city": "Paris"}'}}],
    }
    with_call = estimate_input_tokens(CHAT, {"messages": [call]}, "gpt-4o")
    assert with_call > estimate_input_tokens(CHAT, {"messages": [{"role": "assistant"}]}, "gpt-4o")


def test_approximation_formula() -> None:
    model = "deepseek-ai/DeepSeek-V3"
    # ceil(11 bytes / 4) + 3 per message
    assert estimate_input_tokens(CHAT, chat("hello world"), model) == 3 + 3
    # "日本語" is 9 UTF-8 bytes; two messages → ceil((9 + 11) / 4) + 6
    assert estimate_input_tokens(CHAT, chat("日本語", "hello world"), model) == 5 + 6
    assert estimate_input_tokens(CHAT, chat("x" * 4001), model) == 1001 + 3
    # Anthropic-style system prompt and content blocks.
    body = {"system": "abcd" * 10, "messages": [{"role": "user", "content": [{"text": "abcd"}]}]}
    assert estimate_input_tokens("messages", body, "claude-sonnet-4-5") == 11 + 3
    assert estimate_input_tokens("embeddings", {"input": ["abcd", "abcdefgh"]}, "BAAI/bge") == 3
    assert estimate_input_tokens("embeddings", {"input": [[1, 2], [3]]}, "BAAI/bge") == 3
    tools = [{"a": 1}]  # compact JSON '[{"a":1}]' is 9 bytes
    assert estimate_input_tokens(CHAT, chat("abcd", tools=tools), model) == math.ceil(13 / 4) + 3


def test_responses_api_input_items() -> None:
    body = {
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hello world"}]},
            {"type": "function_call_output", "call_id": "c", "output": "sunny"},
        ],
    }
    # ceil((8 + 11 + 5) / 4) + 2 messages × 3
    assert estimate_input_tokens("responses", body, "some/model") == 6 + 6
    assert estimate_input_tokens("responses", {"input": "hello world"}, "some/model") == 3


def test_never_below_one() -> None:
    assert estimate_input_tokens("embeddings", {}, "gpt-4o") == 1
    assert estimate_input_tokens(CHAT, {"messages": []}, "x") == 1
    assert estimate_input_tokens(CHAT, "not a dict", "gpt-4o") == 1  # type: ignore[arg-type]
    assert estimate_input_tokens(CHAT, {"messages": "nope"}, None) == 1  # type: ignore[arg-type]


@pytest.mark.serial  # CPU timing: not beside another test worker
def test_long_texts_are_fast_and_close_to_exact() -> None:
    enc = tokens._encoding("o200k_base")
    assert enc is not None
    text = "The quick brown fox jumps over the lazy dog; 日本語のテキスト 1234. " * 6000
    exact = len(enc.encode_ordinary(text)) + 3 + 1 + 3
    started = time.perf_counter()
    estimate = estimate_input_tokens(CHAT, chat(text), "gpt-4o")
    assert abs(estimate - exact) / exact < 0.02
    # A megabyte without spaces is superlinear for BPE when done in one piece (≈0.5 s).
    blob = estimate_input_tokens(CHAT, chat("x" * 1_000_000), "gpt-4o")
    assert time.perf_counter() - started < 0.4
    assert abs(blob - 125_007) < 100


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_tree = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["role", "content", "type", "text", "name", "input", "tool_calls"])
            | st.text(max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=25,
)
payload_keys = st.sampled_from(
    ["messages", "input", "prompt", "system", "instructions", "tools", "functions", "suffix"]
)


@settings(max_examples=300, deadline=None)
@given(
    endpoint=st.sampled_from([CHAT, "completions", "embeddings", "responses", "messages", "??"]),
    payload=st.dictionaries(payload_keys, json_tree, max_size=4),
    model=st.sampled_from(["gpt-4o", "gpt-4", "text-embedding-3-small", "llama", ""]),
)
def test_never_raises_on_junk(endpoint: str, payload: dict[str, Any], model: str) -> None:
    result = estimate_input_tokens(endpoint, payload, model)
    assert isinstance(result, int) and result >= 1


def test_lone_surrogates_do_not_break_either_path() -> None:
    for model in ("gpt-4o", "llama"):
        assert estimate_input_tokens(CHAT, chat("a\ud800b"), model) >= 4


def test_one_odd_part_does_not_wipe_out_the_rest_of_the_count() -> None:
    # An unhashable `type` must be skipped, not abort the whole estimate down to 1.
    parts = [{"type": ["image_url"], "text": "hello world"}, {"type": {}}, "hello world"]
    assert estimate_input_tokens(CHAT, chat(parts), "gpt-4o") == 3 + 1 + 2 + 2 + 3
    assert estimate_input_tokens(CHAT, chat(parts), "llama") == math.ceil(22 / 4) + 3
