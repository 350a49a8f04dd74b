"""request_shape: what a chat request needs, measured in one cheap pass that never raises."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.shape import RequestShape, request_shape


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def system(content: Any, role: str = "system") -> dict[str, Any]:
    return {"role": role, "content": content}


def prefix_key_of(*contents: str) -> str:
    joined = "\x1e".join(contents).encode()
    return f"p:{zlib.crc32(joined):08x}:{len(joined)}"


def test_plain_text_request() -> None:
    s = request_shape({"model": "m", "messages": [user("hello")]}, "req-1")
    assert s == RequestShape(
        request_id="req-1",
        text_bytes=5,
        messages=1,
        images=0,
        max_output_tokens=None,
        needs=frozenset(),
        prefix_key=None,
        prefix_bytes=0,
        sticky_key=None,
    )


def test_text_is_measured_in_utf8_bytes() -> None:
    s = request_shape({"messages": [user("héllo"), user("日本"), user("🙂")]}, "r")
    assert s.text_bytes == 6 + 6 + 4
    assert s.messages == 3


def test_content_parts() -> None:
    content = [
        {"type": "text", "text": "abc"},
        {"type": "text", "text": "défg"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image", "source": {}},
        {"type": "text", "text": None},  # not text: nothing
        {"type": "text"},
        "a bare string part",  # not a part: ignored
        None,
        {"no": "type"},
    ]
    s = request_shape({"messages": [user(content)]}, "r")
    assert s.text_bytes == 3 + 5
    assert s.images == 2
    assert s.needs == frozenset({"vision"})
    assert s.messages == 1


@pytest.mark.parametrize("kind", ["input_audio", "audio"])
def test_audio_parts_need_audio(kind: str) -> None:
    s = request_shape({"messages": [user([{"type": kind, "input_audio": {"data": "..."}}])]}, "r")
    assert s.needs == frozenset({"audio"})
    assert s.images == 0
    assert s.text_bytes == 0


def test_images_across_messages_add_up() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    s = request_shape({"messages": [user([image, image]), user([image]), user("x")]}, "r")
    assert s.images == 3
    assert s.needs == frozenset({"vision"})


def test_tools_need_tools_and_count_as_text() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    plain = request_shape({"messages": [user("hi")]}, "r")
    s = request_shape({"messages": [user("hi")], "tools": [tool, tool]}, "r")
    assert s.needs == frozenset({"tools"})
    assert s.text_bytes == plain.text_bytes + 2 * len(repr(tool))
    not_tools: list[Any] = [[], {}, "tools", None, {"type": "function"}]
    for value in not_tools:
        assert request_shape({"messages": [], "tools": value}, "r").needs == frozenset()


def test_json_schema_response_format() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert request_shape({"response_format": fmt}, "r").needs == frozenset({"json_schema"})
    others: list[Any] = [{"type": "json_object"}, {"type": "text"}, "json_schema", None, []]
    for other in others:
        assert request_shape({"response_format": other}, "r").needs == frozenset()


def test_needs_combine() -> None:
    s = request_shape(
        {
            "messages": [user([{"type": "image_url"}, {"type": "input_audio"}])],
            "tools": [{"type": "function"}],
            "response_format": {"type": "json_schema"},
        },
        "r",
    )
    assert s.needs == frozenset({"tools", "json_schema", "vision", "audio"})


# -- the prompt-cache prefix -------------------------------------------------------------------


def test_prefix_is_the_leading_system_messages() -> None:
    s = request_shape({"messages": [system("You are terse."), user("hi")]}, "r")
    assert s.prefix_key == prefix_key_of("You are terse.")
    assert s.prefix_bytes == len("You are terse.")
    # The same system prompt with another question: the same prefix.
    other = request_shape({"messages": [system("You are terse."), user("bye now")]}, "r2")
    assert other.prefix_key == s.prefix_key
    changed = request_shape({"messages": [system("You are verbose."), user("hi")]}, "r")
    assert changed.prefix_key != s.prefix_key


def test_prefix_joins_several_system_and_developer_messages() -> None:
    s = request_shape(
        {"messages": [system("A"), system("Bé", role="developer"), system("C"), user("q")]}, "r"
    )
    assert s.prefix_key == prefix_key_of("A", "Bé", "C")
    assert s.prefix_bytes == 1 + 3 + 1
    # Splitting differently is a different prefix.
    merged = request_shape({"messages": [system("ABéC"), user("q")]}, "r")
    assert merged.prefix_key != s.prefix_key


def test_prefix_stops_at_the_first_other_message() -> None:
    base = request_shape({"messages": [system("S"), user("u"), system("late")]}, "r")
    assert base.prefix_key == prefix_key_of("S")
    assert base.prefix_bytes == 1
    assert base.text_bytes == 1 + 1 + 4
    later = request_shape({"messages": [system("S"), user("u"), system("other")]}, "r")
    assert later.prefix_key == base.prefix_key
    assert request_shape({"messages": [user("u"), system("S")]}, "r").prefix_key is None
    assistant_first = request_shape(
        {"messages": [{"role": "assistant", "content": "x"}, system("S")]}, "r"
    )
    assert assistant_first.prefix_key is None
    assert assistant_first.prefix_bytes == 0


def test_prefix_of_a_system_message_in_parts() -> None:
    parts = [{"type": "text", "text": "policy"}, {"type": "text", "text": " v2"}]
    s = request_shape({"messages": [system(parts), user("q")]}, "r")
    assert s.prefix_bytes == len("policy v2")
    assert s.prefix_key is not None and s.prefix_key.startswith("p:")
    again = request_shape({"messages": [system([dict(p) for p in parts]), user("z")]}, "r")
    assert again.prefix_key == s.prefix_key
    edited = [{"type": "text", "text": "policy"}, {"type": "text", "text": " v3"}]
    assert request_shape({"messages": [system(edited)]}, "r").prefix_key != s.prefix_key


def test_prompt_cache_key_wins_over_the_system_prefix() -> None:
    payload = {"messages": [system("S" * 100), user("u")], "prompt_cache_key": "tenant-7"}
    s = request_shape(payload, "r")
    assert s.prefix_key == "k:tenant-7"
    assert s.prefix_bytes == 100  # the cached share is still the system prefix
    no_system = request_shape({"messages": [user("u")], "prompt_cache_key": "t"}, "r")
    assert (no_system.prefix_key, no_system.prefix_bytes) == ("k:t", 0)


@pytest.mark.parametrize("bad", ["", None, 7, ["k"], {"k": 1}])
def test_unusable_prompt_cache_key_falls_back_to_the_system_prefix(bad: Any) -> None:
    s = request_shape({"messages": [system("S"), user("u")], "prompt_cache_key": bad}, "r")
    assert s.prefix_key == prefix_key_of("S")


def test_no_system_message_no_prefix() -> None:
    s = request_shape({"messages": [user("u"), {"role": "assistant", "content": "a"}]}, "r")
    assert (s.prefix_key, s.prefix_bytes) == (None, 0)


# -- sticky keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sticky", "payload", "header", "key"),
    [
        (None, {"user": "alice"}, "h", None),
        ("user", {"user": "alice"}, None, "alice"),
        ("user", {}, None, None),
        ("user", {"user": ""}, None, None),
        ("user", {"user": 42}, None, None),
        ("user", {"user": {"id": "alice"}}, None, None),
        ("prompt_cache_key", {"prompt_cache_key": "pk", "user": "alice"}, None, "pk"),
        ("prompt_cache_key", {"user": "alice"}, None, None),
        ("header:x-session", {"user": "alice"}, "s-1", "s-1"),
        ("header:x-session", {"user": "alice"}, None, None),
        ("header:x-session", {"user": "alice"}, "", None),
    ],
)
def test_sticky_key(sticky: str | None, payload: dict[str, Any], header: Any, key: Any) -> None:
    assert request_shape(payload, "r", sticky, header).sticky_key == key


# -- max output tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, None),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 50, "max_tokens": 100}, 50),
        ({"max_output_tokens": 70}, 70),
        ({"max_tokens": 100, "max_output_tokens": 70}, 100),
        ({"max_completion_tokens": 1, "max_tokens": 2, "max_output_tokens": 3}, 1),
        # unusable values are skipped, not trusted
        ({"max_completion_tokens": 0, "max_tokens": 100}, 100),
        ({"max_completion_tokens": -5, "max_tokens": 100}, 100),
        ({"max_completion_tokens": True, "max_tokens": 100}, 100),
        ({"max_completion_tokens": 50.0, "max_tokens": 100}, 100),
        ({"max_completion_tokens": "50", "max_tokens": 100}, 100),
        ({"max_completion_tokens": None, "max_tokens": None}, None),
        ({"max_tokens": False}, None),
    ],
)
def test_max_output_tokens_precedence(payload: dict[str, Any], expected: int | None) -> None:
    assert request_shape(payload, "r").max_output_tokens == expected


# -- garbage in, a shape out ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"messages": None},
        {"messages": "hello"},
        {"messages": {"role": "user", "content": "x"}},
        {"messages": 12},
        {"messages": [None, 1, "x", [], {}]},
        {"messages": [{"role": None, "content": None}]},
        {"messages": [{"role": ["system"], "content": 5}]},
        {"messages": [{"role": "system", "content": {"type": "text", "text": "x"}}]},
        {"messages": [{"role": "system", "content": [{"type": ["text"], "text": "x"}]}]},
        {"messages": [{"role": "user", "content": [{"type": {"a": 1}}, [1, 2], 3.5]}]},
        {"tools": "all", "response_format": ["json_schema"], "prompt_cache_key": 1},
        {"max_tokens": [1], "max_completion_tokens": {"n": 2}, "user": None},
    ],
)
def test_garbage_never_raises(payload: dict[str, Any]) -> None:
    s = request_shape(payload, "r", "user", None)
    assert s.text_bytes >= 0 and s.messages >= 0 and s.images >= 0
    assert s.sticky_key is None


def test_non_mapping_messages_are_not_counted_and_do_not_end_the_prefix() -> None:
    s = request_shape({"messages": [system("A"), None, "junk", system("B"), user("u")]}, "r")
    assert s.messages == 3
    assert s.prefix_key == prefix_key_of("A", "B")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
parts = st.dictionaries(
    st.sampled_from(["type", "text", "image_url"]),
    st.sampled_from(["text", "image_url", "image", "input_audio", "audio"]) | json_values,
    max_size=3,
)
messages = st.dictionaries(
    st.sampled_from(["role", "content", "name"]),
    st.sampled_from(["system", "developer", "user", "assistant"])
    | st.text(max_size=30)
    | st.lists(parts | json_values, max_size=4)
    | json_values,
    max_size=3,
)
payloads = st.dictionaries(
    st.sampled_from(
        [
            "messages",
            "tools",
            "response_format",
            "prompt_cache_key",
            "user",
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
        ]
    ),
    st.lists(messages | json_values, max_size=5) | json_values,
    max_size=6,
)


@given(payloads, st.sampled_from([None, "user", "prompt_cache_key", "header:x-s"]), json_values)
def test_arbitrary_json_never_raises(
    payload: dict[str, Any], sticky: str | None, header: Any
) -> None:
    s = request_shape(payload, "req", sticky, header if isinstance(header, str) else None)
    assert s.request_id == "req"
    assert s.text_bytes >= 0 and s.messages >= 0 and s.images >= 0
    assert 0 <= s.prefix_bytes <= s.text_bytes
    assert s.needs <= {"tools", "json_schema", "vision", "audio"}
    assert s.max_output_tokens is None or s.max_output_tokens > 0
    assert s.sticky_key is None or (isinstance(s.sticky_key, str) and s.sticky_key)
