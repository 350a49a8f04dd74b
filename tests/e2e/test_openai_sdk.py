"""The real OpenAI Python SDK (sync and async) against Farebox in front of the simulator."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.conftest import CLIENT_KEY
from tests.gateway_harness import RunningGateway

HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=10)


@pytest.fixture
def aclient(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=10
    )


def test_chat_non_stream_with_metering_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=HELLO, max_tokens=5
    )
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.model == "sim-small"  # what served it, not the route name
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert raw.headers["x-farebox-route"] == "chat"
    assert raw.headers["x-farebox-deployment"] == "small@sim"
    assert raw.headers["x-farebox-attempts"] == "1"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.request_id == raw.headers["x-request-id"]


def test_unknown_fields_pass_through_untouched(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="chat",
        messages=HELLO,
        n=2,
        extra_body={"some_future_field": {"nested": [1, 2]}, "seed": 7},
    )
    assert len(reply.choices) == 2  # `n` reached the upstream


def test_cached_and_reasoning_usage_is_reported(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="cached", messages=HELLO)
    usage = reply.usage
    assert usage is not None
    assert usage.completion_tokens == 15  # 12 visible + 3 reasoning
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 6
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 3


def test_stream_without_include_usage_strips_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="chat", messages=HELLO, stream=True, max_tokens=6)
    )
    assert chunks, "no chunks"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "a usage-only chunk leaked to a client that did not ask"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert chunks[-1].choices[0].finish_reason is not None


def test_stream_with_include_usage_gets_final_usage_chunk(
    client: openai.OpenAI, simulator: str
) -> None:
    stream = client.chat.completions.create(
        model="cached",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 15
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) >= 1


def test_stream_response_headers(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="chat", messages=HELLO, stream=True
    ) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert raw.headers["x-farebox-deployment"] == "small@sim"
        body = b"".join(raw.iter_bytes())
    assert body.rstrip().endswith(b"data: [DONE]")


def test_tools_round_trip(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city", "days"],
                },
            },
        }
    ]
    reply = client.chat.completions.create(model="chat", messages=HELLO, tools=tools)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert isinstance(args["city"], str) and isinstance(args["days"], int)


def test_streamed_tool_call_arguments_reassemble(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}},
                    "required": ["query"],
                },
            },
        }
    ]
    args = ""
    name = None
    for chunk in client.chat.completions.create(
        model="chat", messages=HELLO, tools=tools, stream=True
    ):  # type: ignore[arg-type]
        for delta_call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            name = name or (delta_call.function.name if delta_call.function else None)
            args += (delta_call.function.arguments or "") if delta_call.function else ""
    assert name == "lookup"
    assert isinstance(json.loads(args)["query"], str)


def test_response_format_json_schema(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"country": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["country", "population"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="chat",
        messages=HELLO,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "c", "schema": schema, "strict": True},
        },
    )
    data = json.loads(reply.choices[0].message.content or "")
    assert set(data) == {"country", "population"}
    assert isinstance(data["population"], int)


def test_embeddings_base64_default_and_float(client: openai.OpenAI) -> None:
    default = client.embeddings.create(model="embeddings", input=["alpha", "beta"])
    assert [d.index for d in default.data] == [0, 1]
    vector = default.data[0].embedding
    assert (
        isinstance(vector, list) and len(vector) == 8 and all(isinstance(x, float) for x in vector)
    )
    floats = client.embeddings.create(model="embeddings", input="alpha", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vector, rel=1e-6)
    assert default.usage.prompt_tokens > 0


def test_models_list_has_routes_and_deployments(
    client: openai.OpenAI, gateway: RunningGateway
) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[: len(gateway.config.routes)] == list(gateway.config.routes)
    assert set(gateway.config.deployments) <= set(ids)


def test_models_retrieve_answers_each_listed_id_and_404s_the_rest(client: openai.OpenAI) -> None:
    listed = list(client.models.list())
    for entry in listed[:3]:
        assert client.models.retrieve(entry.id) == entry
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_model_keyed_routing_by_deployment_id_and_upstream_name(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="small@sim", messages=HELLO)
    assert raw.headers["x-farebox-deployment"] == "small@sim"
    raw = client.chat.completions.with_raw_response.create(model="sim-small", messages=HELLO)
    assert raw.headers["x-farebox-deployment"] == "small@sim"
    # Two deployments serve `sim-twin`: the name alone is ambiguous, so it is not routable.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="sim-twin", messages=HELLO)


def test_legacy_completions_json_and_stream(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="chat", prompt="Say hi", max_tokens=4)
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    chunks = list(
        client.completions.create(model="chat", prompt="Say hi", max_tokens=4, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_async_client_json_stream_and_concurrency(aclient: openai.AsyncOpenAI) -> None:
    async def scenario() -> None:
        replies = await asyncio.gather(
            *(
                aclient.chat.completions.create(model="chat", messages=HELLO, max_tokens=3)
                for _ in range(20)
            )
        )
        assert {r.usage.completion_tokens for r in replies if r.usage} == {3}
        assert len({r.id for r in replies}) == 20
        stream = await aclient.chat.completions.create(
            model="chat",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=4,
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        emb = await aclient.embeddings.create(model="embeddings", input="x")
        assert len(emb.data[0].embedding) == 8
        await aclient.close()

    asyncio.run(scenario())
