"""Each failure reaches the SDK as the exception class it maps from the status."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.conftest import CLIENT_KEY
from tests.gateway_harness import RunningGateway

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=10)


def test_wrong_and_missing_key_are_authentication_errors(gateway: RunningGateway) -> None:
    bad = openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="chat", messages=HELLO)
    assert info.value.code == "invalid_api_key"
    assert "sk-wrong" not in info.value.message
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_model_lists_valid_names(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nonexistent", messages=HELLO)
    assert info.value.code == "model_not_found"
    assert "chat" in info.value.message and "small@sim" in info.value.message


def test_upstream_429_passes_through_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="limited", messages=HELLO)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["retry-after-ms"] == "7000"


@pytest.mark.parametrize("route", ["broken", "overloaded", "malformed", "badkey", "down"])
def test_upstream_failures_are_502(client: openai.OpenAI, route: str) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=route, messages=HELLO)
    assert info.value.status_code == 502
    # The provider's own key must never reach the client.
    assert "wrong-key" not in info.value.message and "sim-secret" not in info.value.message


def test_misconfigured_provider_key_is_not_the_clients_auth_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="badkey", messages=HELLO)
    assert info.value.code == "upstream_misconfigured"


def test_upstream_hang_times_out_as_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="hang", messages=HELLO)
    assert info.value.status_code == 504
    with pytest.raises(openai.InternalServerError) as info:
        list(client.chat.completions.create(model="hang", messages=HELLO, stream=True))
    assert info.value.status_code == 504


def test_context_length_error_is_a_bad_request_with_code(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="short-ctx", messages=HELLO)
    assert info.value.code == "context_length_exceeded"


def test_stream_cut_midway_raises_instead_of_ending_cleanly(client: openai.OpenAI) -> None:
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="cut", messages=HELLO, stream=True):
            received.append(chunk)
    assert received, "the first chunks should have arrived before the cut"
    assert "cut" in str(info.value.message) or "stream" in str(info.value.message)


def test_midstream_error_event_raises(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="midstream", messages=HELLO, stream=True))


def test_oversized_body_is_413(client: openai.OpenAI) -> None:
    huge = [{"role": "user", "content": "x" * 70_000}]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="chat", messages=huge)
    assert info.value.status_code == 413
    assert info.value.code == "request_too_large"


def test_wrong_types_are_bad_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=HELLO, max_tokens="ten")  # type: ignore[arg-type]
    assert info.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages="hello")  # type: ignore[arg-type]
    assert info.value.param == "messages"


def test_async_client_error_classes(gateway: RunningGateway) -> None:
    async def scenario() -> None:
        aclient = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            await aclient.chat.completions.create(model="missing", messages=HELLO)
        with pytest.raises(openai.RateLimitError):
            await aclient.chat.completions.create(model="limited", messages=HELLO)
        with pytest.raises(openai.APIError):
            stream = await aclient.chat.completions.create(model="cut", messages=HELLO, stream=True)
            async for _ in stream:
                pass
        await aclient.close()

    asyncio.run(scenario())


def test_sdk_retries_reach_the_same_answer(gateway: RunningGateway) -> None:
    retrying = openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=1)
    with pytest.raises(openai.InternalServerError):
        retrying.chat.completions.create(model="broken", messages=HELLO)
