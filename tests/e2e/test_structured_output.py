"""Clients' structured-output modes through the gateway, with the real OpenAI SDK, on every
provider row of the conformance matrix: several tool calls in one answer (stream and not),
log probabilities, `chat.completions.parse()` with a pydantic model, instructor-style JSON
mode (the schema in the system prompt, `response_format: json_object`), and an Anthropic
route whose client set no max_tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from simulator.behaviour import DEFAULT_COMPLETION_TOKENS
from tests.e2e.test_conformance import ROWS, WEATHER_TOOL, Row, matrix_yaml
from tests.gateway_harness import config_from_yaml, running_gateway
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
ASK_BOTH = [{"role": "user", "content": "Weather and local time in Oslo, please."}]
# Rows whose wire has log probabilities that litellm maps back (OpenAI and Azure).
LOGPROB_ROWS = {"openai", "azure"}
# Rows whose wire has a schema-less JSON mode (litellm drops `json_object` for Anthropic's
# and Bedrock's, which have none).
JSON_MODE_ROWS = {"openai", "azure", "gemini", "vertex"}
EXTRA = """
  free@anthropic: {provider: anthropic, model: claude-sim}
"""


class Address(BaseModel):
    city: str
    postcode: str


class Person(BaseModel):
    name: str
    age: int
    address: Address


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    url, stop = start_simulator(seed=13)
    text = matrix_yaml(ROWS, url)
    # One Anthropic deployment without a `tokens=` directive: the answer's natural length.
    text = text.replace(
        "\nroutes:\n", EXTRA + "routes:\n  claude-free: {targets: [free@anthropic]}\n"
    )
    try:
        with running_gateway(config_from_yaml(text, {})) as gateway:
            yield openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    finally:
        stop()


@pytest.fixture(params=ROWS, ids=lambda r: r.name)
def row(request: pytest.FixtureRequest) -> Row:
    value: Row = request.param
    return value


def check_two_calls(calls: list[tuple[str, str, str]]) -> None:
    """(id, name, arguments) of a weather call and a time call, each intact."""
    assert [name for _, name, _ in calls] == ["get_weather", "get_time"]
    assert len({call_id for call_id, _, _ in calls}) == 2 and all(c[0] for c in calls)
    weather, time = (json.loads(arguments) for _, _, arguments in calls)
    assert isinstance(weather["city"], str) and isinstance(weather["days"], int)
    assert isinstance(time["city"], str) and time["city"] != weather["city"]  # not mixed up


def test_parallel_tool_calls(client: openai.OpenAI, row: Row) -> None:
    response = client.chat.completions.create(
        model=f"{row.name}-parallel", messages=ASK_BOTH, tools=[WEATHER_TOOL, TIME_TOOL]
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    check_two_calls([(c.id, c.function.name, c.function.arguments) for c in calls])  # type: ignore[union-attr]


def test_parallel_tool_calls_streamed(client: openai.OpenAI, row: Row) -> None:
    by_index: dict[int, list[str]] = {}
    reasons = []
    for chunk in client.chat.completions.create(
        model=f"{row.name}-parallel",
        messages=ASK_BOTH,
        tools=[WEATHER_TOOL, TIME_TOOL],
        stream=True,
    ):
        if not chunk.choices:
            continue
        reasons.append(chunk.choices[0].finish_reason)
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = by_index.setdefault(delta.index, ["", "", ""])
            call[0] += delta.id or ""
            if delta.function is not None:
                call[1] += delta.function.name or ""
                call[2] += delta.function.arguments or ""
    assert sorted(by_index) == [0, 1]
    check_two_calls([(c[0], c[1], c[2]) for _, c in sorted(by_index.items())])
    assert [r for r in reasons if r] == ["tool_calls"]


def test_parallel_tool_calls_can_be_turned_off(client: openai.OpenAI, row: Row) -> None:
    if row.name not in ("openai", "azure", "anthropic"):
        pytest.skip("Gemini and Bedrock have no switch for parallel calls")
    response = client.chat.completions.create(
        model=f"{row.name}-parallel",
        messages=ASK_BOTH,
        tools=[WEATHER_TOOL, TIME_TOOL],
        parallel_tool_calls=False,
    )
    assert len(response.choices[0].message.tool_calls or []) == 1


def test_logprobs_pass_through(client: openai.OpenAI, row: Row) -> None:
    if row.name not in LOGPROB_ROWS:
        pytest.skip("no log probabilities on this provider's wire")
    response = client.chat.completions.create(
        model=f"{row.name}-plain",
        messages=[{"role": "user", "content": "hi"}],
        logprobs=True,
        top_logprobs=2,
    )
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert all(t.logprob < 0 and len(t.top_logprobs) == 2 for t in tokens)
    assert all(t.top_logprobs[0].token == t.token for t in tokens)
    streamed = [
        entry
        for chunk in client.chat.completions.create(
            model=f"{row.name}-plain",
            messages=[{"role": "user", "content": "hi"}],
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
        for entry in chunk.choices[0].logprobs.content
    ]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in tokens]


def test_completions_logprobs_pass_through(client: openai.OpenAI) -> None:
    response = client.completions.create(model="openai-plain", prompt="Once upon", logprobs=3)
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert all(len(top) == 3 for top in logprobs.top_logprobs or [])


def test_parse_returns_a_populated_model(client: openai.OpenAI, row: Row) -> None:
    completion = client.chat.completions.parse(
        model=f"{row.name}-plain",
        messages=[{"role": "user", "content": "Invent a person with an address."}],
        response_format=Person,
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and isinstance(person.address, Address)
    assert person.name and person.address.city and person.address.postcode


def test_json_mode_follows_the_schema_in_the_prompt(client: openai.OpenAI, row: Row) -> None:
    """Instructor-style JSON mode: the schema travels in the system prompt."""
    if row.name not in JSON_MODE_ROWS:
        pytest.skip("no schema-less JSON mode on this provider's wire")
    system = (
        "Extract the person. Answer with JSON that matches this json_schema:\n\n"
        f"{json.dumps(Person.model_json_schema(), indent=2)}\n\n"
        "Return an instance of the JSON, not the schema itself."
    )
    response = client.chat.completions.create(
        model=f"{row.name}-plain",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Ada, 36"}],
        response_format={"type": "json_object"},
    )
    person = Person.model_validate_json(response.choices[0].message.content or "")
    assert person.address.city


def test_anthropic_without_max_tokens_answers_briefly(client: openai.OpenAI) -> None:
    """litellm sends Anthropic max_tokens=4096 when the client set none; that is a cap, not
    the answer's length."""
    response = client.chat.completions.create(
        model="claude-free", messages=[{"role": "user", "content": "hi"}]
    )
    assert response.usage is not None
    assert response.usage.completion_tokens == DEFAULT_COMPLETION_TOKENS
    assert response.choices[0].finish_reason == "stop"
