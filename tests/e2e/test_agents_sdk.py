"""The OpenAI Agents SDK with its default model (OpenAIResponsesModel) through an
`AsyncOpenAI` pointed at Farebox: a two-turn agent with one function tool, on the native,
translated and Anthropic targets (tests/responses_targets.py) and across a failover, the
second turn continued either by `previous_response_id` or by resending
`result.to_input_list()`.

Each turn calls the tool and then answers; the ledger shows the whole run as ONE workflow:
chained calls carry the chain's first request id, resent conversations the client's tag.
Every body and stream event the SDK received is validated against OpenAI's spec.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import agents
import openai
import pytest
from agents import Agent, ModelSettings, RunConfig, Runner, function_tool

from tests.gateway_harness import RunningGateway
from tests.responses_targets import (
    KEY,
    SERVED_BY,
    TEXT,
    assert_ledger_matches_upstream,
    request_rows,
    responses_gateway,
)
from tests.wire_recorder import WireRecorder

#: (turn 1 route, turn 2 route): one target throughout, or a move mid-conversation.
RUNS = [
    ("native", "native"),
    ("translated", "translated"),
    ("anthropic", "anthropic"),
    ("failover", "failover"),
    ("native", "failover"),
    ("anthropic", "translated"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, str]]:
    agents.set_tracing_disabled(True)  # nothing may leave for OpenAI's trace ingest
    with responses_gateway(Path(tmp_path_factory.mktemp("agents-sdk"))) as pair:
        yield pair


@pytest.fixture(scope="module")
def recorder() -> WireRecorder:
    return WireRecorder()


@pytest.fixture(autouse=True)
def _every_body_matches_the_spec(recorder: WireRecorder) -> Iterator[None]:
    yield
    recorder.validate()


class Weather:
    """The agent's tool, and what it was asked."""

    def __init__(self) -> None:
        self.cities: list[str] = []

        @function_tool
        def get_weather(city: str) -> str:
            """Current weather for a city."""
            self.cities.append(city)
            return f"Sunny and 21 C in {city}"

        self.tool = get_weather


def agent_for(model: str, weather: Weather) -> Agent[Any]:
    return Agent(
        name="forecaster",
        instructions="Answer weather questions with the get_weather tool.",
        tools=[weather.tool],
        model=model,
    )


async def two_turns(
    gw: RunningGateway, recorder: WireRecorder, first: str, second: str, mode: str
) -> tuple[list[Any], Weather, list[str]]:
    """Both turns' results, the tool's record, and Farebox's request ids in call order."""
    http = recorder.async_client()
    client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, http_client=http)
    agents.set_default_openai_client(client, use_for_tracing=False)
    seen = len(recorder.exchanges)
    weather = Weather()
    try:
        if mode == "previous_response_id":
            # auto_previous_response_id chains turn 1's own calls (tool call → answer) too.
            one = await Runner.run(
                agent_for(first, weather), "Weather in Paris?", auto_previous_response_id=True
            )
            two = await Runner.run(
                agent_for(second, weather),
                "And in Rome?",
                previous_response_id=one.last_response_id,
            )
        else:
            # The conversation is resent each call; the client's tag makes it one workflow.
            tag = f"agents-{first}-{second}"
            config = RunConfig(
                model_settings=ModelSettings(extra_headers={"x-farebox-workflow": tag})
            )
            one = await Runner.run(
                agent_for(first, weather), "Weather in Paris?", run_config=config
            )
            follow_up: Any = [*one.to_input_list(), {"role": "user", "content": "And in Rome?"}]
            two = await Runner.run(agent_for(second, weather), follow_up, run_config=config)
    finally:
        await http.aclose()
    ids = [
        e.request_id
        for e in recorder.exchanges[seen:]
        if e.method == "POST" and e.path == "/v1/responses" and e.request_id
    ]
    return [one, two], weather, ids


@pytest.mark.parametrize("mode", ["previous_response_id", "to_input_list"])
@pytest.mark.parametrize(("first", "second"), RUNS)
def test_two_turn_agent_with_a_tool(
    served: tuple[RunningGateway, str],
    recorder: WireRecorder,
    first: str,
    second: str,
    mode: str,
) -> None:
    gw, _ = served
    results, weather, ids = asyncio.run(two_turns(gw, recorder, first, second, mode))
    one, two = results
    # Each turn: the model called the tool, the SDK ran it, the model answered.
    assert len(weather.cities) == 2 and all(weather.cities), weather.cities
    assert one.final_output == TEXT and two.final_output == TEXT
    assert len(one.raw_responses) == 2 and len(two.raw_responses) == 2
    # Turn 2's first call reached the upstream with turn 1 behind it.
    first_call, later_call = one.raw_responses[0].usage, two.raw_responses[0].usage
    assert later_call.input_tokens > first_call.input_tokens + 10
    # Four calls, served where the routes say, all one workflow in the ledger.
    assert len(ids) == 4, ids
    rows = request_rows(gw, ids)
    assert [rows[i]["final_deployment"] for i in ids] == [SERVED_BY[first]] * 2 + [
        SERVED_BY[second]
    ] * 2
    assert all(rows[i]["final_status"] == 200 and rows[i]["endpoint"] == "responses" for i in ids)
    workflows = {rows[i]["workflow_id"] for i in ids}
    expected = ids[0] if mode == "previous_response_id" else f"agents-{first}-{second}"
    assert workflows == {expected}


@pytest.mark.parametrize("target", ["native", "translated", "anthropic", "failover"])
def test_streamed_agent_run(
    served: tuple[RunningGateway, str], recorder: WireRecorder, target: str
) -> None:
    """Runner.run_streamed: the SDK consumes Farebox's Responses SSE for both model calls."""
    gw, _ = served

    async def run() -> tuple[Any, list[Any], Weather]:
        http = recorder.async_client()
        client = openai.AsyncOpenAI(
            base_url=gw.base_url, api_key=KEY, max_retries=0, http_client=http
        )
        agents.set_default_openai_client(client, use_for_tracing=False)
        weather = Weather()
        try:
            result = Runner.run_streamed(agent_for(target, weather), "Weather in Oslo?")
            kinds: list[Any] = [event.type async for event in result.stream_events()]
        finally:
            await http.aclose()
        return result, kinds, weather

    result, kinds, weather = asyncio.run(run())
    assert weather.cities and result.final_output == TEXT
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds


def test_ledger_attempts_equal_upstream_requests(served: tuple[RunningGateway, str]) -> None:
    """Runs last (file order): every agent call above, failovers included."""
    gw, sim = served
    assert assert_ledger_matches_upstream(gw, sim) > 0
