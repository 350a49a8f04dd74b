"""The real OpenAI Python SDK (sync and async), unchanged, against Farebox's Responses API on
four targets (tests/responses_targets.py): native pass-through, translation to an
open-weights chat upstream, an Anthropic upstream through litellm, and a failover from a
failing native target to the translated one.

Every body and every stream event the SDK receives is validated against OpenAI's spec (the
recording transport of tests/wire_recorder.py, checked after each test), and the last test
holds the ledger to the simulator: one attempt row per upstream request, no more, no less.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.gateway_harness import RunningGateway
from tests.ledger_reads import ledger_url, sql_rows
from tests.responses_targets import (
    KEY,
    SERVED_BY,
    TARGETS,
    TEXT,
    assert_ledger_matches_upstream,
    request_rows,
    responses_gateway,
)
from tests.wire_recorder import TERMINAL_EVENTS, WireRecorder

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
FORECAST_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "celsius": {"type": "integer"},
        "rain": {"type": "boolean"},
    },
    "required": ["city", "celsius", "rain"],
    "additionalProperties": False,
}


class Forecast(BaseModel):
    city: str
    celsius: int
    rain: bool


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, str]]:
    with responses_gateway(Path(tmp_path_factory.mktemp("responses-sdk"))) as pair:
        yield pair


@pytest.fixture(scope="module")
def gw(served: tuple[RunningGateway, str]) -> RunningGateway:
    return served[0]


@pytest.fixture(scope="module")
def recorder() -> WireRecorder:
    return WireRecorder()


@pytest.fixture(autouse=True)
def _every_body_matches_the_spec(recorder: WireRecorder) -> Iterator[None]:
    yield
    recorder.validate()


@pytest.fixture
def client(gw: RunningGateway, recorder: WireRecorder) -> Iterator[openai.OpenAI]:
    http = recorder.client()
    yield openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0, http_client=http)
    http.close()


def served_headers(headers: Any, target: str) -> None:
    assert headers["x-farebox-route"] == target
    assert headers["x-farebox-deployment"] == SERVED_BY[target]
    assert headers["x-farebox-attempts"] == ("2" if target == "failover" else "1")
    assert headers["x-request-id"].startswith("req_")


def user(text: str) -> Any:
    return {"role": "user", "content": [{"type": "input_text", "text": text}]}


# -- one target at a time ---------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_create_string_input(client: openai.OpenAI, target: str) -> None:
    raw = client.responses.with_raw_response.create(model=target, input="Hello there")
    response = raw.parse()
    served_headers(raw.headers, target)
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text == TEXT
    assert [item.type for item in response.output][-1] == "message"
    assert response.usage is not None
    assert response.usage.output_tokens == 5 and response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + 5


@pytest.mark.parametrize("target", TARGETS)
def test_create_item_list_with_instructions(client: openai.OpenAI, target: str) -> None:
    short = client.responses.create(model=target, input="Hi")
    conversation: Any = [
        user("First question?"),
        {"role": "assistant", "content": "First answer."},
        user("Second question, a longer one this time?"),
    ]
    response = client.responses.create(
        model=target, instructions="You are terse.", input=conversation
    )
    assert response.output_text == TEXT
    assert response.instructions == "You are terse."
    assert short.usage is not None and response.usage is not None
    # Every item and the instructions reached the upstream.
    assert response.usage.input_tokens > short.usage.input_tokens + 10


@pytest.mark.parametrize("target", TARGETS)
def test_create_json_schema_format(client: openai.OpenAI, target: str) -> None:
    response = client.responses.create(
        model=target,
        input="Forecast for Paris as JSON",
        text={
            "format": {
                "type": "json_schema",
                "name": "forecast",
                "schema": FORECAST_SCHEMA,
                "strict": True,
            }
        },
    )
    document = json.loads(response.output_text)
    assert set(document) == {"city", "celsius", "rain"}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


@pytest.mark.parametrize("target", TARGETS)
def test_stream_helper(client: openai.OpenAI, target: str) -> None:
    with client.responses.stream(model=target, input=[user("Stream it")]) as stream:
        types, deltas = [], []
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added"):
        assert kind in types
    assert "".join(deltas) == final.output_text == TEXT
    assert final.status == "completed" and final.usage is not None
    assert final.usage.output_tokens == 5


@pytest.mark.parametrize("target", TARGETS)
def test_parse_into_a_pydantic_model(client: openai.OpenAI, target: str) -> None:
    parsed = client.responses.parse(model=target, input="Forecast for Rome", text_format=Forecast)
    assert isinstance(parsed.output_parsed, Forecast)
    assert parsed.output_parsed.model_dump().keys() == {"city", "celsius", "rain"}


@pytest.mark.parametrize("target", TARGETS)
def test_retrieve_input_items_delete(client: openai.OpenAI, target: str) -> None:
    created = client.responses.create(
        model=target, instructions="Be brief.", input=[user("Keep this one")]
    )
    found = client.responses.retrieve(created.id)
    assert found.id == created.id and found.output_text == created.output_text
    assert getattr(found, "store", None) is True  # not a typed field in the SDK
    items = client.responses.input_items.list(created.id)
    messages = [item for item in items.data if item.type == "message"]
    assert len(messages) == 1
    assert messages[0].role == "user"
    assert [part.type for part in messages[0].content] == ["input_text"]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(created.id)


@pytest.mark.parametrize("target", TARGETS)
def test_input_tokens_count(client: openai.OpenAI, target: str) -> None:
    one = client.responses.input_tokens.count(model=target, input="Count me")
    more = client.responses.input_tokens.count(
        model=target, instructions="Be brief.", input=[user("Count me"), user("and me " * 20)]
    )
    assert one.object == "response.input_tokens"
    assert 0 < one.input_tokens < more.input_tokens


@pytest.mark.parametrize("target", TARGETS)
def test_function_tool_round_trip(client: openai.OpenAI, target: str) -> None:
    first = client.responses.create(model=target, input="Weather in Paris?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    assert isinstance(json.loads(call.arguments)["city"], str)
    second = client.responses.create(
        model=target,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        tools=[WEATHER],
    )
    assert [item.type for item in second.output] == ["message"]
    assert second.output_text == TEXT
    # The stored conversation: the question, the call and its output.
    kinds = [item.type for item in client.responses.input_items.list(second.id, order="asc")]
    assert kinds == ["message", "function_call", "function_call_output"]
    # The answer names the response it continues, as OpenAI's does (and so does retrieve).
    assert second.previous_response_id == first.id
    assert client.responses.retrieve(second.id).previous_response_id == first.id


@pytest.mark.parametrize("target", TARGETS)
def test_streamed_function_call(client: openai.OpenAI, target: str) -> None:
    with client.responses.stream(model=target, input="Weather in Oslo?", tools=[WEATHER]) as s:
        pieces = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    assert [item.type for item in final.output] == ["function_call"]
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert pieces and "".join(pieces) == call.arguments
    assert isinstance(json.loads(call.arguments)["city"], str)


@pytest.mark.parametrize("target", TARGETS)
def test_store_false_cannot_be_continued(client: openai.OpenAI, target: str) -> None:
    first = client.responses.create(model=target, input="Forget this", store=False)
    assert getattr(first, "store", None) is False
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=target, previous_response_id=first.id, input="And now?")
    assert info.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


@pytest.mark.parametrize("route", ["slow-native", "slow-translated"])
def test_stream_cut_by_the_client_is_metered(
    client: openai.OpenAI, gw: RunningGateway, recorder: WireRecorder, route: str
) -> None:
    with client.responses.stream(model=route, input="Start, then stop") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break  # the client walks away mid-answer
    request_id = recorder.exchanges[-1].request_id
    assert request_id is not None
    row = request_rows(gw, [request_id])[request_id]
    assert row["final_status"] == 499, row  # the client closed it
    assert 0 < row["output_tokens"] < 40  # what was generated before the hang-up
    # The last test compares all attempts with the simulator's requests.


def test_input_items_paginate(client: openai.OpenAI) -> None:
    turns: Any = [user("One"), {"role": "assistant", "content": "Two"}, user("Three")]
    created = client.responses.create(model="native", input=turns)
    first_page = client.responses.input_items.list(created.id, limit=1, order="asc")
    assert len(first_page.data) == 1 and first_page.has_more
    every = list(client.responses.input_items.list(created.id, limit=1, order="asc"))
    assert [getattr(item, "role", None) for item in every] == ["user", "assistant", "user"]
    newest_first = list(client.responses.input_items.list(created.id, limit=2))
    assert [item.id for item in newest_first] == [item.id for item in reversed(every)]


def test_errors_are_the_sdks_typed_errors(gw: RunningGateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as tool:
        client.responses.create(model="translated", input="News?", tools=[{"type": "web_search"}])
    assert tool.value.param == "tools" and "web_search" in tool.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-route", input="hi")
    with pytest.raises(openai.BadRequestError) as missing:
        client.responses.create(model="native", input="hi", previous_response_id="resp_nope")
    assert missing.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nope")
    stranger = openai.OpenAI(base_url=gw.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.responses.create(model="native", input="hi")
    # Every target failed before the first event: an error status, not a stream.
    with (
        pytest.raises(openai.InternalServerError),
        client.responses.stream(model="broken", input="hi") as stream,
    ):
        list(stream)
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="broken", input="hi")


# -- a conversation across targets ------------------------------------------------------

PAIRS = [
    ("native", "translated"),
    ("translated", "anthropic"),
    ("anthropic", "native"),
    ("native", "failover"),
    ("failover", "anthropic"),
]


@pytest.mark.parametrize(("first_target", "second_target"), PAIRS)
def test_conversation_moves_between_targets(
    client: openai.OpenAI, gw: RunningGateway, first_target: str, second_target: str
) -> None:
    raw_first = client.responses.with_raw_response.create(
        model=first_target, instructions="Remember names.", input="My name is Ada."
    )
    first = raw_first.parse()
    served_headers(raw_first.headers, first_target)
    raw_second = client.responses.with_raw_response.create(
        model=second_target, previous_response_id=first.id, input="What is my name?"
    )
    second = raw_second.parse()
    served_headers(raw_second.headers, second_target)
    assert second.output_text == TEXT
    # The second upstream got the whole conversation, not just the new turn.
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    items = client.responses.input_items.list(second.id, order="asc").data
    assert [(item.type, getattr(item, "role", None)) for item in items] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    # Chained calls are one workflow in the ledger, named by the chain's first request.
    ids = [raw_first.headers["x-request-id"], raw_second.headers["x-request-id"]]
    rows = request_rows(gw, ids)
    assert {rows[i]["workflow_id"] for i in ids} == {ids[0]}
    assert [rows[i]["final_deployment"] for i in ids] == [
        SERVED_BY[first_target],
        SERVED_BY[second_target],
    ]
    assert {rows[i]["endpoint"] for i in ids} == {"responses"}
    # A third turn, streamed, back on the first target.
    with client.responses.stream(
        model=first_target, previous_response_id=second.id, input="Thanks!"
    ) as stream:
        third = stream.get_final_response()
    assert third.output_text == TEXT
    assert third.usage is not None and third.usage.input_tokens > second.usage.input_tokens
    assert len(client.responses.input_items.list(third.id).data) == 5
    # Each answer names the response it continues, as OpenAI's does.
    assert second.previous_response_id == first.id
    assert third.previous_response_id == second.id


# -- the async client -------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_async_client(gw: RunningGateway, recorder: WireRecorder, target: str) -> None:
    async def run() -> None:
        http = recorder.async_client()
        client = openai.AsyncOpenAI(
            base_url=gw.base_url, api_key=KEY, max_retries=0, http_client=http
        )
        try:
            created = await client.responses.create(model=target, input="Hello async")
            assert created.output_text == TEXT
            async with client.responses.stream(model=target, input="Stream async") as stream:
                types = [event.type async for event in stream]
                final = await stream.get_final_response()
            assert types[0] == "response.created" and types[-1] == "response.completed"
            assert final.output_text == TEXT
            events = await client.responses.create(model=target, input="Raw", stream=True)
            kinds = [event.type async for event in events]
            assert kinds[-1] in TERMINAL_EVENTS
            parsed = await client.responses.parse(
                model=target, input="Forecast", text_format=Forecast
            )
            assert isinstance(parsed.output_parsed, Forecast)
            tool = await client.responses.create(model=target, input="Weather?", tools=[WEATHER])
            call = next(item for item in tool.output if item.type == "function_call")
            answer = await client.responses.create(
                model=target,
                previous_response_id=tool.id,
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Hot"}],
            )
            assert answer.output_text == TEXT
            again = await client.responses.retrieve(answer.id)
            assert again.output_text == TEXT
            page = await client.responses.input_items.list(answer.id)
            assert len(page.data) == 3
            counted = await client.responses.input_tokens.count(model=target, input="Count")
            assert counted.input_tokens > 0
            await client.responses.delete(answer.id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(answer.id)
            assert answer.previous_response_id == tool.id
        finally:
            await http.aclose()

    asyncio.run(run())


# -- faults from the upstream, then the ledger ------------------------------------------


@pytest.mark.parametrize("route", ["cut-native", "cut-translated"])
def test_stream_cut_by_the_upstream_fails_not_completes(client: openai.OpenAI, route: str) -> None:
    events = client.responses.create(model=route, input="Cut me off", stream=True)
    types = [event.type for event in events]
    assert "response.output_text.delta" in types  # it failed after content had gone out
    assert "response.completed" not in types
    assert types[-1] in ("response.failed", "error"), types


def test_ledger_attempts_equal_upstream_requests(
    served: tuple[RunningGateway, str], client: openai.OpenAI
) -> None:
    """Runs last (file order): every call above plus a mix of its own — chat, a failover,
    a stream the upstream cuts, one the client cuts — one attempt row per upstream request."""
    gw, sim = served
    chat = client.chat.completions.create(
        model="translated", messages=[{"role": "user", "content": "chat too"}]
    )
    assert chat.choices[0].message.content == TEXT
    assert client.responses.create(model="failover", input="Fail over").output_text == TEXT
    list(client.responses.create(model="cut-translated", input="Cut", stream=True))
    with client.responses.stream(model="slow-native", input="Hang up") as stream:
        next(iter(stream))
    calls = assert_ledger_matches_upstream(gw, sim)
    url = ledger_url(gw)
    failed = sql_rows(url, "SELECT count(*) FROM attempts WHERE deployment = 'broken@simr'")
    assert 0 < failed[0][0] < calls
    endpoints = dict(sql_rows(url, "SELECT endpoint, count(*) FROM requests GROUP BY endpoint"))
    assert endpoints["responses"] >= 3 and endpoints["chat/completions"] >= 1
