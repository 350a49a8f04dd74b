"""litellm against the simulator's Gemini, Vertex AI, Bedrock, Azure and Anthropic wires.

Every test drives ``litellm.acompletion`` over real HTTP and asserts on litellm's own parsed
``ModelResponse`` (finish reasons, usage details, tool calls, exception classes), so these
double as a record of how litellm 1.106.2 maps each provider's wire format.

litellm quirks the calls work around: any call with ``tools=`` imports the optional ``mcp``
package unless ``_skip_mcp_handler=True`` is passed; Bedrock model ids with a ``::``
directive suffix only stay on the Converse route with the explicit ``bedrock/converse/``
prefix; Vertex AI needs ``google-auth`` (skipped when it is not installed).
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported

import asyncio
import json
from collections.abc import Coroutine, Iterator
from typing import Any

import aiohttp
import pytest
from botocore.eventstream import EventStreamBuffer

from simulator.eventstream import event, exception
from tests.simulator import start_simulator


class _Litellm:
    """litellm, imported on first use: the import takes ~3 s, which every test worker would
    otherwise pay while collecting this module, whether or not it runs these tests."""

    def __getattr__(self, name: str) -> Any:
        import litellm

        return getattr(litellm, name)


litellm: Any = _Litellm()

KEY = "sim-provider-key"
USER = [{"role": "user", "content": "Say hello"}]  # ceil(9 / 4) + 3 = 6 prompt tokens
USER_TOKENS = 6
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 3}},
            "required": ["n"],
        },
    },
}
NO_RETRIES: dict[str, Any] = {"num_retries": 0, "max_retries": 0, "timeout": 10}
STREAM_USAGE: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
GEMINI = "gemini/gemini-2.5-flash"
BEDROCK = "bedrock/converse/anthropic.claude-3-5-sonnet-20240620-v1:0"
BEDROCK_THINKING = "bedrock/converse/us.anthropic.claude-sonnet-4-20250514-v1:0"
CLAUDE = "anthropic/claude-sonnet-4-20250514"


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    url, stop = start_simulator(require_key=KEY)
    yield url
    stop()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop for the module: litellm caches HTTP clients and a logging worker per loop.
    running = asyncio.new_event_loop()
    yield running
    running.close()


@pytest.fixture(autouse=True)
def _reset(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    status, _, _ = loop.run_until_complete(http("POST", f"{base_url}/_reset"))
    assert status == 200


def gemini(base_url: str) -> dict[str, Any]:
    return {"api_base": f"{base_url}/v1beta", "api_key": KEY}


def bedrock(base_url: str, access_key: str = KEY) -> dict[str, Any]:
    return {
        "api_base": base_url,
        "aws_access_key_id": access_key,
        "aws_secret_access_key": "sim-secret",
        "aws_region_name": "us-east-1",
    }


def azure(base_url: str, api_key: str = KEY) -> dict[str, Any]:
    return {"api_base": base_url, "api_key": api_key, "api_version": "2024-10-21"}


def anthropic(base_url: str) -> dict[str, Any]:
    return {"api_base": base_url, "api_key": KEY}


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    return loop.run_until_complete(coro)


def complete(loop: asyncio.AbstractEventLoop, **kwargs: Any) -> Any:
    """One ``litellm.acompletion``; a stream is drained and rebuilt into one response."""
    if kwargs.get("tools"):
        kwargs["_skip_mcp_handler"] = True  # else litellm imports the optional `mcp` package
    messages = kwargs.pop("messages", USER)

    async def go() -> Any:
        response = await litellm.acompletion(messages=messages, **NO_RETRIES, **kwargs)
        if not kwargs.get("stream"):
            return response
        chunks = [chunk async for chunk in response]
        return litellm.stream_chunk_builder(chunks, messages=messages)

    return run(loop, go())


async def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def stats(loop: asyncio.AbstractEventLoop, base_url: str) -> dict[str, Any]:
    _, _, raw = run(loop, http("GET", f"{base_url}/_stats"))
    result: dict[str, Any] = json.loads(raw)
    return result


def tool_call(response: Any) -> tuple[str, dict[str, Any]]:
    calls = response.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    return calls[0].function.name, json.loads(calls[0].function.arguments)


# --- Gemini (Google AI Studio) --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_text_with_cached_and_reasoning(
    base_url: str, loop: asyncio.AbstractEventLoop, stream: bool
) -> None:
    extra = STREAM_USAGE if stream else {}
    resp = complete(
        loop, model=f"{GEMINI}::tokens=5,cached=4,reasoning=3", **gemini(base_url), **extra
    )
    assert resp.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert resp.choices[0].finish_reason == "stop"
    usage = resp.usage
    # promptTokenCount includes cachedContentTokenCount; thoughts are added to completion.
    assert usage.prompt_tokens == USER_TOKENS
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens == 5 + 3
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert usage.total_tokens == USER_TOKENS + 8
    tokens = stats(loop, base_url)["tokens"]["gemini-2.5-flash"]
    assert tokens == {
        "prompt": USER_TOKENS,
        "cached": 4,
        "cache_write": 0,
        "completion": 8,
        "reasoning": 3,
    }


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_tool_call(base_url: str, loop: asyncio.AbstractEventLoop, stream: bool) -> None:
    extra = STREAM_USAGE if stream else {}
    resp = complete(loop, model=GEMINI, tools=TOOLS, **gemini(base_url), **extra)
    assert tool_call(resp) == ("get_weather", {"city": "tok"})
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.usage.completion_tokens == 4  # '{"city":"tok"}' in 4-char fragments


def test_gemini_header_directive_thinking_and_json_schema(
    base_url: str, loop: asyncio.AbstractEventLoop
) -> None:
    resp = complete(
        loop,
        model=GEMINI,
        reasoning_effort="low",  # litellm asks for includeThoughts
        response_format=SCHEMA,
        extra_headers={"x-mock-behavior": "reasoning=7"},
        **gemini(base_url),
    )
    assert json.loads(resp.choices[0].message.content) == {"n": 3}
    assert resp.choices[0].message.reasoning_content == "Simulated reasoning (7 tokens)."
    assert resp.usage.completion_tokens_details.reasoning_tokens == 7


def test_gemini_finish_reasons(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    resp = complete(loop, model=GEMINI, max_tokens=3, **gemini(base_url))
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == "tok0 tok1 tok2"
    filtered = complete(loop, model=f"{GEMINI}::content_filter", **gemini(base_url))
    assert filtered.choices[0].finish_reason == "content_filter"
    assert filtered.choices[0].message.content is None


def test_gemini_errors(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(litellm.RateLimitError) as limited:
        complete(loop, model=f"{GEMINI}::status=429", **gemini(base_url))
    assert limited.value.status_code == 429
    assert "RESOURCE_EXHAUSTED" in str(limited.value)
    with pytest.raises(litellm.ContextWindowExceededError):
        complete(loop, model=f"{GEMINI}::context_length", **gemini(base_url))
    with pytest.raises(litellm.AuthenticationError):
        complete(loop, model=GEMINI, api_base=f"{base_url}/v1beta", api_key="wrong")
    with pytest.raises(litellm.exceptions.MidStreamFallbackError):
        complete(loop, model=f"{GEMINI}::midstream_error=2", **gemini(base_url), **STREAM_USAGE)
    assert stats(loop, base_url)["requests"]["gemini-2.5-flash"]["by_status"] == {
        "429": 1,
        "400": 2,
        "200": 1,
    }


def test_gemini_wire_format(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    """Raw SSE, a percent-encoded model name, snake_case fields and Google error bodies."""
    url = f"{base_url}/v1beta/models/gemini-x%3A%3Atokens%3D2,cached%3D1:streamGenerateContent"
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "generation_config": {"candidate_count": 2},
    }
    status, headers, raw = run(loop, http("POST", url + "?alt=sse", body, {"x-goog-api-key": KEY}))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in raw.decode().split("\r\n") if line]
    assert events[0]["candidates"][1]["content"]["parts"] == [{"text": "tok0"}]
    final = events[-1]
    assert [c["finishReason"] for c in final["candidates"]] == ["STOP", "STOP"]
    assert final["usageMetadata"]["candidatesTokenCount"] == 4
    assert final["usageMetadata"]["cachedContentTokenCount"] == 1
    assert final["modelVersion"] == "gemini-x"
    url = f"{base_url}/v1beta/models/gemini-x::status=503:generateContent"
    status, _, raw = run(loop, http("POST", url, body, {"x-goog-api-key": KEY}))
    assert status == 503
    assert json.loads(raw)["error"]["status"] == "UNAVAILABLE"


# --- Vertex AI --------------------------------------------------------------------------


def test_vertex_path_with_issued_token(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "x.y.z"}

    async def go() -> tuple[int, bytes, int]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base_url}/token", data=form) as resp:
                token = (await resp.json())["access_token"]
            url = (
                f"{base_url}/v1/projects/p/locations/us-central1/publishers/google/models/"
                "gemini-2.5-flash::tokens=2:generateContent"
            )
            body = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
            async with session.post(url, json=body, headers={"Authorization": "Bearer no"}) as r:
                denied = r.status
            auth = {"Authorization": f"Bearer {token}"}
            async with session.post(url, json=body, headers=auth) as resp:
                return resp.status, await resp.read(), denied

    status, raw, denied = run(loop, go())
    assert denied == 401
    assert status == 200
    payload = json.loads(raw)
    assert payload["candidates"][0]["content"]["parts"] == [{"text": "tok0 tok1"}]
    assert payload["usageMetadata"]["trafficType"] == "ON_DEMAND"
    assert stats(loop, base_url)["endpoints"]["vertex"] == 2


@pytest.mark.parametrize("stream", [False, True])
def test_vertex_ai_through_google_auth(
    base_url: str, loop: asyncio.AbstractEventLoop, stream: bool
) -> None:
    pytest.importorskip("google.oauth2.service_account")
    crypto = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import serialization

    pem = (
        crypto.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    credentials = {
        "type": "service_account",
        "project_id": "sim-project",
        "private_key_id": "sim",
        "private_key": pem,
        "client_email": "sim@sim-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"{base_url}/token",  # google-auth fetches its access token here
    }
    extra = STREAM_USAGE if stream else {}
    resp = complete(
        loop,
        model="vertex_ai/gemini-2.5-flash::tokens=3,cached=2",
        vertex_credentials=json.dumps(credentials),
        vertex_project="sim-project",
        vertex_location="us-central1",
        api_base=base_url,
        **extra,
    )
    assert resp.choices[0].message.content == "tok0 tok1 tok2"
    assert resp.usage.prompt_tokens_details.cached_tokens == 2
    assert stats(loop, base_url)["endpoints"]["vertex"] == 1


# --- Bedrock Converse -------------------------------------------------------------------


def test_eventstream_frames_decode_with_botocore() -> None:
    buffer = EventStreamBuffer()
    data = event("messageStart", {"role": "assistant"}) + exception("throttlingException", "x")
    buffer.add_data(data[:5])
    assert list(buffer) == []
    buffer.add_data(data[5:])
    first, second = (m.to_response_dict() for m in buffer)
    assert first["headers"][":event-type"] == "messageStart"
    assert json.loads(first["body"]) == {"role": "assistant"}
    assert second["headers"][":exception-type"] == "throttlingException"


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_text_with_cache_read_and_write(
    base_url: str, loop: asyncio.AbstractEventLoop, stream: bool
) -> None:
    extra = STREAM_USAGE if stream else {}
    resp = complete(
        loop, model=f"{BEDROCK}::tokens=5,cached=3,cache_write=2", **bedrock(base_url), **extra
    )
    assert resp.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert resp.choices[0].finish_reason == "stop"
    usage = resp.usage
    # inputTokens excludes both cache counts; litellm adds them back into prompt_tokens.
    assert usage.prompt_tokens == USER_TOKENS
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.prompt_tokens_details.cache_creation_tokens == 2
    assert usage.cache_creation_input_tokens == 2 and usage.cache_read_input_tokens == 3
    assert usage.completion_tokens == 5
    assert stats(loop, base_url)["tokens"]["anthropic.claude-3-5-sonnet-20240620-v1:0"] == {
        "prompt": USER_TOKENS,
        "cached": 3,
        "cache_write": 2,
        "completion": 5,
        "reasoning": 0,
    }


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_tool_call(base_url: str, loop: asyncio.AbstractEventLoop, stream: bool) -> None:
    extra = STREAM_USAGE if stream else {}
    resp = complete(
        loop, model=BEDROCK, tools=TOOLS, tool_choice="required", **bedrock(base_url), **extra
    )
    assert tool_call(resp) == ("get_weather", {"city": "tok"})
    assert resp.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_thinking(base_url: str, loop: asyncio.AbstractEventLoop, stream: bool) -> None:
    extra = STREAM_USAGE if stream else {}
    resp = complete(
        loop,
        model=BEDROCK_THINKING,
        reasoning_effort="low",
        max_tokens=2000,
        extra_headers={"x-mock-behavior": "reasoning=7,tokens=3"},
        **bedrock(base_url),
        **extra,
    )
    assert resp.choices[0].message.content == "tok0 tok1 tok2"
    assert resp.choices[0].message.reasoning_content == "Simulated reasoning (7 tokens)."
    assert resp.usage.completion_tokens == 10
    assert resp.usage.completion_tokens_details.reasoning_tokens == 7


def test_bedrock_finish_reasons_and_json_mode(
    base_url: str, loop: asyncio.AbstractEventLoop
) -> None:
    resp = complete(loop, model=BEDROCK, max_tokens=2, **bedrock(base_url))
    assert resp.choices[0].finish_reason == "length"
    filtered = complete(loop, model=f"{BEDROCK}::content_filter", **bedrock(base_url))
    assert filtered.choices[0].finish_reason == "content_filter"
    # litellm turns response_format into a forced `json_tool_call` tool and back into text.
    structured = complete(loop, model=BEDROCK, response_format=SCHEMA, **bedrock(base_url))
    assert json.loads(structured.choices[0].message.content) == {"n": 3}


def test_bedrock_errors(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(litellm.RateLimitError) as limited:
        complete(
            loop,
            model=BEDROCK,
            extra_headers={"x-mock-behavior": "status=429"},
            **bedrock(base_url),
        )
    assert limited.value.status_code == 429
    with pytest.raises(litellm.ServiceUnavailableError):
        complete(loop, model=f"{BEDROCK}::status=503", **bedrock(base_url))
    with pytest.raises(litellm.ContextWindowExceededError):
        complete(loop, model=f"{BEDROCK}::context_length", **bedrock(base_url))
    with pytest.raises(litellm.AuthenticationError):
        complete(loop, model=BEDROCK, **bedrock(base_url, access_key="AKIDWRONG"))
    with pytest.raises(litellm.exceptions.MidStreamFallbackError) as broken:
        complete(loop, model=f"{BEDROCK}::midstream_error=2", **bedrock(base_url), **STREAM_USAGE)
    assert "serviceUnavailableException" in str(broken.value)


def test_bedrock_wire_format(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    body = {"messages": [{"role": "user", "content": [{"text": "Say hello"}]}]}
    auth = {"Authorization": f"AWS4-HMAC-SHA256 Credential={KEY}/20260101/us-east-1/bedrock/x"}
    url = f"{base_url}/model/amazon.nova-lite-v1%3A0%3A%3Atokens%3D2/converse-stream"
    status, headers, raw = run(loop, http("POST", url, body, auth))
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.amazon.eventstream"
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    kinds = [m.headers[":event-type"] for m in buffer]
    assert kinds == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    url = f"{base_url}/model/amazon.nova-lite-v1%3A0%3A%3Astatus%3D429/converse"
    status, headers, raw = run(loop, http("POST", url, body, auth))
    assert status == 429
    assert headers["x-amzn-ErrorType"].startswith("ThrottlingException")
    assert json.loads(raw) == {"message": "Too many requests, please wait before trying again."}
    auth["Authorization"] = auth["Authorization"].replace(KEY, "AKIDWRONG")
    status, headers, _ = run(loop, http("POST", url, body, auth))
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("UnrecognizedClientException")
    assert stats(loop, base_url)["requests"]["amazon.nova-lite-v1:0"]["total"] == 3


# --- Azure OpenAI -----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_azure_deployment_directives(
    base_url: str, loop: asyncio.AbstractEventLoop, stream: bool
) -> None:
    extra = STREAM_USAGE if stream else {}
    resp = complete(
        loop, model="azure/my-deployment::tokens=3,cached=2", **azure(base_url), **extra
    )
    assert resp.choices[0].message.content == "tok0 tok1 tok2"
    assert resp.usage.prompt_tokens_details.cached_tokens == 2
    assert resp.usage.completion_tokens == 3
    assert stats(loop, base_url)["endpoints"]["azure_chat"] == 1


def test_azure_v1_api(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    """api_version="v1" makes litellm call /openai/v1/chat/completions, model in the body."""
    kwargs = {**azure(base_url), "api_version": "v1"}
    resp = complete(loop, model="azure/my-deployment::tokens=2", **kwargs, **STREAM_USAGE)
    assert resp.choices[0].message.content == "tok0 tok1"
    assert resp.usage.completion_tokens == 2
    assert stats(loop, base_url)["requests"]["my-deployment"]["stream"] == 1


def test_azure_tool_call_and_errors(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    resp = complete(loop, model="azure/dep", tools=TOOLS, **azure(base_url), **STREAM_USAGE)
    assert tool_call(resp) == ("get_weather", {"city": "tok"})
    assert resp.choices[0].finish_reason == "tool_calls"
    with pytest.raises(litellm.RateLimitError):
        complete(loop, model="azure/dep::status=429", **azure(base_url))
    with pytest.raises(litellm.AuthenticationError):
        complete(loop, model="azure/dep", **azure(base_url, api_key="wrong"))


# --- Anthropic --------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_cache_usage(
    base_url: str, loop: asyncio.AbstractEventLoop, stream: bool
) -> None:
    extra = STREAM_USAGE if stream else {}
    resp = complete(
        loop, model=f"{CLAUDE}::tokens=2,cached=3,cache_write=2", **anthropic(base_url), **extra
    )
    usage = resp.usage
    assert usage.prompt_tokens == USER_TOKENS  # input + cache read + cache creation
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.prompt_tokens_details.cache_creation_tokens == 2
    assert usage.cache_creation_input_tokens == 2


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_use_and_thinking(
    base_url: str, loop: asyncio.AbstractEventLoop, stream: bool
) -> None:
    extra = STREAM_USAGE if stream else {}
    resp = complete(loop, model=CLAUDE, tools=TOOLS, **anthropic(base_url), **extra)
    assert tool_call(resp) == ("get_weather", {"city": "tok"})
    assert resp.choices[0].finish_reason == "tool_calls"
    thought = complete(
        loop,
        model=f"{CLAUDE}::reasoning=7,tokens=3",
        reasoning_effort="low",
        **anthropic(base_url),
        **extra,
    )
    assert thought.choices[0].message.reasoning_content == "Simulated reasoning (7 tokens)."
    assert thought.usage.completion_tokens == 10
    assert thought.usage.completion_tokens_details.reasoning_tokens == 7


def test_anthropic_errors(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    # litellm reports overloaded_error (529) as a 500 and request_too_large (413) as a 400.
    with pytest.raises(litellm.InternalServerError) as overloaded:
        complete(loop, model=f"{CLAUDE}::status=529", **anthropic(base_url))
    assert "overloaded_error" in str(overloaded.value)
    with pytest.raises(litellm.BadRequestError) as too_large:
        complete(loop, model=f"{CLAUDE}::status=413", **anthropic(base_url))
    assert "request_too_large" in str(too_large.value)


def test_stats_count_each_wire(base_url: str, loop: asyncio.AbstractEventLoop) -> None:
    complete(loop, model=f"{GEMINI}::tokens=1", **gemini(base_url))
    complete(loop, model=f"{BEDROCK}::tokens=1", **bedrock(base_url), **STREAM_USAGE)
    complete(loop, model="azure/dep::tokens=1", **azure(base_url))
    complete(loop, model=f"{CLAUDE}::tokens=1", **anthropic(base_url))
    snapshot = stats(loop, base_url)
    assert {k: v for k, v in snapshot["endpoints"].items() if v} == {
        "gemini": 1,
        "converse": 1,
        "azure_chat": 1,
        "messages": 1,
    }
    assert snapshot["requests"]["anthropic.claude-3-5-sonnet-20240620-v1:0"] == {
        "total": 1,
        "by_status": {"200": 1},
        "stream": 1,
    }


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("wire", ["gemini", "bedrock", "azure", "anthropic"])
def test_content_filter_maps_to_content_filter(
    base_url: str, loop: asyncio.AbstractEventLoop, wire: str, stream: bool
) -> None:
    """SAFETY / content_filtered / content_filter / refusal all reach litellm alike."""
    calls = {
        "gemini": (GEMINI, gemini(base_url)),
        "bedrock": (BEDROCK, bedrock(base_url)),
        "azure": ("azure/dep", azure(base_url)),
        "anthropic": (CLAUDE, anthropic(base_url)),
    }
    model, kwargs = calls[wire]
    extra = STREAM_USAGE if stream else {}
    resp = complete(loop, model=f"{model}::content_filter", **kwargs, **extra)
    assert resp.choices[0].finish_reason == "content_filter"
    assert not resp.choices[0].message.content
