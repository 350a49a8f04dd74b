"""The provider simulator, driven over real HTTP with the real OpenAI SDK and aiohttp."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from multidict import CIMultiDict

from tests.simulator import start_simulator
from tests.waiting import wait_until

USER = [{"role": "user", "content": "Say hello"}]  # 9 chars -> ceil(9/4) + 3 = 6 tokens
USER_TOKENS = 6


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    url, stop = start_simulator()
    yield url
    stop()


@pytest.fixture(autouse=True)
def _reset(base_url: str) -> None:
    status, _, _ = http("POST", f"{base_url}/_reset")
    assert status == 200


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0, timeout=5)


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    """One plain request with aiohttp; returns status, headers (case-insensitive), body."""

    async def go() -> tuple[int, CIMultiDict[str], bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, url, json=body, headers=headers) as resp,
        ):
            return resp.status, CIMultiDict(resp.headers), await resp.read()

    return asyncio.run(go())


def stats(base_url: str) -> dict[str, Any]:
    status, _, raw = http("GET", f"{base_url}/_stats")
    assert status == 200
    result: dict[str, Any] = json.loads(raw)
    return result


def sse_data(raw: bytes) -> list[str]:
    return [line[len("data: ") :] for line in raw.decode().split("\n") if line.startswith("data: ")]


def anthropic_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# --- OpenAI chat, non-stream --------------------------------------------------------


def test_chat_completion_shape_and_usage(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},  # 14 chars
        {"role": "user", "content": [{"type": "text", "text": "Say hello"}]},  # 9 chars
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="sim-small::tokens=5", messages=messages
    )
    assert raw.headers["x-request-id"].startswith("req_")
    resp = raw.parse()
    assert resp.id.startswith("chatcmpl-")
    assert resp.object == "chat.completion"
    assert resp.model == "sim-small::tokens=5"
    assert resp.system_fingerprint and resp.service_tier
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "tok0 tok1 tok2 tok3 tok4"
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == math.ceil(23 / 4) + 3 * 2
    assert resp.usage.completion_tokens == 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 5


def test_default_tokens_and_max_tokens_limit(client: openai.OpenAI) -> None:
    default = client.chat.completions.create(model="sim-small", messages=USER)
    assert default.usage is not None and default.usage.completion_tokens == 16
    assert default.choices[0].finish_reason == "stop"
    capped = client.chat.completions.create(
        model="sim-small", messages=USER, max_completion_tokens=3
    )
    assert capped.choices[0].message.content == "tok0 tok1 tok2"
    assert capped.choices[0].finish_reason == "length"
    legacy_limit = client.chat.completions.create(
        model="sim-small::tokens=50", messages=USER, max_tokens=7
    )
    assert legacy_limit.usage is not None and legacy_limit.usage.completion_tokens == 7
    assert legacy_limit.choices[0].finish_reason == "length"
    under = client.chat.completions.create(
        model="sim-small::tokens=2", messages=USER, max_tokens=10
    )
    assert under.choices[0].finish_reason == "stop"


def test_cache_and_reasoning_details(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="sim-small::tokens=4,cached=4,cache_write=1,reasoning=3", messages=USER
    )
    usage = resp.usage
    assert usage is not None
    assert usage.prompt_tokens == USER_TOKENS
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert usage.prompt_tokens_details.cache_write_tokens == 1
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert usage.completion_tokens == 7  # 4 visible + 3 reasoning
    # cached is clamped to the prompt
    clamped = client.chat.completions.create(model="sim-small::cached=999", messages=USER)
    assert clamped.usage is not None and clamped.usage.prompt_tokens_details is not None
    assert clamped.usage.prompt_tokens_details.cached_tokens == USER_TOKENS


def test_n_choices(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="sim-small::tokens=3", messages=USER, n=3)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert all(c.message.content == "tok0 tok1 tok2" for c in resp.choices)
    assert resp.usage is not None and resp.usage.completion_tokens == 9


def test_header_overrides_model_suffix(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="sim-small::tokens=3",
        messages=USER,
        extra_headers={"x-mock-behavior": "tokens=7"},
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 7


def test_unknown_directive_and_bad_value_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad_key:
        client.chat.completions.create(model="sim-small::latncy=5", messages=USER)
    assert "latncy" in str(bad_key.value)
    with pytest.raises(openai.BadRequestError) as bad_value:
        client.chat.completions.create(
            model="sim-small", messages=USER, extra_headers={"x-mock-behavior": "tokens=many"}
        )
    assert "tokens" in str(bad_value.value)


def test_malformed_request_json_is_400(base_url: str) -> None:
    async def go() -> tuple[int, dict[str, Any], str]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base_url}/v1/chat/completions", data=b'{"model": "x",') as resp,
        ):
            return resp.status, await resp.json(), resp.headers["x-request-id"]

    status, body, request_id = asyncio.run(go())
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert request_id.startswith("req_")


# --- tools and structured output ----------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 2},
                "where": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}, "tags": {"type": "array"}},
                    "required": ["lat", "tags"],
                },
                "optional": {"type": "string"},
            },
            "required": ["city", "unit", "days", "where"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}},
            "required": ["tz"],
        },
    },
}


def _check_weather_args(arguments: str) -> None:
    args = json.loads(arguments)
    assert set(args) == {"city", "unit", "days", "where"}
    assert isinstance(args["city"], str)
    assert args["unit"] in ("celsius", "fahrenheit")
    assert isinstance(args["days"], int) and args["days"] >= 2
    assert isinstance(args["where"]["lat"], float | int)
    assert isinstance(args["where"]["tags"], list)


def test_tool_call_from_schema(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="sim-small", messages=USER, tools=[WEATHER, CLOCK])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    _check_weather_args(call.function.arguments)

    named = client.chat.completions.create(
        model="sim-small",
        messages=USER,
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert named.choices[0].message.tool_calls is not None
    assert named.choices[0].message.tool_calls[0].function.name == "get_time"

    none = client.chat.completions.create(
        model="sim-small::tokens=2", messages=USER, tools=[WEATHER], tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content == "tok0 tok1"


def test_tool_call_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="sim-small", messages=USER, tools=[WEATHER], stream=True
    )
    chunks = list(stream)
    first = chunks[0].choices[0].delta.tool_calls
    assert first is not None
    assert first[0].index == 0 and first[0].id and first[0].id.startswith("call_")
    assert first[0].function is not None and first[0].function.name == "get_weather"
    assert first[0].function.arguments == ""
    arguments = ""
    for chunk in chunks[1:]:
        for tc in chunk.choices[0].delta.tool_calls or []:
            assert tc.index == 0
            arguments += tc.function.arguments if tc.function and tc.function.arguments else ""
    assert len([c for c in chunks if c.choices and c.choices[0].delta.tool_calls]) > 2
    _check_weather_args(arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_json_schema_and_json_object(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 5},
            "score": {"type": "number", "minimum": 1.5},
            "ok": {"type": "boolean"},
            "kind": {"enum": ["a", "b"]},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 2},
        },
        "required": ["name", "score", "ok", "kind", "items"],
        "additionalProperties": False,
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"id": {"type": "integer"}},
                "required": ["id"],
            }
        },
    }
    resp = client.chat.completions.create(
        model="sim-small",
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": schema, "strict": True},
        },
    )
    doc = json.loads(resp.choices[0].message.content or "")
    assert set(doc) == {"name", "score", "ok", "kind", "items"}
    assert isinstance(doc["name"], str) and len(doc["name"]) >= 5
    assert doc["score"] >= 1.5 and isinstance(doc["ok"], bool) and doc["kind"] in ("a", "b")
    assert len(doc["items"]) >= 2 and all(isinstance(i["id"], int) for i in doc["items"])
    obj = client.chat.completions.create(
        model="sim-small", messages=USER, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)


# --- OpenAI chat, streaming ---------------------------------------------------------


def test_stream_without_usage(client: openai.OpenAI, base_url: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="sim-small::tokens=4", messages=USER, stream=True
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    # No usage reached the client, so none is counted.
    assert stats(base_url)["tokens"] == {}
    assert stats(base_url)["requests"]["sim-small"]["stream"] == 1


def test_stream_with_usage_wire_format(base_url: str) -> None:
    status, headers, raw = http(
        "POST",
        f"{base_url}/v1/chat/completions",
        {
            "model": "sim-small::tokens=3",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert status == 200 and headers["x-request-id"].startswith("req_")
    assert raw.endswith(b"data: [DONE]\n\n")
    data = sse_data(raw)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    *normal, usage_chunk = chunks
    assert len(normal) == 1 + 3 + 1  # role, three tokens, finish
    assert all("usage" in c and c["usage"] is None for c in normal)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == USER_TOKENS
    assert usage_chunk["usage"]["completion_tokens"] == 3
    assert normal[-1]["choices"][0]["finish_reason"] == "stop"
    tokens = stats(base_url)["tokens"]["sim-small"]
    assert tokens["prompt"] == USER_TOKENS and tokens["completion"] == 3


def test_stream_usage_via_sdk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="sim-small::tokens=2,reasoning=1",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


def test_latency_and_stream_pacing(client: openai.OpenAI) -> None:
    started = time.monotonic()
    client.chat.completions.create(model="sim-small::latency=150", messages=USER)
    assert time.monotonic() - started >= 0.15
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="sim-small::ttft=100,tps=50,tokens=6", messages=USER, stream=True
    )
    arrivals = [time.monotonic() - started for _ in stream]
    assert arrivals[0] >= 0.1  # role chunk waits for ttft
    assert arrivals[-1] >= 0.1 + 5 / 50  # six tokens, 20 ms apart
    started = time.monotonic()
    client.chat.completions.create(model="sim-small::tps=100,tokens=10", messages=USER)
    assert time.monotonic() - started >= 0.1


# --- faults -------------------------------------------------------------------------


def test_rate_limit_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="sim-small::status=429,retry_after=2", messages=USER)
    err = exc.value
    assert err.code == "rate_limit_exceeded"
    assert err.response.headers["retry-after"] == "2"
    assert err.response.headers["retry-after-ms"] == "2000"
    assert err.request_id is not None and err.request_id.startswith("req_")


def test_server_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="sim-small::status=500", messages=USER)
    assert exc.value.status_code == 500
    assert exc.value.body == {
        "message": exc.value.body["message"],  # type: ignore[index]
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }
    with pytest.raises(openai.InternalServerError) as overloaded:
        client.chat.completions.create(model="sim-small::status=529", messages=USER)
    assert overloaded.value.status_code == 529


def test_context_length(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="sim-small::context_length", messages=USER)
    assert exc.value.code == "context_length_exceeded"
    fits = client.chat.completions.create(
        model=f"sim-small::context_window={USER_TOKENS}", messages=USER
    )
    assert fits.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model=f"sim-small::context_window={USER_TOKENS - 1}", messages=USER
        )
    assert too_long.value.code == "context_length_exceeded"


def test_hang_times_out_without_blocking_others(client: openai.OpenAI, base_url: str) -> None:
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            client.with_options(timeout=0.8).chat.completions.create(
                model="sim-small::hang", messages=USER
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    # The simulator holds the hanging request (counted on arrival) before the second call.
    wait_until(lambda: stats(base_url)["faults"]["hang"] == 1, "the hanging request upstream")
    started = time.monotonic()
    ok = client.chat.completions.create(model="sim-small::tokens=1", messages=USER)
    assert ok.choices[0].message.content == "tok0"
    assert time.monotonic() - started < 0.5
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], openai.APITimeoutError)
    served = stats(base_url)
    assert served["requests"]["sim-small"]["by_status"] == {"hang": 1, "200": 1}
    assert served["faults"]["hang"] == 1


def test_cut_after_breaks_stream(client: openai.OpenAI, base_url: str) -> None:
    stream = client.chat.completions.create(
        model="sim-small::cut_after=3,tokens=10",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    received: list[str] = []
    # The SDK raises httpx's own error when a stream breaks mid-iteration, and wraps it in
    # APIConnectionError only when the break happens while it is still reading headers.
    with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "tok0 tok1 tok2"
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="sim-small::cut_after=1", messages=USER)
    served = stats(base_url)
    assert served["tokens"] == {}
    assert served["faults"]["cut"] == 2


def test_cut_after_paced_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="sim-small::cut_after=2,tps=200,tokens=10", messages=USER, stream=True
    )
    received: list[str] = []
    # The SDK raises httpx's own error when a stream breaks mid-iteration, and wraps it in
    # APIConnectionError only when the break happens while it is still reading headers.
    with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "tok0 tok1"


def test_midstream_error(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="sim-small::midstream_error=2,tokens=10", messages=USER, stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert not isinstance(exc.value, openai.APIConnectionError)
    assert "".join(received) == "tok0 tok1"


def test_malformed(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises((ValueError, openai.APIError)):
        client.chat.completions.create(model="sim-small::malformed", messages=USER)
    with pytest.raises((ValueError, openai.APIError)):
        list(
            client.chat.completions.create(model="sim-small::malformed", messages=USER, stream=True)
        )
    status, _, raw = http(
        "POST", f"{base_url}/v1/chat/completions", {"model": "m::malformed", "messages": USER}
    )
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


def test_fail_first_then_succeed(client: openai.OpenAI, base_url: str) -> None:
    model = "sim-small::fail_first=2,status=503"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model=model, messages=USER)
        assert exc.value.status_code == 503
    assert client.chat.completions.create(model=model, messages=USER).choices
    # A different directive string has its own counter; default failure status is 500.
    with pytest.raises(openai.InternalServerError) as other:
        client.chat.completions.create(model="sim-small::fail_first=1", messages=USER)
    assert other.value.status_code == 500
    http("POST", f"{base_url}/_reset")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=model, messages=USER)


def test_fail_first_retried_by_sdk(base_url: str) -> None:
    retrying = openai.OpenAI(base_url=f"{base_url}/v1", api_key="k", max_retries=2)
    resp = retrying.chat.completions.create(
        model="sim-small::fail_first=2,status=429,retry_after=0.01", messages=USER
    )
    assert resp.choices[0].finish_reason == "stop"
    assert stats(base_url)["requests"]["sim-small"]["by_status"] == {"429": 2, "200": 1}


def test_fail_rate(client: openai.OpenAI) -> None:
    failures = 0
    for _ in range(40):
        try:
            client.chat.completions.create(model="sim-small::fail_rate=0.5", messages=USER)
        except openai.InternalServerError:
            failures += 1
    assert 5 < failures < 35
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="sim-small::fail_rate=1", messages=USER)


# --- other OpenAI endpoints ---------------------------------------------------------


def test_embeddings(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(
        model="sim-embed", input=["hello", "world!"], encoding_format="float"
    )
    b64 = client.embeddings.create(model="sim-embed", input=["hello", "world!"])  # SDK: base64
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 8
    assert floats.data[0].embedding == b64.data[0].embedding
    assert floats.data[0].embedding != floats.data[1].embedding
    assert math.isclose(sum(v * v for v in floats.data[0].embedding), 1.0, rel_tol=1e-5)
    assert floats.usage.prompt_tokens == math.ceil(5 / 4) + math.ceil(6 / 4)
    wide = client.embeddings.create(model="sim-embed", input="hello", dimensions=16)
    assert len(wide.data[0].embedding) == 16
    tokens = client.embeddings.create(model="sim-embed", input=[[1, 2, 3], [4, 5]])
    assert tokens.usage.prompt_tokens == 5 and len(tokens.data) == 2


def test_embeddings_base64_wire(base_url: str) -> None:
    import base64
    import struct

    status, _, raw = http(
        "POST",
        f"{base_url}/v1/embeddings",
        {"model": "sim-embed", "input": "hi", "encoding_format": "base64", "dimensions": 4},
    )
    assert status == 200
    encoded = json.loads(raw)["data"][0]["embedding"]
    assert len(struct.unpack("<4f", base64.b64decode(encoded))) == 4


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "sim-small" in ids and "sim-embed" in ids


def test_legacy_completions(client: openai.OpenAI, base_url: str) -> None:
    resp = client.completions.create(model="sim-small", prompt="Once upon", max_tokens=4)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == "tok0 tok1 tok2 tok3"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.prompt_tokens == math.ceil(9 / 4)
    chunks = list(
        client.completions.create(
            model="sim-small::tokens=3",
            prompt="Once upon",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 tok2"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert stats(base_url)["endpoints"]["completions"] == 2


# --- /_stats ------------------------------------------------------------------------


def test_stats_match_what_was_served(client: openai.OpenAI, base_url: str) -> None:
    client.chat.completions.create(model="alpha::tokens=2,cached=1,reasoning=1", messages=USER)
    client.chat.completions.create(model="alpha::cache_write=2,tokens=1", messages=USER)
    list(client.chat.completions.create(model="alpha::tokens=3", messages=USER, stream=True))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="alpha::status=429", messages=USER)
    client.embeddings.create(model="beta", input="abcd")
    assert stats(base_url) == {
        "requests": {
            "alpha": {"total": 4, "by_status": {"200": 3, "429": 1}, "stream": 1},
            "beta": {"total": 1, "by_status": {"200": 1}, "stream": 0},
        },
        "tokens": {
            "alpha": {
                "prompt": 2 * USER_TOKENS,
                "cached": 1,
                "cache_write": 2,
                "completion": 3 + 1,
                "reasoning": 1,
            },
            "beta": {"prompt": 1, "cached": 0, "cache_write": 0, "completion": 0, "reasoning": 0},
        },
        "endpoints": {
            "chat": 4,
            "completions": 0,
            "embeddings": 1,
            "messages": 0,
            "azure_chat": 0,
            "gemini": 0,
            "vertex": 0,
            "converse": 0,
            "responses": 0,
            "azure_responses": 0,
        },
        "faults": {"hang": 0, "cut": 0, "midstream_error": 0, "malformed": 0, "invalid_json": 0},
    }


def test_every_response_has_request_id(base_url: str) -> None:
    for method, path in (("GET", "/nope"), ("GET", "/_stats"), ("GET", "/v1/models")):
        _, headers, _ = http(method, base_url + path)
        assert headers["x-request-id"].startswith("req_"), path


# --- Anthropic Messages -------------------------------------------------------------

ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant"}


def test_anthropic_json(base_url: str) -> None:
    body = {
        "model": "claude-sim::tokens=3,cached=4,cache_write=2",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief"}],  # 8 chars, counts as a message
        "messages": USER,
    }
    status, headers, raw = http("POST", f"{base_url}/v1/messages", body, ANTHROPIC_HEADERS)
    assert status == 200
    assert headers["request-id"] == headers["x-request-id"]
    assert headers["request-id"].startswith("req_")
    msg = json.loads(raw)
    prompt = math.ceil(17 / 4) + 3 * 2
    assert msg["id"].startswith("msg_") and msg["type"] == "message"
    assert msg["role"] == "assistant" and msg["model"] == body["model"]
    assert msg["content"] == [{"type": "text", "text": "tok0 tok1 tok2"}]
    assert msg["stop_reason"] == "end_turn" and msg["stop_sequence"] is None
    assert msg["usage"] == {
        "input_tokens": prompt - 6,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 4,
        "output_tokens": 3,
    }
    assert stats(base_url)["tokens"]["claude-sim"] == {
        "prompt": prompt,
        "cached": 4,
        "cache_write": 2,
        "completion": 3,
        "reasoning": 0,
    }


def test_anthropic_max_tokens_and_tool_use(base_url: str) -> None:
    url = f"{base_url}/v1/messages"
    _, _, raw = http("POST", url, {"model": "c", "max_tokens": 2, "messages": USER})
    assert json.loads(raw)["stop_reason"] == "max_tokens"
    tool = {"name": "lookup", "description": "d", "input_schema": WEATHER["function"]["parameters"]}  # type: ignore[index]
    _, _, raw = http(
        "POST", url, {"model": "c", "max_tokens": 50, "messages": USER, "tools": [tool]}
    )
    msg = json.loads(raw)
    assert msg["stop_reason"] == "tool_use"
    block = msg["content"][0]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert block["name"] == "lookup"
    _check_weather_args(json.dumps(block["input"]))


def test_anthropic_validation_and_errors(base_url: str) -> None:
    url = f"{base_url}/v1/messages"
    status, _, raw = http("POST", url, {"model": "c", "messages": USER})
    assert status == 400
    err = json.loads(raw)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in err["error"]["message"]
    status, headers, raw = http(
        "POST", url, {"model": "c::status=529,retry_after=1", "max_tokens": 5, "messages": USER}
    )
    assert status == 529 and headers["retry-after"] == "1"
    assert json.loads(raw)["error"]["type"] == "overloaded_error"
    status, _, raw = http(
        "POST", url, {"model": "c::status=429", "max_tokens": 5, "messages": USER}
    )
    assert status == 429 and json.loads(raw)["error"]["type"] == "rate_limit_error"
    status, _, raw = http(
        "POST", url, {"model": "c::context_length", "max_tokens": 5, "messages": USER}
    )
    assert status == 400 and "prompt is too long" in json.loads(raw)["error"]["message"]


def test_anthropic_stream(base_url: str) -> None:
    body = {
        "model": "claude-sim::tokens=3,cached=2",
        "max_tokens": 100,
        "messages": USER,
        "stream": True,
    }
    status, headers, raw = http("POST", f"{base_url}/v1/messages", body, ANTHROPIC_HEADERS)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_")
    events = anthropic_events(raw)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == USER_TOKENS - 2
    assert start["usage"]["cache_read_input_tokens"] == 2
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "tok0 tok1 tok2"
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == 3
    assert stats(base_url)["tokens"]["claude-sim"]["prompt"] == USER_TOKENS


def test_anthropic_stream_tool_use_and_midstream_error(base_url: str) -> None:
    url = f"{base_url}/v1/messages"
    tool = {
        "name": "t",
        "input_schema": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    }
    _, _, raw = http(
        "POST",
        url,
        {"model": "c", "max_tokens": 50, "messages": USER, "tools": [tool], "stream": True},
    )
    events = anthropic_events(raw)
    assert events[1][1]["content_block"]["type"] == "tool_use"
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial) == {"q": "tok"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    _, _, raw = http(
        "POST",
        url,
        {"model": "d::midstream_error=1", "max_tokens": 50, "messages": USER, "stream": True},
    )
    events = anthropic_events(raw)
    assert [n for n, _ in events][-2:] == ["content_block_delta", "error"]
    assert events[-1][1]["error"]["type"] == "overloaded_error"
    served = stats(base_url)
    assert "c" in served["tokens"] and "d" not in served["tokens"]
    assert served["faults"]["midstream_error"] == 1


# --- auth ---------------------------------------------------------------------------


def test_require_key() -> None:
    url, stop = start_simulator(require_key="sk-secret")
    try:
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as exc:
            bad.chat.completions.create(model="sim-small", messages=USER)
        assert exc.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-secret", max_retries=0)
        assert good.chat.completions.create(model="sim-small", messages=USER).choices
        body = {"model": "c", "max_tokens": 5, "messages": USER}
        status, _, raw = http("POST", f"{url}/v1/messages", body, {"x-api-key": "nope"})
        assert status == 401
        assert json.loads(raw)["error"]["type"] == "authentication_error"
        # the OpenAI-style header does not authenticate the Anthropic endpoint
        status, _, _ = http(
            "POST", f"{url}/v1/messages", body, {"Authorization": "Bearer sk-secret"}
        )
        assert status == 401
        status, _, _ = http("POST", f"{url}/v1/messages", body, {"x-api-key": "sk-secret"})
        assert status == 200
    finally:
        stop()
