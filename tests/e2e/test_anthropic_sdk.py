"""The real Anthropic Python SDK against Farebox's /v1/messages, in front of the simulator.

Requests are routed, metered and written to the ledger as ordinary chat calls; the
answers, streams and errors come back in Anthropic's wire format.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import ledger_url, wait_for_rows

KEY = "sk-anthropic-ingress-01"
CONFIG = """
auth: {keys: [{name: anthropic-tests, key: "CLIENT_KEY"}]}
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
  claude: {kind: closed_api, protocol: anthropic, api_base: "${SIM_URL}", api_key: "${SIM_KEY}"}
deployments:
  claude@claude: {provider: claude, model: "claude-sim::tokens=5,cached=8,cache_write=5"}
  small@sim: {provider: sim, model: sim-small, price: {input: 0.1, output: 0.2}}
  brief@sim: {provider: sim, model: "sim-brief::tokens=4"}
  cachew@sim:
    provider: sim
    model: "sim-cachew::cached=8,cache_write=5,tokens=7"
    price: {input: 1.0, output: 4.0, cached_input: 0.25, cache_write: 1.25}
  limited@sim: {provider: sim, model: "sim-limited::status=429,retry_after=7"}
  overloaded@sim: {provider: sim, model: "sim-overloaded::status=529"}
  midstream@sim: {provider: sim, model: "sim-mid::midstream_error=2,tokens=10"}
routes:
  via-claude: {targets: [claude@claude]}
  chat: {targets: [small@sim], workload: anthropic-tests}
  brief: {targets: [brief@sim]}
  cachew: {targets: [cachew@sim]}
  limited: {targets: [limited@sim]}
  overloaded: {targets: [overloaded@sim]}
  midstream: {targets: [midstream@sim]}
""".replace("CLIENT_KEY", KEY)

HELLO = "Hello there, how are you?"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def prompt_tokens(*texts: str) -> int:
    """The simulator's formula: ceil(chars / 4) + 3 per message (system included)."""
    return math.ceil(sum(len(t) for t in texts) / 4) + 3 * len(texts)


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    settings = sqlite_settings(tmp_path_factory.mktemp("anthropic"))
    with running_gateway(config, settings) as running:
        yield running


@pytest.fixture
def client(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=10)


def test_plain_message_with_usage_and_headers(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="chat", max_tokens=5, messages=[{"role": "user", "content": HELLO}]
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "chat"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == "tok0 tok1 tok2 tok3 tok4"
    assert message.stop_reason == "max_tokens"  # the simulator filled max_tokens
    assert message.usage.input_tokens == prompt_tokens(HELLO)
    assert message.usage.output_tokens == 5
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    assert raw.request_id is not None and raw.request_id.startswith("req_")
    assert raw.headers["x-request-id"] == raw.request_id
    assert raw.headers["x-farebox-route"] == "chat"
    assert raw.headers["x-farebox-deployment"] == "small@sim"
    assert raw.headers["x-farebox-attempts"] == "1"
    assert float(raw.headers["x-farebox-cost-usd"]) > 0


def test_short_answer_ends_turn(client: anthropic.Anthropic) -> None:
    # Without `tokens=` the simulator fills max_tokens; this deployment stops at 4.
    message = client.messages.create(
        model="brief", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 4


def test_system_prompt_and_multi_turn(client: anthropic.Anthropic) -> None:
    system = "You are terse."
    turns: list[Any] = [
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": [{"type": "text", "text": "First answer."}]},
        {"role": "user", "content": [{"type": "text", "text": "Second question?"}]},
    ]
    message = client.messages.create(model="chat", max_tokens=8, system=system, messages=turns)
    # Every turn and the system prompt reached the upstream as chat messages.
    expected = prompt_tokens(system, "First question?", "First answer.", "Second question?")
    assert message.usage.input_tokens == expected
    blocks = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    again = client.messages.create(model="chat", max_tokens=8, system=blocks, messages=turns)
    assert again.usage.input_tokens == expected


def test_stream_text_and_usage(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="chat", max_tokens=6, messages=[{"role": "user", "content": HELLO}]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == "tok0 tok1 tok2 tok3 tok4 tok5"
    assert final.content[0].type == "text" and final.content[0].text == streamed
    assert final.stop_reason == "max_tokens"
    assert final.model == "chat"
    assert final.usage.input_tokens == prompt_tokens(HELLO)
    assert final.usage.output_tokens == 6


@pytest.mark.parametrize("mode", ["json", "stream"])
def test_cache_read_and_write_usage(client: anthropic.Anthropic, mode: str) -> None:
    long = "x" * 100
    messages: Any = [{"role": "user", "content": long}]
    if mode == "json":
        message = client.messages.create(model="cachew", max_tokens=50, messages=messages)
    else:
        with client.messages.stream(model="cachew", max_tokens=50, messages=messages) as stream:
            message = stream.get_final_message()
    prompt = prompt_tokens(long)
    assert message.usage.cache_read_input_tokens == 8
    assert message.usage.cache_creation_input_tokens == 5
    assert message.usage.input_tokens == prompt - 8 - 5  # Anthropic excludes the cache
    assert message.usage.output_tokens == 7
    assert message.stop_reason == "end_turn"


def test_tool_use_then_tool_result(client: anthropic.Anthropic) -> None:
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model="chat", max_tokens=100, tools=[WEATHER], messages=[question]
    )
    assert first.stop_reason == "tool_use"
    tool = first.content[-1]
    assert tool.type == "tool_use"
    assert tool.name == "get_weather"
    assert tool.input == {"city": "tok"}  # the simulator fills the schema's required fields
    assert tool.id
    result = "Sunny, 21 degrees"
    second = client.messages.create(
        model="brief",
        max_tokens=100,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        messages=[
            question,
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": result}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text
    # The tool result reached the upstream as a tool message (three messages in all).
    assert second.usage.input_tokens == prompt_tokens("Weather in Paris?", "", result)


def test_forced_tool_in_a_stream(client: anthropic.Anthropic) -> None:
    other = {"name": "other", "input_schema": {"type": "object", "properties": {}}}
    with client.messages.stream(
        model="chat",
        max_tokens=100,
        tools=[other, WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather?"}],
    ) as stream:
        partial = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len(partial) > 1  # arguments arrived in pieces
    assert json.loads("".join(partial)) == {"city": "tok"}
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["tool_use"]
    block = final.content[0]
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"city": "tok"}


def test_async_stream(gw: RunningGateway) -> None:
    async def run() -> anthropic.types.Message:
        client = anthropic.AsyncAnthropic(base_url=gw.root, api_key=KEY, max_retries=0)
        async with client.messages.stream(
            model="chat", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            return await stream.get_final_message()

    final = asyncio.run(run())
    assert final.content[0].type == "text" and final.content[0].text == "tok0 tok1 tok2"


def test_bearer_token_also_works(gw: RunningGateway) -> None:
    client = anthropic.Anthropic(base_url=gw.root, auth_token=KEY, max_retries=0)
    message = client.messages.create(
        model="chat", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.usage.output_tokens == 2


# -- errors -----------------------------------------------------------------------------


def test_bad_key_is_authentication_error(gw: RunningGateway) -> None:
    bad = anthropic.Anthropic(base_url=gw.root, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(
            model="chat", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    assert info.value.request_id is not None


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(
            model="claude-nonexistent", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "not_found_error"
    assert "chat" in info.value.message


def test_upstream_429_is_rate_limit_error_with_retry_after(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(
            model="limited", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.response.headers["retry-after"] == "7"
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "rate_limit_error"


def test_upstream_overload_is_a_server_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(
            model="overloaded", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "api_error"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"messages": []},
        {"max_tokens": 0},
        {"messages": [{"role": "user", "content": [{"type": "hologram"}]}]},
        {"messages": [{"role": "system", "content": "hi"}]},
    ],
)
def test_bad_body_is_bad_request(client: anthropic.Anthropic, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "model": "chat",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        **kwargs,
    }
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(**args)
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "invalid_request_error"


def test_raw_http_bad_input_and_paths(gw: RunningGateway) -> None:
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    with httpx.Client(base_url=gw.root, headers=headers, timeout=10) as http:
        for body in (b"{not json", b"[]", b""):
            reply = http.post("/v1/messages", content=body)
            assert reply.status_code == 400
            assert reply.json()["type"] == "error"
            assert reply.json()["error"]["type"] == "invalid_request_error"
        hi = [{"role": "user", "content": "hi"}]
        missing = http.post("/v1/messages", json={"model": "chat", "messages": hi})
        assert missing.status_code == 400 and "max_tokens" in missing.json()["error"]["message"]
        wrong_method = http.get("/v1/messages")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["type"] == "invalid_request_error"
        body = {"model": "chat", "max_tokens": 2, "messages": hi}
        bare = http.post("/messages", json=body)
        assert bare.status_code == 200 and bare.json()["type"] == "message"
        assert bare.headers["request-id"] == bare.headers["x-request-id"]


def test_mid_stream_failure_raises_not_a_clean_end(client: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        client.messages.stream(
            model="midstream", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        stream.get_final_message()
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "api_error"


# -- count_tokens -----------------------------------------------------------------------


def test_count_tokens_matches_what_the_call_is_billed(client: anthropic.Anthropic) -> None:
    """The estimate for a non-OpenAI model is the simulator's own formula, so the count
    equals the input tokens the same body is then billed for."""
    messages: Any = [{"role": "user", "content": HELLO}]
    counted = client.messages.count_tokens(model="chat", system="Be brief.", messages=messages)
    assert counted.input_tokens == prompt_tokens("Be brief.", HELLO)
    sent = client.messages.create(model="chat", max_tokens=5, system="Be brief.", messages=messages)
    assert sent.usage.input_tokens == counted.input_tokens
    tools: Any = [WEATHER]
    with_tools = client.messages.count_tokens(model="chat", messages=messages, tools=tools)
    assert with_tools.input_tokens > prompt_tokens(HELLO)


def test_count_tokens_errors_are_anthropic_shaped(gw: RunningGateway) -> None:
    client = anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=10)
    hi: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.count_tokens(model="no-such-route", messages=hi)
    assert missing.value.type == "not_found_error"
    assert missing.value.response.headers.get_list("content-type") == ["application/json"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.count_tokens(model="chat", messages=[])
    assert bad.value.type == "invalid_request_error"
    stranger = anthropic.Anthropic(base_url=gw.root, api_key="sk-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        stranger.messages.count_tokens(model="chat", messages=hi)
    with httpx.Client(base_url=gw.root, headers={"x-api-key": KEY}, timeout=10) as http:
        assert http.get("/v1/messages/count_tokens").status_code == 405
        bare = http.post("/messages/count_tokens", json={"model": "chat", "messages": hi})
        assert bare.status_code == 200 and bare.json() == {"input_tokens": prompt_tokens("hi")}


def test_count_tokens_writes_no_ledger_row(client: anthropic.Anthropic, gw: RunningGateway) -> None:
    hi: Any = [{"role": "user", "content": "count me"}]
    counted = client.messages.with_raw_response.count_tokens(model="chat", messages=hi)
    counted_id = counted.headers["request-id"]
    after = client.messages.with_raw_response.create(model="chat", max_tokens=2, messages=hi)
    ledger_row(gw, after.headers["request-id"])  # the writer has flushed past the count
    rows = wait_for_rows(
        ledger_url(gw), "SELECT id FROM requests WHERE id = :id", {"id": counted_id}, timeout=0
    )
    assert rows == []


# -- ledger and metrics -----------------------------------------------------------------


def ledger_row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    """The request's ledger row, once the writer has flushed it."""
    rows = wait_for_rows(
        ledger_url(gw), "SELECT * FROM requests WHERE id = :id", {"id": request_id}
    )
    if rows:
        return dict(rows[0]._mapping)
    raise AssertionError(f"request {request_id} never reached the ledger")


@pytest.mark.parametrize("stream", [False, True])
def test_ledger_records_a_chat_call(
    client: anthropic.Anthropic, gw: RunningGateway, stream: bool
) -> None:
    messages: Any = [{"role": "user", "content": "x" * 100}]
    if stream:
        with client.messages.stream(model="cachew", max_tokens=50, messages=messages) as s:
            s.get_final_message()
            request_id = s.response.headers["request-id"]
    else:
        raw = client.messages.with_raw_response.create(
            model="cachew", max_tokens=50, messages=messages
        )
        request_id = raw.headers["request-id"]
    row = ledger_row(gw, request_id)
    assert row["endpoint"] == "chat/completions"
    assert row["requested_model"] == "cachew"
    assert row["route"] == "cachew"
    assert bool(row["stream"]) is stream
    assert row["final_status"] == 200
    assert row["key_id"] == "anthropic-tests"
    assert (row["cached_read_tokens"], row["cache_write_tokens"]) == (8, 5)
    assert row["input_uncached_tokens"] == prompt_tokens("x" * 100) - 13
    assert row["output_tokens"] == 7
    assert row["cost_usd"] is not None and float(row["cost_usd"]) > 0


def test_metrics_count_the_requests(client: anthropic.Anthropic, gw: RunningGateway) -> None:
    client.messages.create(model="chat", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    metrics = httpx.get(f"{gw.root}/metrics", timeout=10).text
    served = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "farebox_requests"
        for sample in family.samples
        if sample.name == "farebox_requests_total"
        and sample.labels["route"] == "chat"
        and sample.labels["status"] == "200"
    ]
    assert sum(served) >= 1


def test_anthropic_upstream_through_litellm_round_trips(client: anthropic.Anthropic) -> None:
    """Anthropic in, OpenAI shape inside, Anthropic (via litellm) upstream, Anthropic out."""
    question: Any = [{"role": "user", "content": "Tell me about the weather in general. " * 4}]
    message = client.messages.create(model="via-claude", max_tokens=50, messages=question)
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 5
    assert message.usage.cache_read_input_tokens == 8
    assert message.usage.cache_creation_input_tokens == 5
    assert message.usage.input_tokens > 0  # excludes both cache classes, as Anthropic's does
    with client.messages.stream(model="via-claude", max_tokens=50, messages=question) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == message.content[0].text
    assert final.usage.output_tokens == 5 and final.usage.cache_read_input_tokens == 8
    assert final.usage.input_tokens == message.usage.input_tokens
    tools = client.messages.create(
        model="via-claude",
        max_tokens=50,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    )
    assert tools.stop_reason == "tool_use"
    block = tools.content[-1]
    assert block.type == "tool_use" and block.name == "get_weather"
    assert isinstance(block.input, dict) and isinstance(block.input["city"], str)
