"""The simulator's ``invalid_json_rate`` directive, over real HTTP.

Spoiled structured answers alternate (counting from ``/_reset``): truncated JSON text first,
then valid JSON that breaks the schema; both are 200s with a normal finish reason.  The
quality gates in ``routing.gates`` must classify them as ``json_invalid`` and ``schema``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from routing.gates import GateSpec, check
from simulator.spoil import spoil
from tests.simulator import reset_simulator, simulator_stats, start_simulator

USER: list[Any] = [{"role": "user", "content": "Extract the person"}]
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
SCHEMA_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CONTENT_GATE = GateSpec(json_schema="request")
TOOL_GATE = GateSpec(tool_arguments=True)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    url, stop = start_simulator(seed=7)
    yield url
    stop()


@pytest.fixture(autouse=True)
def _reset(base_url: str) -> None:
    reset_simulator(base_url)


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0, timeout=5)


def post(base_url: str, path: str, body: Any) -> tuple[int, bytes]:
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def chat(base_url: str, model: str, *, path: str = "/v1/chat/completions", **extra: Any) -> Any:
    status, raw = post(base_url, path, {"model": model, "messages": USER, **extra})
    assert status == 200, raw
    return json.loads(raw)


def invalid_json_faults(base_url: str) -> int:
    count: int = simulator_stats(base_url)["faults"]["invalid_json"]
    return count


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_spoiled_answers_alternate_truncated_then_schema_breaking(base_url: str) -> None:
    request: dict[str, Any] = {"response_format": SCHEMA_FORMAT}
    outcomes = []
    for _ in range(4):
        body = chat(base_url, "sim-small::invalid_json_rate=1", **request)
        (choice,) = body["choices"]
        assert choice["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] > 0
        outcomes.append(check(CONTENT_GATE, request, body).outcome)
    assert outcomes == ["json_invalid", "schema", "json_invalid", "schema"]
    assert invalid_json_faults(base_url) == 4


def test_truncated_and_schema_breaking_shapes(client: openai.OpenAI) -> None:
    model = "sim-small::invalid_json_rate=1"
    first = client.chat.completions.create(
        model=model,
        messages=USER,
        response_format=SCHEMA_FORMAT,
    )
    truncated = first.choices[0].message.content or ""
    assert truncated == '{"name":"to'  # the first half of {"name":"tok","age":0}
    assert not is_json(truncated)
    second = client.chat.completions.create(
        model=model,
        messages=USER,
        response_format=SCHEMA_FORMAT,
    )
    assert json.loads(second.choices[0].message.content or "") == {"age": 0}  # "name" dropped


def test_json_object_schema_breaking_answer_is_not_an_object(base_url: str) -> None:
    request: dict[str, Any] = {"response_format": {"type": "json_object"}}
    first = chat(base_url, "sim-small::invalid_json_rate=1", **request)
    second = chat(base_url, "sim-small::invalid_json_rate=1", **request)
    assert first["choices"][0]["message"]["content"] == '{"resul'  # half of {"result":"ok"}
    assert json.loads(second["choices"][0]["message"]["content"]) == [{"result": "ok"}]
    assert check(CONTENT_GATE, request, first).outcome == "json_invalid"
    assert check(CONTENT_GATE, request, second).outcome == "schema"


def test_tool_call_arguments_are_spoiled(base_url: str) -> None:
    request: dict[str, Any] = {"tools": [WEATHER]}
    outcomes = []
    for _ in range(2):
        body = chat(base_url, "sim-small::invalid_json_rate=1", **request)
        (choice,) = body["choices"]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        result = check(TOOL_GATE, request, body)
        outcomes.append(result.outcome)
    assert outcomes == ["tool_args", "tool_args"]
    assert call["function"]["arguments"] == "{}"  # the second: "city" dropped
    assert invalid_json_faults(base_url) == 2


def test_valid_when_rate_is_zero_or_absent(base_url: str) -> None:
    request: dict[str, Any] = {"response_format": SCHEMA_FORMAT}
    for model in ("sim-small", "sim-small::invalid_json_rate=0"):
        body = chat(base_url, model, **request)
        assert check(CONTENT_GATE, request, body).passed
        assert json.loads(body["choices"][0]["message"]["content"]) == {"name": "tok", "age": 0}
    assert invalid_json_faults(base_url) == 0


def test_plain_text_answers_are_never_spoiled(base_url: str) -> None:
    body = chat(base_url, "sim-small::invalid_json_rate=1,tokens=3")
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
    assert invalid_json_faults(base_url) == 0


def test_seeded_rate_is_reproducible_after_reset(base_url: str) -> None:
    request: dict[str, Any] = {"response_format": SCHEMA_FORMAT}

    def run() -> list[bool]:
        return [
            check(
                CONTENT_GATE, request, chat(base_url, "sim-small::invalid_json_rate=0.5", **request)
            ).passed
            for _ in range(40)
        ]

    first = run()
    spoiled = first.count(False)
    assert 5 < spoiled < 35
    assert invalid_json_faults(base_url) == spoiled
    reset_simulator(base_url)
    assert run() == first


def test_stream_carries_the_spoiled_text(base_url: str) -> None:
    status, raw = post(
        base_url,
        "/v1/chat/completions",
        {
            "model": "sim-small::invalid_json_rate=1",
            "messages": USER,
            "response_format": SCHEMA_FORMAT,
            "stream": True,
        },
    )
    assert status == 200
    chunks = [
        json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")
    ]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text and not is_json(text)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert invalid_json_faults(base_url) == 1


def test_azure_and_n_choices_count_one_fault_per_request(base_url: str) -> None:
    body = chat(
        base_url,
        "ignored",
        path="/openai/deployments/gpt::invalid_json_rate=1/chat/completions?api-version=2024-10-21",
        response_format=SCHEMA_FORMAT,
        n=3,
    )
    contents = {c["message"]["content"] for c in body["choices"]}
    assert len(body["choices"]) == 3
    assert len(contents) == 1
    assert not is_json(contents.pop())
    assert invalid_json_faults(base_url) == 1


def test_bad_rate_is_rejected(base_url: str) -> None:
    status, raw = post(
        base_url,
        "/v1/chat/completions",
        {"model": "sim-small::invalid_json_rate=2", "messages": USER},
    )
    assert status == 400
    assert json.loads(raw)["error"]["code"] == "invalid_mock_directive"


def test_spoil_edge_cases() -> None:
    # Scalars: a prefix might still parse ("12" → "1"), so the truncated form stays open.
    assert spoil(12, {"type": "integer"}, 0) == "[12"
    assert spoil([], {}, 0) == "["
    assert spoil({}, {}, 0) == "{"
    # Required property found through a top-level $ref.
    schema = {"$ref": "#/$defs/p", "$defs": {"p": {"required": ["b", "a"]}}}
    assert json.loads(spoil({"a": 1, "b": 2}, schema, 1)) == {"a": 1}
    assert json.loads(spoil({"a": 1}, {"required": ["zz"]}, 3)) == [{"a": 1}]
