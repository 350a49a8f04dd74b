"""Every body the gateway sends, from every provider kind, against OpenAI's OpenAPI spec.

The matrix of provider rows is test_conformance's (OpenAI protocol through Farebox's own
client; Anthropic, Gemini, Vertex AI, Bedrock and Azure through litellm). Bodies are read
raw over HTTP, not through an SDK (whose lenient models would hide a `null` where the
spec wants a string), and each one — answer, every stream chunk, error — is validated
against its schema in `../shared/reference/openai-openapi.yaml` (tests/openapi.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_conformance import (
    HELLO,
    PERSON_FORMAT,
    ROWS,
    WEATHER_TOOL,
    Row,
    matrix_yaml,
)
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.openapi import CHAT, COMPLETION, EMBEDDING, ERROR, check, check_stream
from tests.simulator import start_simulator

pytestmark = pytest.mark.e2e

TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# Structured-output asks a client may make (route case, body); each must come back as
# spec-shaped bodies.
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain", {"messages": HELLO}),
    "logprobs": ("plain", {"messages": HELLO, "logprobs": True, "top_logprobs": 2}),
    "parallel_tools": (
        "parallel",
        {
            "messages": [{"role": "user", "content": "Weather and time in Oslo?"}],
            "tools": [WEATHER_TOOL, TIME_TOOL],
        },
    ),
    "tools": (
        "plain",
        {
            "messages": [{"role": "user", "content": "Weather in Oslo for 3 days?"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
        },
    ),
    "json_schema": (
        "plain",
        {
            "messages": [{"role": "user", "content": "Invent a person."}],
            "response_format": PERSON_FORMAT,
        },
    ),
    "json_object": (
        "plain",
        {
            "messages": [
                {"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": "Invent a person, as JSON."},
            ],
            "response_format": {"type": "json_object"},
        },
    ),
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    url, stop = start_simulator(seed=11)
    try:
        with running_gateway(config_from_yaml(matrix_yaml(ROWS, url), {})) as running:
            yield running
    finally:
        stop()


@pytest.fixture(scope="module")
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=20) as client:
        yield client


@pytest.fixture(params=ROWS, ids=lambda r: r.name)
def row(request: pytest.FixtureRequest) -> Row:
    value: Row = request.param
    return value


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = http.post(path, json=body)
    return response.status_code, response.json()


def stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """The `data:` events of an SSE answer up to `[DONE]`, decoded."""
    events = []
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        done = False
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                break
            events.append(json.loads(data))
    assert done, "the stream did not end with [DONE]"
    return events


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_chat_answer_matches_the_spec(http: httpx.Client, row: Row, kind: str) -> None:
    case, request = REQUESTS[kind]
    status, body = post(http, "/chat/completions", {"model": f"{row.name}-{case}", **request})
    assert status == 200, body
    check(CHAT, body, f"{row.name} {kind}")


@pytest.mark.parametrize("usage", [True, False], ids=["with-usage", "no-usage"])
@pytest.mark.parametrize("kind", list(REQUESTS))
def test_chat_stream_chunks_match_the_spec(
    http: httpx.Client, row: Row, kind: str, usage: bool
) -> None:
    case, request = REQUESTS[kind]
    body: dict[str, Any] = {"model": f"{row.name}-{case}", **request}
    if usage:
        body["stream_options"] = {"include_usage": True}
    chunks = stream(http, "/chat/completions", body)
    check_stream(chunks, f"{row.name} {kind}")
    assert any(c["choices"] and c["choices"][0].get("finish_reason") for c in chunks)


def test_cached_and_thinking_usage_match_the_spec(http: httpx.Client, row: Row) -> None:
    for route, extra in (("cached", {}), ("thinking", {"reasoning_effort": "low"})):
        body = {"model": f"{row.name}-{route}", "messages": HELLO, "max_tokens": 4000, **extra}
        status, answer = post(http, "/chat/completions", body)
        assert status == 200, answer
        check(CHAT, answer, f"{row.name} {route}")
        chunks = stream(
            http, "/chat/completions", {**body, "stream_options": {"include_usage": True}}
        )
        check_stream(chunks, f"{row.name} {route}")


def test_embeddings_and_completions_match_the_spec(http: httpx.Client, row: Row) -> None:
    """OpenAI-protocol deployments answer; the others refuse with a spec-shaped error."""
    embed = {"model": f"{row.name}-plain", "input": ["hi", "there"], "encoding_format": "float"}
    status, body = post(http, "/embeddings", embed)
    complete = {"model": f"{row.name}-plain", "prompt": "Once upon"}
    status_c, body_c = post(http, "/completions", complete)
    if row.name == "openai":
        assert (status, status_c) == (200, 200)
        check(EMBEDDING, body, "embeddings")
        check(COMPLETION, body_c, "completions")
    else:
        assert (status, status_c) == (400, 400)
        check(ERROR, body, "embeddings refused")
        check(ERROR, body_c, "completions refused")


@pytest.mark.parametrize("case", ["bad", "limited", "broken", "denied", "ctx", "down"])
def test_errors_match_the_spec(http: httpx.Client, row: Row, case: str) -> None:
    status, body = post(
        http, "/chat/completions", {"model": f"{row.name}-{case}", "messages": HELLO}
    )
    assert status >= 400
    check(ERROR, body, f"{row.name} {case}")


def test_midstream_error_event_matches_the_spec(http: httpx.Client, row: Row) -> None:
    events = []
    body = {"model": f"{row.name}-midstream", "messages": HELLO, "stream": True}
    with http.stream("POST", "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    assert "error" in events[-1]
    check(ERROR, events[-1], f"{row.name} mid-stream error")
    check_stream(events[:-1], f"{row.name} before the error")
