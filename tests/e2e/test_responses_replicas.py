"""A conversation that moves between two Farebox replicas sharing one PostgreSQL: the real
OpenAI Python SDK and the Agents SDK start on replica A and continue on replica B with
`previous_response_id`, on different targets (tests/responses_targets.py). The stored
conversation, the workflow and the ledger are the database's, not a replica's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import agents
import openai
import pytest
from agents import Agent, Runner, function_tool

from gateway.settings import Settings
from tests.conftest import SIM_KEY
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.responses_targets import (
    CONFIG,
    KEY,
    SERVED_BY,
    TEXT,
    assert_ledger_matches_upstream,
    request_rows,
)
from tests.simulator import running_simulator
from tests.wire_recorder import WireRecorder


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path) -> Iterator[tuple[RunningGateway, RunningGateway, str]]:
    with running_simulator(require_key=SIM_KEY) as sim:
        config = config_from_yaml(CONFIG, {"SIM_URL": sim, "SIM_KEY": SIM_KEY})

        def settings(name: str) -> Settings:
            spool = str(tmp_path / name / "spool")
            return Settings(database_url=pg_url, spool_dir=spool, master_key=None)

        with (
            running_gateway(config, settings("a")) as a,
            running_gateway(config, settings("b")) as b,
        ):
            yield a, b, sim


def sdk(gw: RunningGateway, recorder: WireRecorder) -> openai.OpenAI:
    http = recorder.client()
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, http_client=http)


def test_conversation_continues_on_another_replica(
    replicas: tuple[RunningGateway, RunningGateway, str],
) -> None:
    a, b, sim = replicas
    recorder = WireRecorder()
    on_a, on_b = sdk(a, recorder), sdk(b, recorder)
    raw_first = on_a.responses.with_raw_response.create(model="native", input="My name is Ada.")
    first = raw_first.parse()
    raw_second = on_b.responses.with_raw_response.create(
        model="anthropic", previous_response_id=first.id, input="What is my name?"
    )
    second = raw_second.parse()
    assert raw_second.headers["x-farebox-deployment"] == SERVED_BY["anthropic"]
    assert second.output_text == TEXT
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    # Either replica reads, lists and deletes what the other stored.
    assert on_b.responses.retrieve(first.id).output_text == first.output_text
    assert len(on_a.responses.input_items.list(second.id).data) == 3
    on_b.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        on_a.responses.retrieve(first.id)
    ids = [raw_first.headers["x-request-id"], raw_second.headers["x-request-id"]]
    rows = request_rows(a, ids)
    assert {rows[i]["workflow_id"] for i in ids} == {ids[0]}

    # The Agents SDK: turn 1 on replica A (native), turn 2 on replica B (failover).
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        cities.append(city)
        return f"Sunny in {city}"

    def agent(model: str) -> Agent[Any]:
        return Agent(name="forecaster", tools=[get_weather], model=model)

    async def run() -> tuple[Any, Any]:
        agents.set_tracing_disabled(True)
        clients = []
        try:
            for gw in (a, b):
                http = recorder.async_client()
                clients.append(http)
                agents.set_default_openai_client(
                    openai.AsyncOpenAI(
                        base_url=gw.base_url, api_key=KEY, max_retries=0, http_client=http
                    ),
                    use_for_tracing=False,
                )
                if gw is a:
                    one = await Runner.run(
                        agent("native"), "Weather in Paris?", auto_previous_response_id=True
                    )
                else:
                    two = await Runner.run(
                        agent("failover"), "And Rome?", previous_response_id=one.last_response_id
                    )
        finally:
            for http in clients:
                await http.aclose()
        return one, two

    one, two = asyncio.run(run())
    assert one.final_output == TEXT and two.final_output == TEXT
    assert len(cities) == 2
    agent_ids = [
        e.request_id
        for e in recorder.exchanges
        if e.method == "POST" and e.path == "/v1/responses" and e.request_id not in ids
    ]
    assert len(agent_ids) == 4
    agent_rows = request_rows(b, [i for i in agent_ids if i is not None])
    assert {row["workflow_id"] for row in agent_rows.values()} == {agent_ids[0]}

    recorder.validate()
    assert_ledger_matches_upstream(a, sim)
