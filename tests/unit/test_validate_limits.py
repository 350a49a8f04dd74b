"""JSON structure limits on request bodies: depth, array items, object members."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from gateway.api.validate import parse_object
from gateway.config.schema import ServerConfig
from gateway.errors import GatewayError


@dataclass(frozen=True)
class Limits:
    max_json_depth: int = 8
    max_array_items: int = 5
    max_object_keys: int = 5


def nested(depth: int) -> Any:
    """A value that makes a body `depth` levels deep (the body object is level 1)."""
    value: Any = "x"
    for i in range(depth - 1):
        value = [value] if i % 2 else {"k": value}
    return value


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "chat", **fields})


def reject(raw: bytes, limits: Limits = Limits()) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        parse_object(raw, limits)
    assert info.value.status == 400
    return info.value


def test_depth_at_the_limit_passes_and_one_more_is_400() -> None:
    assert parse_object(body(deep=nested(8)), Limits())
    error = reject(body(deep=nested(9)))
    assert error.param == "deep" and error.code == "json_too_deep"
    assert "nested too deeply" in error.message and "8 levels" in error.message


def test_empty_containers_count_as_levels() -> None:
    value: Any = []
    for _ in range(7):
        value = [value]
    reject(body(deep=value))  # 1 (body) + 8 arrays


def test_deeper_than_orjson_can_parse_is_400_not_invalid_json() -> None:
    raw = b'{"model": "chat", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    error = reject(raw, Limits(max_json_depth=64))
    assert error.code == "json_too_deep"


def test_long_arrays_and_big_objects() -> None:
    assert parse_object(body(items=[1, 2, 3, 4, 5]), Limits())
    error = reject(body(items=[1, 2, 3, 4, 5, 6]))
    assert error.param == "items" and error.code == "json_too_large"
    error = reject(body(meta={str(i): i for i in range(6)}))
    assert error.param == "meta"
    error = reject(orjson.dumps({str(i): i for i in range(6)}))
    assert error.param is None
    # Deep inside a message.
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}] * 6}]
    assert reject(body(messages=messages)).param == "messages"


def test_commas_and_brackets_inside_strings_do_not_reject() -> None:
    text = "[{" * 50 + "," * 50
    assert parse_object(body(messages=[{"role": "user", "content": text}]), Limits())


def test_large_bodies_are_walked_not_scanned() -> None:
    pad = "p" * 5000  # past SCAN_BYTES: the walk decides
    assert parse_object(body(pad=pad, deep=nested(8)), Limits())
    assert reject(body(pad=pad, deep=nested(9))).param == "deep"
    assert reject(body(pad=pad, items=list(range(6)))).param == "items"


def test_without_limits_nothing_is_walked() -> None:
    assert parse_object(body(deep=nested(60)))


def test_server_config_defaults_are_generous_for_real_bodies() -> None:
    server = ServerConfig()
    assert (server.max_json_depth, server.max_array_items, server.max_object_keys) == (
        64,
        10_000,
        10_000,
    )
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "array", "items": {"type": "object"}}},
            },
        },
    }
    raw = body(
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}] * 200,
        tools=[tool] * 50,
    )
    assert parse_object(raw, server)
    reject(body(deep=nested(65)), Limits(max_json_depth=64, max_array_items=10, max_object_keys=10))
