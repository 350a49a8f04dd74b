"""One conformance matrix, run against every adapter through the simulator.

Each row is one provider protocol (OpenAI-protocol through Farebox's own client, the rest
through litellm); each test is one behaviour a client relies on, asserted on the OpenAI
SDK's parsed objects. A new provider gets the whole matrix by adding one `Row`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.conftest import sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.simulator import simulator_stats, start_simulator

DEAD = "http://127.0.0.1:9"


def _service_account(token_uri: str) -> str:
    """A Google service-account key (fresh RSA key) whose OAuth token endpoint is the
    simulator's, so litellm's real Vertex auth path (google-auth) runs offline."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "farebox-tests",
            "private_key_id": "sim",
            "private_key": pem,
            "client_email": "tests@farebox-tests.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        }
    )


@dataclass(frozen=True)
class Row:
    name: str
    # The provider's settings; "{base}" in any string is the simulator's root URL (or a
    # dead one for the unreachable case, though a token_uri always stays live).
    provider: dict[str, Any]
    model: str  # the upstream model; the simulator reads directives after `::`
    # Whether the wire reports reasoning tokens apart from output (Anthropic and Bedrock
    # bill thinking as plain output unless thinking was asked for).
    reports_reasoning: bool = True
    # Whether the wire has a cache-write count (Gemini's has none).
    reports_cache_write: bool = True
    # The status this provider uses for "overloaded".
    overloaded: int = 503
    # Directives go in an `x-mock-behavior` header instead of the model name (litellm
    # looks Bedrock capabilities up by the exact model id).
    directive_in_header: bool = False
    # The model for the thinking case, when this one cannot think (litellm drops
    # reasoning_effort for a model it knows has no reasoning).
    thinking_model: str | None = None

    def provider_yaml(self, base: str, live: str, directive: str | None = None) -> str:
        settings = json.loads(
            json.dumps(self.provider).replace("{base}", base).replace("{live}", live)
        )
        if directive is not None:
            settings["headers"] = {"x-mock-behavior": directive}
        return json.dumps(settings)

    def model_for(self, directive: str, case: str = "") -> str:
        model = (self.thinking_model or self.model) if case == "thinking" else self.model
        return model if self.directive_in_header else f"{model}::{directive}"


_VERTEX_KEY = _service_account("{live}/token")
ROWS = [
    Row(
        "openai",
        {"kind": "serverless", "protocol": "openai", "api_base": "{base}/v1", "api_key": "k"},
        "sim-conf",
    ),
    Row(
        "anthropic",
        {"kind": "closed_api", "protocol": "anthropic", "api_base": "{base}", "api_key": "k"},
        "claude-sim",
        reports_reasoning=False,
        overloaded=529,
        thinking_model="claude-sonnet-4-20250514",
    ),
    Row(
        "gemini",
        {"kind": "closed_api", "protocol": "gemini", "api_base": "{base}/v1beta", "api_key": "k"},
        "gemini-2.5-flash",
        reports_cache_write=False,
    ),
    Row(
        "vertex",
        {
            "kind": "closed_api",
            "protocol": "vertex_ai",
            "api_base": "{base}",
            "options": {
                "vertex_project": "farebox-tests",
                "vertex_location": "us-central1",
                "vertex_credentials": _VERTEX_KEY,
            },
        },
        "gemini-2.0-flash",
        reports_cache_write=False,
    ),
    Row(
        "bedrock",
        {
            "kind": "closed_api",
            "protocol": "bedrock",
            "api_base": "{base}",
            "options": {
                "aws_access_key_id": "AKIDTESTS",
                "aws_secret_access_key": "secret",
                "aws_region_name": "us-east-1",
            },
        },
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        reports_reasoning=False,
        directive_in_header=True,
        thinking_model="us.anthropic.claude-sonnet-4-20250514-v1:0",
    ),
    Row(
        "azure",
        {
            "kind": "closed_api",
            "protocol": "azure",
            "api_base": "{base}",
            "api_key": "k",
            "options": {"api_version": "2024-10-21"},
        },
        "gpt-4o-mini",
    ),
]

PRICE = "{input: 3, output: 15, cached_input: 0.3, cache_write: 3.75}"
CASES = {
    "plain": "tokens=6",
    "parallel": "tool_calls=2,tokens=6",
    "cached": "cached=40,cache_write=24,tokens=5,reasoning=3",
    "thinking": "reasoning=3,tokens=5",
    "limited": "status=429,retry_after=7",
    "bad": "status=400",
    "toolarge": "status=413",
    "broken": "status=500",
    "denied": "status=401",
    "ctx": "context_length",
    "cut": "cut_after=2,tokens=8",
    "midstream": "midstream_error=2,tokens=8",
    "hang": "hang",
}
LONG = "Please summarise the following notes carefully. " * 12
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
PERSON_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
    },
}


def matrix_yaml(rows: list[Row], sim: str) -> str:
    cases = {**CASES}
    lines = ["auth: none", "providers:"]
    deployments = ["deployments:"]
    for row in rows:
        lines.append(f"  {row.name}: {row.provider_yaml(sim, sim)}")
        lines.append(f"  {row.name}-dead: {row.provider_yaml(DEAD, sim)}")
        for case, directive in (*cases.items(), ("overloaded", f"status={row.overloaded}")):
            provider = row.name
            if row.directive_in_header:
                provider = f"{row.name}-{case}"
                lines.append(f"  {provider}: {row.provider_yaml(sim, sim, directive)}")
            price = "" if case == "overloaded" else f", price: {PRICE}"
            deployments.append(
                f"  {case}@{row.name}: {{provider: {provider}, "
                f'model: "{row.model_for(directive, case)}"{price}}}'
            )
        deployments.append(
            f'  down@{row.name}: {{provider: {row.name}-dead, model: "{row.model}"}}'
        )
        # Its own failing OpenAI-protocol deployment, so no other test's failures have
        # opened its circuit breaker.
        deployments.append(
            f'  fails-before-{row.name}@openai: {{provider: openai, model: "sim-conf::status=500"}}'
        )
    lines += deployments
    lines.append("routes:")
    for row in rows:
        for case in (*cases, "overloaded"):
            extra = ", timeouts: {ttft_ms: 400, total_ms: 800}" if case == "hang" else ""
            lines.append(f"  {row.name}-{case}: {{targets: [{case}@{row.name}]{extra}}}")
        lines.append(
            f"  {row.name}-down: {{targets: [down@{row.name}], "
            "timeouts: {connect_ms: 500, total_ms: 2000}}"
        )
        # An OpenAI-protocol deployment that fails, then this row's: the client must not
        # be able to tell which one answered.
        lines.append(
            f"  {row.name}-failover: {{strategy: failover, "
            f"targets: [fails-before-{row.name}@openai, plain@{row.name}], "
            "retry: {attempts: 1}}"
        )
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    url, stop = start_simulator(seed=3)
    try:
        yield url
    finally:
        stop()


@pytest.fixture(scope="module")
def gateway(sim: str) -> Iterator[RunningGateway]:
    config = config_from_yaml(matrix_yaml(ROWS, sim), {})
    with running_gateway(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=20)


@pytest.fixture(params=ROWS, ids=lambda r: r.name)
def row(request: pytest.FixtureRequest) -> Row:
    value: Row = request.param
    return value


def check_plain(response: Any, completion_tokens: int = 6) -> None:
    """What any client's code may rely on in a plain answer, whoever served it."""
    assert response.object == "chat.completion"
    assert response.id and isinstance(response.created, int)
    assert isinstance(response.model, str) and response.model
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert not choice.message.tool_calls
    usage = response.usage
    assert usage.completion_tokens == completion_tokens
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_plain_answer(client: openai.OpenAI, row: Row) -> None:
    check_plain(client.chat.completions.create(model=f"{row.name}-plain", messages=HELLO))


def test_system_prompt_and_multi_turn(client: openai.OpenAI, row: Row) -> None:
    alone = client.chat.completions.create(model=f"{row.name}-plain", messages=HELLO)
    with_system = client.chat.completions.create(
        model=f"{row.name}-plain",
        messages=[{"role": "system", "content": LONG}, *HELLO],
    )
    check_plain(with_system)
    # The system prompt reached the provider, in whatever form its wire wants.
    assert with_system.usage.prompt_tokens > alone.usage.prompt_tokens + 50
    turns = client.chat.completions.create(
        model=f"{row.name}-plain",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": LONG},
        ],
    )
    check_plain(turns)
    assert turns.usage.prompt_tokens > alone.usage.prompt_tokens + 50


def test_tool_call_then_tool_result(client: openai.OpenAI, row: Row) -> None:
    asked = [{"role": "user", "content": "Weather in Oslo for 3 days?"}]
    first = client.chat.completions.create(
        model=f"{row.name}-plain", messages=asked, tools=[WEATHER_TOOL], tool_choice="required"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    second = client.chat.completions.create(
        model=f"{row.name}-plain",
        messages=[
            *asked,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'},
        ],
        tools=[WEATHER_TOOL],
    )
    check_plain(second)


def test_json_schema_response_format(client: openai.OpenAI, row: Row) -> None:
    response = client.chat.completions.create(
        model=f"{row.name}-plain",
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format=PERSON_FORMAT,
    )
    assert response.choices[0].finish_reason == "stop"
    document = json.loads(response.choices[0].message.content or "")
    assert isinstance(document["name"], str) and isinstance(document["age"], int)


def test_stream_with_usage(client: openai.OpenAI, row: Row) -> None:
    whole = client.chat.completions.create(model=f"{row.name}-plain", messages=HELLO)
    chunks = list(
        client.chat.completions.create(
            model=f"{row.name}-plain",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [r for r in reasons if r] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI, row: Row) -> None:
    chunks = list(
        client.chat.completions.create(model=f"{row.name}-plain", messages=HELLO, stream=True)
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_streamed_tool_call(client: openai.OpenAI, row: Row) -> None:
    chunks = list(
        client.chat.completions.create(
            model=f"{row.name}-plain",
            messages=[{"role": "user", "content": "Weather in Lima for 2 days?"}],
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert (
        deltas and deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    )
    assert {d.index for d in deltas} == {0}
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    parsed = json.loads(arguments)
    assert isinstance(parsed["city"], str) and isinstance(parsed["days"], int)
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def check_cached_usage(usage: Any, row: Row) -> None:
    details = usage.prompt_tokens_details
    assert details.cached_tokens == 40
    write = 24 if row.reports_cache_write else 0
    assert (getattr(details, "cache_write_tokens", None) or 0) == write
    assert usage.prompt_tokens > 40 + write  # cache reads and writes are INSIDE prompt_tokens
    assert usage.completion_tokens == 8  # 5 visible + 3 reasoning, reasoning inside
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning == (3 if row.reports_reasoning else 0)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_cached_token_usage(client: openai.OpenAI, row: Row) -> None:
    messages = [{"role": "user", "content": LONG}]
    response = client.chat.completions.create(model=f"{row.name}-cached", messages=messages)
    check_cached_usage(response.usage, row)
    chunks = list(
        client.chat.completions.create(
            model=f"{row.name}-cached",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    check_cached_usage(chunks[-1].usage, row)
    assert chunks[-1].usage.prompt_tokens == response.usage.prompt_tokens


def test_reasoning_tokens_when_the_model_thinks(client: openai.OpenAI, row: Row) -> None:
    """Asked to think, every backend reports reasoning inside completion_tokens."""
    response = client.chat.completions.create(
        model=f"{row.name}-thinking", messages=HELLO, reasoning_effort="low", max_tokens=4000
    )
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == 8
    assert response.usage.completion_tokens_details.reasoning_tokens == 3
    chunks = list(
        client.chat.completions.create(
            model=f"{row.name}-thinking",
            messages=HELLO,
            reasoning_effort="low",
            max_tokens=4000,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 8
    assert usage.completion_tokens_details.reasoning_tokens == 3


def test_other_endpoints_need_an_openai_protocol_deployment(
    client: openai.OpenAI, row: Row
) -> None:
    if row.name == "openai":
        assert client.embeddings.create(model=f"{row.name}-plain", input="hi").data
        assert client.completions.create(model=f"{row.name}-plain", prompt="hi").choices
        return
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=f"{row.name}-plain", input="hi")
    assert info.value.code == "unsupported_endpoint"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=f"{row.name}-plain", prompt="hi")
    assert info.value.code == "unsupported_endpoint"


# -- every error class ---------------------------------------------------------------------


def test_upstream_bad_request_is_400(client: openai.OpenAI, row: Row) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=f"{row.name}-bad", messages=HELLO)
    assert info.value.status_code == 400


def test_request_too_large_is_413(client: openai.OpenAI, row: Row) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=f"{row.name}-toolarge", messages=HELLO)
    assert info.value.status_code == 413


def test_rate_limit_is_429_with_retry_after(client: openai.OpenAI, row: Row) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=f"{row.name}-limited", messages=HELLO)
    assert info.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("case", ["broken", "overloaded", "down"])
def test_upstream_failure_is_502(client: openai.OpenAI, row: Row, case: str) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=f"{row.name}-{case}", messages=HELLO)
    assert info.value.status_code == 502
    if case == "down":
        assert info.value.code == "upstream_unreachable"


def test_provider_auth_failure_is_not_the_clients(client: openai.OpenAI, row: Row) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=f"{row.name}-denied", messages=HELLO)
    assert info.value.code == "upstream_misconfigured"


def test_context_length_exceeded(client: openai.OpenAI, row: Row) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=f"{row.name}-ctx", messages=HELLO)
    assert info.value.code == "context_length_exceeded"


def test_hang_is_504(client: openai.OpenAI, row: Row) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=f"{row.name}-hang", messages=HELLO)
    assert info.value.status_code == 504
    with pytest.raises(openai.InternalServerError) as info:
        list(client.chat.completions.create(model=f"{row.name}-hang", messages=HELLO, stream=True))
    assert info.value.status_code == 504


@pytest.mark.parametrize("case", ["cut", "midstream"])
def test_broken_stream_raises_after_partial_content(
    client: openai.OpenAI, row: Row, case: str
) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model=f"{row.name}-{case}", messages=HELLO, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received  # the failure came after content, as an error the SDK raises


def test_failover_from_openai_protocol_is_invisible(
    client: openai.OpenAI, gateway: RunningGateway, row: Row
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=f"{row.name}-failover", messages=HELLO
    )
    assert raw.headers["x-farebox-deployment"] == f"plain@{row.name}"
    assert f"fails-before-{row.name}@openai" in raw.headers["x-farebox-fallback-reason"]
    check_plain(raw.parse())
    chunks = list(
        client.chat.completions.create(
            model=f"{row.name}-failover",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


# -- the ledger -----------------------------------------------------------------------------

CACHED_CALLS = 2  # one JSON, one stream, per row


@pytest.fixture(scope="module")
def ledger_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[Any]]:
    """Cached-usage calls for every row through a gateway with a real (SQLite) ledger;
    returns what the simulator served and the attempt rows the gateway wrote."""
    url, stop = start_simulator(seed=5)  # its own, so its token counts are only these calls
    try:
        settings = sqlite_settings(tmp_path_factory.mktemp("conformance-ledger"))
        config = config_from_yaml(matrix_yaml(ROWS, url), {})
        with running_gateway(config, settings) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
            for row in ROWS:
                messages: Any = [{"role": "user", "content": LONG}]
                client.chat.completions.create(model=f"{row.name}-cached", messages=messages)
                list(
                    client.chat.completions.create(
                        model=f"{row.name}-cached", messages=messages, stream=True
                    )
                )
            served = simulator_stats(url)  # before the thinking calls, which share models
            for row in ROWS:
                client.chat.completions.create(
                    model=f"{row.name}-thinking",
                    messages=[{"role": "user", "content": LONG}],
                    reasoning_effort="low",
                    max_tokens=4000,
                )
            served["after_thinking"] = simulator_stats(url)["tokens"]
    finally:
        stop()
    # Leaving the block shut the gateway down, which flushed its ledger.
    rows = sql_rows(
        settings.database_url,
        "SELECT deployment, input_uncached_tokens, cached_read_tokens, cache_write_tokens, "
        "output_tokens, reasoning_tokens, cost_usd, error_class, token_source FROM attempts",
    )
    return served, rows


def test_ledger_tokens_and_cost_match_hand_computed(
    ledger_rows: tuple[dict[str, Any], list[Any]], row: Row
) -> None:
    served, rows = ledger_rows
    mine = [r for r in rows if r.deployment == f"cached@{row.name}"]
    assert len(mine) == CACHED_CALLS
    tokens = served["tokens"][row.model]
    write = 24 if row.reports_cache_write else 0
    assert tokens["cached"] == 40 * CACHED_CALLS and tokens["cache_write"] == write * CACHED_CALLS
    prompt = tokens["prompt"] // CACHED_CALLS  # the same prompt each time
    uncached = prompt - 40 - write
    assert uncached > 0
    reasoning = 3 if row.reports_reasoning else 0
    # Hand-computed at the deployment's price: $3/M input, $0.30/M cache read,
    # $3.75/M cache write (each priced once, at its own rate), $15/M output.
    expected = (
        Decimal(uncached) * 3 + 40 * Decimal("0.3") + write * Decimal("3.75") + 8 * 15
    ) / 1_000_000
    for attempt in mine:
        assert attempt.error_class is None and attempt.token_source == "provider"
        assert (
            attempt.input_uncached_tokens,
            attempt.cached_read_tokens,
            attempt.cache_write_tokens,
            attempt.output_tokens,
            attempt.reasoning_tokens,
        ) == (uncached, 40, write, 8, reasoning)
        assert Decimal(str(attempt.cost_usd)) == expected
