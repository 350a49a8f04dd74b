"""The official OpenAI Python SDK pointed straight at the simulator's Responses API:
`responses.create`, `responses.stream`, `responses.parse` with a pydantic model, a
function-tool round trip, and the directives as the SDK surfaces them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.simulator import simulator_stats, start_simulator

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Forecast(BaseModel):
    city: str
    celsius: int
    rain: bool


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    url, stop = start_simulator(require_key="sk-sim")
    yield url
    stop()


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    httpx.post(f"{base_url}/_reset")
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-sim", max_retries=0, timeout=5)


def test_create_with_reasoning(client: openai.OpenAI, base_url: str) -> None:
    resp = client.responses.create(
        model="sim-small::tokens=4",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Say hello"}]}],
        reasoning={"effort": "medium", "summary": "auto"},
    )
    assert resp.status == "completed"
    assert resp.output_text == "tok0 tok1 tok2 tok3"
    assert resp.output[0].type == "reasoning"
    assert resp.usage is not None
    assert resp.usage.output_tokens_details.reasoning_tokens == 32
    assert resp.usage.output_tokens == 36 and resp.usage.input_tokens == 6
    assert simulator_stats(base_url)["tokens"]["sim-small"]["reasoning"] == 32
    denied = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        denied.responses.create(model="sim-small", input="x")


def test_stream_helper(client: openai.OpenAI) -> None:
    deltas: list[str] = []
    with client.responses.stream(model="sim-small::tokens=3,tps=500", input="Say hello") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert deltas == ["tok0", " tok1", " tok2"]
    assert final.output_text == "tok0 tok1 tok2"
    assert final.usage is not None and final.usage.total_tokens == 6 + 3


def test_parse_pydantic_model(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(
        model="sim-small", input="Forecast for Oslo as JSON", text_format=Forecast
    )
    assert parsed.output_parsed == Forecast(city="tok", celsius=0, rain=True)
    with client.responses.stream(
        model="sim-small", input="Forecast for Oslo", text_format=Forecast
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_parsed == Forecast(city="tok", celsius=0, rain=True)


def test_function_tool_round_trip(client: openai.OpenAI) -> None:
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    first = client.responses.parse(model="sim-small", input=[question], tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.parsed_arguments == {"city": "tok"}
    result: Any = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    # The output item goes back as it came, as the SDK's docs do it.
    history: list[Any] = [question, call, result]
    second = client.responses.create(model="sim-small::tokens=2", input=history, tools=[WEATHER])
    assert second.output_text == "tok0 tok1"
    with client.responses.stream(model="sim-small", input=[question], tools=[WEATHER]) as stream:
        done = [e for e in stream if e.type == "response.function_call_arguments.done"]
        final = stream.get_final_response()
    assert [e.arguments for e in done] == ['{"city":"tok"}']
    assert final.output[0].type == "function_call"
    with pytest.raises(openai.BadRequestError, match="No tool call found"):
        client.responses.create(model="sim-small", input=[question, result], tools=[WEATHER])


def test_directives_through_the_sdk(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(model="sim-small::status=429,retry_after=3", input="x")
    assert limited.value.response.headers["retry-after"] == "3"
    with (
        pytest.raises((openai.APIConnectionError, httpx.TransportError)),
        client.responses.stream(model="sim-small::cut_after=2", input="x") as stream,
    ):
        for _ in stream:
            pass
    with client.responses.stream(model="sim-small::midstream_error=1", input="x") as stream:
        kinds = [event.type for event in stream]
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()
    assert kinds[-1] == "error"
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model="sim-small", input="x", previous_response_id="resp_1")
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).responses.create(model="sim-small::hang", input="x")
    faults = simulator_stats(base_url)["faults"]
    assert (faults["cut"], faults["midstream_error"], faults["hang"]) == (1, 1, 1)
